"""Every AWS operation, every request field set to values of the wrong type or shape:
each answer is one of AWS's 400 codes, never an internal error (no traceback, nothing
that crashed). The real dispatcher, AWS table and embedded Kms, in-process (sans-IO: the
HTTP layer adds nothing to this), fed signed requests."""

from __future__ import annotations

import json
import uuid

import botocore.session
import pytest

from kmscore import Kms
from kmsserve.apis.aws import API
from kmsserve.app import ServerContext
from kmsserve.auth import sigv4
from kmsserve.auth.accesskeys import AccessKeys
from kmsserve.auth.policy import Policy
from kmsserve.wire import WireRequest, dispatch

MODEL = botocore.session.get_session().get_service_model("kms")
BAD_VALUES = [7, -1, 2**70, 1.5, True, "x", "", "\u202e\x00", [], ["a"], {}, {"a": 1}, None, "A" * 5000]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("bad-input") / "home"
    with Kms(home) as kms:
        keys = AccessKeys(kms)
        key = keys.create("fuzz", Policy.parse('[[allow]]\noperations = ["*"]\nkeys = ["*"]\n'))
        ctx = ServerContext(kms, keys)
        key_id = kms.create_key("fuzz/aes").key_id

        def call(operation: str, body: bytes) -> tuple[int, dict]:
            headers = {"host": "127.0.0.1", "content-type": "application/x-amz-json-1.1",
                       "x-amz-target": f"TrentService.{operation}", "x-test-nonce": uuid.uuid4().hex}
            headers.update({k.lower(): v for k, v in sigv4.sign(
                "POST", "/", "", headers, body, access_key_id=key.access_key_id, secret=key.secret,
                region="eu-west-1", service="kms").items()})
            out = dispatch(API, WireRequest("POST", "/", "", tuple(headers.items()), body), ctx)
            return out.status, json.loads(out.body)

        yield call, key_id


@pytest.mark.parametrize("operation", sorted(MODEL.operation_names))
def test_wrong_types_in_every_field_are_refused_cleanly(served, operation):
    call, key_id = served
    members = list(MODEL.operation_model(operation).input_shape.members)
    base = {"KeyId": key_id} if "KeyId" in members else {}
    bodies = [b"[]", b"null", b'"s"', b"1", b"{", json.dumps(base).encode()]
    for name in members:
        for bad in BAD_VALUES:
            bodies.append(json.dumps({**base, name: bad}).encode())
    for body in bodies:
        status, answer = call(operation, body)
        assert status in (200, 400), (operation, body[:80], status, answer)
        if status == 400:
            assert answer["__type"] != "KMSInternalException" and answer["message"], (operation, body[:80], answer)
