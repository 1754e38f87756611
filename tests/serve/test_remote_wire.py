"""The facade API on the wire, spoken by an independent client: requests signed by
botocore's own SigV4 signer (service `keyhold`) and sent with httpx to a real `kms
serve`, so the format in docs/api/facade.md is what the server takes, and every bad
request gets its documented error and no more."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


@pytest.fixture(scope="module")
def signer(module_server):
    key = module_server.access_key()
    return SigV4Auth(Credentials(key.access_key_id, key.secret), "keyhold", "eu-west-1")


def signed(server, signer, method: str, fields: dict, service_signer=None) -> AWSRequest:
    req = AWSRequest("POST", f"{server.url}/keyhold/v1/{method}", data=json.dumps(fields).encode(),
                     headers={"Content-Type": "application/json"})
    (service_signer or signer).add_auth(req)
    return req


def send(req: AWSRequest) -> httpx.Response:
    return httpx.post(req.url, content=req.body, headers=dict(req.headers.items()), timeout=10)


def error(r: httpx.Response) -> tuple[str, str]:
    e = r.json()["error"]
    return e["type"], e["message"]


def test_an_independent_sigv4_client_calls_the_facade(module_server, signer):
    r = send(signed(module_server, signer, "gen_random", {"length": 16}))
    assert r.status_code == 200 and len(base64.b64decode(r.json()["result"])) == 16
    r = send(signed(module_server, signer, "create_key", {"alias": "wire/a", "spec": "HMAC_256"}))
    meta = r.json()["result"]
    assert r.status_code == 200 and meta["spec"] == "HMAC_256" and meta["state"] == "Enabled"
    assert isinstance(meta["created_at"], float) and meta["usage"] == "GENERATE_VERIFY_MAC"
    r = send(signed(module_server, signer, "encrypt_data", {
        "key": "wire/b", "plaintext": base64.b64encode(b"secret words").decode()}))
    assert r.status_code == 404 and error(r) == ("NotFound", "no key with id or alias 'wire/b'")
    assert b"secret words" not in r.content and base64.b64encode(b"secret words") not in r.content


@pytest.mark.parametrize("method, fields, status, kind, message", [
    ("no_such_thing", {}, 404, "InvalidRequest", "keyhold has no operation 'no_such_thing'"),
    ("verify_store", {}, 404, "InvalidRequest", "keyhold has no operation 'verify_store'"),
    ("gen_random", {"length": 8, "extra": 1}, 400, "InvalidRequest", "gen_random: unknown argument(s) extra"),
    ("gen_random", {}, 400, "InvalidRequest", "gen_random: missing argument(s) length"),
    ("gen_random", {"length": "8"}, 400, "InvalidRequest", "gen_random: argument length: expected int, got str"),
    ("gen_random", {"length": True}, 400, "InvalidRequest", "gen_random: argument length: expected int, got bool"),
    ("decrypt_data", {"ciphertext": "not base64!"}, 400, "InvalidRequest",
     "decrypt_data: argument ciphertext: a bytes field is not valid base64"),
    ("decrypt_data", {"ciphertext": base64.b64encode(b"x" * 60).decode()}, 400, "InvalidCiphertext",
     "unsupported KMS ciphertext version 120"),
    ("encrypt_data", {"key": "k", "plaintext": "", "context": {"a": 1}}, 400, "InvalidRequest",
     "encrypt_data: argument context: encryption context keys and values must be strings"),
])
def test_bad_requests_get_their_documented_error(module_server, signer, method, fields, status, kind, message):
    r = send(signed(module_server, signer, method, fields))
    assert (r.status_code, *error(r)) == (status, kind, message)


def test_a_body_that_is_not_a_json_object(module_server, signer):
    for body in (b"[1, 2]", b"{not json"):
        req = AWSRequest("POST", f"{module_server.url}/keyhold/v1/gen_random", data=body,
                         headers={"Content-Type": "application/json"})
        signer.add_auth(req)
        r = send(req)
        assert r.status_code == 400 and error(r)[0] == "InvalidRequest"


def test_signed_for_another_service_or_replayed_is_refused_alike(module_server, signer):
    key = module_server.access_key()
    aws = SigV4Auth(Credentials(key.access_key_id, key.secret), "kms", "eu-west-1")
    r = send(signed(module_server, signer, "gen_random", {"length": 8}, service_signer=aws))
    assert r.status_code == 401 and error(r)[0] == "AccessDenied"
    first = signed(module_server, signer, "gen_random", {"length": 8})
    assert send(first).status_code == 200
    again = send(first)
    assert again.status_code == 401 and error(again) == error(r)  # no detail that helps an attacker
    unsigned = httpx.post(f"{module_server.url}/keyhold/v1/gen_random", json={"length": 8}, timeout=10)
    assert unsigned.status_code == 401 and error(unsigned) == error(r)
