"""The alias rules of test_attack_policy over the reference cloud's API, with its own SDK
(huaweicloudsdkkms) against a real `kms serve`: a limited access key cannot give a key
an alias outside its policy, by update-key-alias or by create-key."""

from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")  # the SDK's signer

pytest.importorskip("huaweicloudsdkkms")

from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException  # noqa: E402
from huaweicloudsdkkms.v2 import (  # noqa: E402
    CreateKeyRequest, CreateKeyRequestBody, UpdateKeyAliasRequest, UpdateKeyAliasRequestBody,
)

from tests.serve.vendorsdk import vendor_client  # noqa: E402

POLICY = """
[[allow]]
operations = ["create_key", "update_key_alias", "describe_key"]
keys = ["mine/*"]
"""


def seq() -> str:
    return str(uuid.uuid4())


def test_an_alias_outside_the_policy_is_refused_over_the_vendor_api(server):
    admin = vendor_client(server, server.access_key(name="admin"))
    limited = vendor_client(server, server.access_key(POLICY, name="limited"))
    mine = admin.create_key(CreateKeyRequest(body=CreateKeyRequestBody(key_alias="mine/a", sequence=seq()))).key_info.key_id

    def refused(call) -> int:
        with pytest.raises(ClientRequestException) as e:
            call()
        return e.value.status_code

    assert refused(lambda: limited.update_key_alias(UpdateKeyAliasRequest(body=UpdateKeyAliasRequestBody(
        key_id=mine, key_alias="payments/planted", sequence=seq())))) == 403
    assert refused(lambda: limited.create_key(CreateKeyRequest(body=CreateKeyRequestBody(
        key_alias="payments/new", sequence=seq())))) == 403
    renamed = limited.update_key_alias(UpdateKeyAliasRequest(body=UpdateKeyAliasRequestBody(
        key_id=mine, key_alias="mine/b", sequence=seq())))
    assert renamed.key_info.key_alias == "mine/b"
    made = limited.create_key(CreateKeyRequest(body=CreateKeyRequestBody(key_alias="mine/c", sequence=seq())))
    assert made.key_info.key_id
