"""Attacks on the policy, as a client whose access key is allowed some keys only.

- An alias change is checked against the alias given, not only the key renamed: a caller
  allowed to rename its own key must not move it under another team's alias prefix
  (where their access key's policy would then let their application encrypt under a key
  the caller can decrypt with). Over every API that renames: AWS CreateAlias, the facade
  API's update_key_alias (kmscore.remote), the vendor's update-key-alias.
- Time of check = time of use: the policy is checked against the key a name resolves
  to, and the facade is then called with that key's id, so an alias moved by another
  client in between cannot make the call use another key. In-process, with the real
  dispatcher, AWS table and Kms: the other client's UpdateAlias is made to happen at the
  worst moment (right after the policy's lookup), which no real race can promise.
"""

from __future__ import annotations

import base64
import json
import uuid

import botocore.exceptions
import pytest

from kmscore import Kms, blob
from kmscore import errors as kms_errors
from kmsserve.apis.aws import API
from kmsserve.app import ServerContext
from kmsserve.auth import sigv4
from kmsserve.auth.accesskeys import AccessKeys
from kmsserve.auth.policy import Policy
from kmsserve.wire import WireRequest, dispatch
from tests.serve.conftest import remote_kms


def own_key_policy(key_id: str) -> str:
    return f"""
[[allow]]
operations = ["update_key_alias", "encrypt_data", "decrypt_data", "describe_key"]
keys = ["{key_id}", "mine/*"]
"""


def code_of(call, **kwargs) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(**kwargs)
    return e.value.response["Error"]["Code"]


def test_an_alias_outside_the_policy_cannot_be_given_to_an_allowed_key(server):
    admin = server.boto3(server.access_key(name="admin"))
    mine = admin.create_key(Description="mine")["KeyMetadata"]["KeyId"]
    limited_key = server.access_key(own_key_policy(mine), name="limited")
    limited = server.boto3(limited_key)

    assert code_of(limited.create_alias, AliasName="alias/payments/db", TargetKeyId=mine) == "AccessDeniedException"
    with remote_kms(server, limited_key) as remote:
        with pytest.raises(kms_errors.AccessDenied):
            remote.update_key_alias(mine, "payments/db")
    assert "AliasName" not in admin.describe_key(KeyId=mine)["KeyMetadata"]  # nothing changed
    assert admin.list_aliases(KeyId=mine)["Aliases"] == []

    limited.create_alias(AliasName="alias/mine/db", TargetKeyId=mine)  # inside the policy: allowed
    assert admin.list_aliases(KeyId=mine)["Aliases"][0]["AliasName"] == "alias/mine/db"
    with remote_kms(server, limited_key) as remote:
        assert remote.update_key_alias(mine, "mine/other").alias == "mine/other"
        with pytest.raises(kms_errors.AccessDenied):
            remote.update_key_alias(mine, "payments/db")


class MovesTheAliasAfterTheCheck(ServerContext):
    """The other client's UpdateAlias, at the worst moment: right after the dispatcher
    resolved the name for the policy, before the facade call."""

    move: tuple[str, str] | None = None

    def resolve(self, key: str):
        out = super().resolve(key)
        if self.move is not None and key == self.move[0]:
            alias, to = self.move
            self.move = None
            self.kms.update_key_alias(alias, None)
            self.kms.update_key_alias(to, alias)
        return out


def test_a_name_is_used_as_the_key_the_policy_was_checked_for(tmp_path):
    with Kms(tmp_path / "home") as kms:
        allowed = kms.create_key().key_id
        other = kms.create_key().key_id
        kms.update_key_alias(allowed, "shared/x")
        keys = AccessKeys(kms)
        key = keys.create("limited", Policy.parse(f'[[allow]]\noperations = ["encrypt_data"]\nkeys = ["{allowed}"]\n'))
        ctx = MovesTheAliasAfterTheCheck(kms, keys)

        def encrypt(name: str) -> tuple[int, dict]:
            body = json.dumps({"KeyId": f"alias/{name}", "Plaintext": "aGk="}).encode()
            headers = {"host": "127.0.0.1", "content-type": "application/x-amz-json-1.1",
                       "x-amz-target": "TrentService.Encrypt", "x-test-nonce": uuid.uuid4().hex}
            headers.update({k.lower(): v for k, v in sigv4.sign(
                "POST", "/", "", headers, body, access_key_id=key.access_key_id, secret=key.secret,
                region="eu-west-1", service="kms").items()})
            out = dispatch(API, WireRequest("POST", "/", "", tuple(headers.items()), body), ctx)
            return out.status, json.loads(out.body)

        ctx.move = ("shared/x", other)
        status, answer = encrypt("shared/x")
        assert ctx.move is None  # the alias did move between the check and the call
        assert kms.describe_key("shared/x").key_id == other
        assert status == 200, answer
        assert answer["KeyId"].endswith(allowed)  # the key the policy allowed, not the one the alias names now
        assert kms.decrypt_data(base64.b64decode(answer["CiphertextBlob"])) == b"hi"
        assert blob.peek_key(base64.b64decode(answer["CiphertextBlob"]))[0] == allowed
        status, answer = encrypt("shared/x")  # now the alias names a key the policy does not allow
        assert status == 400 and answer["__type"] == "AccessDeniedException", answer


def test_keys_outside_the_policy_are_not_told_apart_from_keys_that_do_not_exist(server):
    admin = server.boto3(server.access_key(name="admin"))
    theirs = admin.create_key(Description="theirs")["KeyMetadata"]["KeyId"]
    admin.create_alias(AliasName="alias/payments/db", TargetKeyId=theirs)
    mine = admin.create_key(Description="mine")["KeyMetadata"]["KeyId"]
    admin.create_alias(AliasName="alias/mine/db", TargetKeyId=mine)
    limited = server.boto3(server.access_key(own_key_policy(mine), name="limited"))

    def answer(call, **kwargs) -> dict:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call(**kwargs)
        return e.value.response["Error"]

    exists = answer(limited.describe_key, KeyId="alias/payments/db")
    missing = answer(limited.describe_key, KeyId="alias/payments/nothing")
    assert exists["Code"] == missing["Code"] == "AccessDeniedException"
    assert exists["Message"].replace("db", "nothing") == missing["Message"]
    assert theirs not in exists["Message"]  # the id behind an alias the caller may not use
    for call, kwargs in [(limited.encrypt, {"Plaintext": b"x"}), (limited.describe_key, {})]:
        assert answer(call, KeyId="alias/payments/db", **kwargs)["Code"] == "AccessDeniedException"
    # inside the policy, a missing key is still NotFoundException (the caller's own mistake)
    assert answer(limited.describe_key, KeyId="alias/mine/nothing")["Code"] == "NotFoundException"
    assert limited.describe_key(KeyId="alias/mine/db")["KeyMetadata"]["KeyId"] == mine


CREATOR = """
[[allow]]
operations = ["create_key", "describe_key", "encrypt_data"]
keys = ["mine/*"]
"""


def test_a_key_made_with_an_alias_is_checked_against_that_alias(server):
    """create_key on `mine/*` confines the caller's new keys to mine/ (create_key on `*`
    lets it name new keys anything, and make keys without an alias)."""
    limited_key = server.access_key(CREATOR, name="creator")
    with remote_kms(server, limited_key) as remote:
        with pytest.raises(kms_errors.AccessDenied):
            remote.create_key(alias="payments/planted")
        made = remote.create_key(alias="mine/db")
        assert made.alias == "mine/db"
        with pytest.raises(kms_errors.AccessDenied):
            remote.create_key()  # no alias: an operation on no key, which needs keys = ["*"]
    admin = server.boto3(server.access_key(name="admin"))
    assert [a["AliasName"] for a in admin.list_aliases()["Aliases"]] == ["alias/mine/db"]
