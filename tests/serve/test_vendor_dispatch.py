"""The whole vendor path in-process (sans-network): a signed request through the one
dispatcher into a real facade on a real key store. Whatever a signed body holds, the
answer is the vendor's 2xx or 4xx, never a 500 (a 500 would mean an input that reached
the facade unchecked and a traceback in the log)."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmscore import Kms
from kmsserve.apis import vendor
from kmsserve.app import ServerContext
from kmsserve.auth import sdkhmac
from kmsserve.auth.accesskeys import AccessKeys
from kmsserve.auth.policy import Policy
from kmsserve.wire import WireRequest, dispatch
from tests.serve.test_vendor_table import FIELDS, JSON, LISTED

PROJECT = "p1"


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    with Kms(tmp_path_factory.mktemp("vendor-dispatch") / "home") as kms:
        keys = AccessKeys(kms)
        try:
            key = keys.create("fuzz", Policy.parse('[[allow]]\noperations = ["*"]\nkeys = ["*"]\n'))
            aes = kms.create_key(alias="fuzz/aes").key_id
            rsa = kms.create_key(spec="RSA_2048", usage="SIGN_VERIFY").key_id
            hmac_key = kms.create_key(spec="HMAC_256").key_id
            blob = kms.encrypt_data(aes, b"hello").hex()
            yield ServerContext(kms, keys), key, [aes, rsa, hmac_key, "fuzz/aes", str(uuid.uuid4())], blob
        finally:
            keys.close()


def request(key, name: str, body: bytes) -> WireRequest:
    path = f"/v1.0/{PROJECT}/kms/{name}"
    headers = {"host": "kms.test", "content-type": "application/json", "x-project-id": PROJECT}
    headers.update(sdkhmac.sign("POST", path, "", headers, body, access_key_id=key.access_key_id, secret=key.secret))
    return WireRequest("POST", path, "", tuple((k.lower(), v) for k, v in headers.items()), body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), name=st.sampled_from(sorted(LISTED)),
       fields=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6))
def test_no_signed_body_makes_a_500(ctx, data, name, fields):
    context, key, key_names, blob = ctx
    fields = dict(fields, sequence=str(uuid.uuid4()))
    if data.draw(st.booleans()):
        fields["key_id"] = data.draw(st.sampled_from(key_names))
    if name in ("decrypt-data", "decrypt-datakey") and data.draw(st.booleans()):
        fields["cipher_text"] = blob if name == "decrypt-datakey" else base64.b64encode(bytes.fromhex(blob)).decode()
    out = dispatch(vendor.API, request(key, name, json.dumps(fields).encode()), context)
    assert out.status < 500, out.body
    if out.status >= 400:
        error = json.loads(out.body)["error"]
        assert error["error_code"].startswith("KMS.") and error["error_msg"]
