"""Authentication and authorization failures (issue 12 item 3), with boto3 and raw httpx
requests signed by kmsserve's SigV4: each gets the AWS API's documented error, no detail
that tells an attacker which part was wrong, and an audit record naming the caller.

One server for the module: every test uses its own access keys, and audit records are
found by a bounded poll of `kms audit list` (the server merges its journal within a
fraction of a second), never by a sleep."""

from __future__ import annotations

import json
import time

import botocore.exceptions
import httpx
import pytest

from kmscore import Kms
from tests.serve.conftest import ALLOW_ALL, AccessKey, kms
from tests.serve.servecore import signed_request


def post(module_server, key, target="GenerateRandom", body=b'{"NumberOfBytes": 8}', **kw) -> httpx.Response:
    url, headers, body = signed_request(module_server.url, key, target, body, **kw)
    return httpx.post(url, headers=headers, content=body, timeout=30)


def audit_of(module_server, operation: str, caller_part: str, timeout: float = 20) -> dict:
    """The newest audit record of `operation` whose caller mentions `caller_part` (read
    from the store beside the running server, polled with a bound)."""
    deadline = time.monotonic() + timeout
    with Kms(module_server.home) as k:
        while True:
            hits = [r for r in k.audit_records(operation=operation) if caller_part in r["caller"]]
            if hits:
                return hits[-1]
            assert time.monotonic() < deadline, f"no audit record of {operation} by {caller_part}"
            time.sleep(0.1)


def error_of(resp: httpx.Response) -> tuple[int, str, str]:
    data = resp.json()
    return resp.status_code, data["__type"], data["message"]


def test_a_valid_raw_request_is_answered(module_server):
    key = module_server.access_key(name="raw-ok")
    resp = post(module_server, key)
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["Plaintext"]) == 12  # 8 bytes, base64


@pytest.mark.parametrize("minutes", [16, -16])
def test_outside_the_clock_skew_window_is_refused(module_server, minutes):
    key = module_server.access_key(name=f"skew{minutes}")
    resp = post(module_server, key, now=time.time() - minutes * 60)
    assert error_of(resp)[:2] == (400, "InvalidSignatureException")
    record = audit_of(module_server, "aws.GenerateRandom", key.access_key_id)
    assert record["outcome"] == "denied: RequestExpired"


def test_inside_the_window_is_accepted(module_server):
    key = module_server.access_key(name="skew14")
    assert post(module_server, key, now=time.time() - 14 * 60).status_code == 200


def test_a_replay_inside_the_window_is_refused(module_server):
    """A repeat of the same signature is accepted only just after its first use (honest
    same-second repeats, kmsserve.auth.replay); resent later it is refused, while a
    new signature of the same call is not."""
    key = module_server.access_key(name="replay")
    url, headers, body = signed_request(module_server.url, key, "GenerateRandom", b'{"NumberOfBytes": 8}')
    assert httpx.post(url, headers=headers, content=body, timeout=30).status_code == 200
    deadline = time.monotonic() + 30
    while True:
        again = httpx.post(url, headers=headers, content=body, timeout=30)
        if again.status_code != 200:
            break
        assert time.monotonic() < deadline, "a replayed signature kept being accepted"
        time.sleep(0.5)
    assert error_of(again)[:2] == (400, "UnrecognizedClientException")
    record = audit_of(module_server, "aws.GenerateRandom", key.access_key_id)
    assert record["outcome"] == "denied: Replayed"
    assert post(module_server, key, extra={"X-Request-Nonce": "2"}).status_code == 200


def test_boto3_calls_in_the_same_second_are_not_replays(module_server):
    """botocore signs a fresh amz-sdk-invocation-id into every call, so identical calls
    differ: the replay memory must never refuse an honest client."""
    client = module_server.boto3(module_server.access_key(name="boto-repeat"))
    for _ in range(5):
        assert len(client.generate_random(NumberOfBytes=4)["Plaintext"]) == 4


def test_wrong_signature_unknown_and_disabled_keys_look_the_same(module_server):
    good = module_server.access_key(name="victim")
    disabled = module_server.access_key(name="disabled")
    assert kms(module_server.home, "access-key", "disable", disabled.access_key_id).returncode == 0
    wrong = post(module_server, AccessKey(good.access_key_id, "x" * 40))
    unknown = post(module_server, AccessKey("KHAKAAAAAAAAAAAAAAAA", good.secret))
    off = post(module_server, disabled)
    tampered_url, headers, _ = signed_request(module_server.url, good, "GenerateRandom", b'{"NumberOfBytes": 8}')
    tampered = httpx.post(tampered_url, headers=headers, content=b'{"NumberOfBytes": 9}', timeout=30)
    unsigned = httpx.post(module_server.url + "/", headers={"X-Amz-Target": "TrentService.GenerateRandom",
                                                   "Content-Type": "application/x-amz-json-1.1"}, content=b"{}")
    answers = {error_of(r) for r in (wrong, unknown, off, tampered, unsigned)}
    assert answers == {(400, "UnrecognizedClientException", "The security token included in the request is invalid.")}
    assert audit_of(module_server, "aws.GenerateRandom", f"claims access-key {disabled.access_key_id}")["outcome"] == "denied: AuthFailed"
    assert audit_of(module_server, "aws.GenerateRandom", f"claims access-key {good.access_key_id}")["outcome"] == "denied: AuthFailed"
    # the unknown id is not copied into the log (a caller could write anything there)
    with Kms(module_server.home) as k:
        assert "KHAKAAAAAAAAAAAAAAAA" not in json.dumps(k.audit_records())


def test_boto3_sees_the_documented_errors(module_server):
    key = module_server.access_key(name="boto-errors")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        module_server.boto3(AccessKey(key.access_key_id, "y" * 40)).generate_random(NumberOfBytes=8)
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert kms(module_server.home, "access-key", "disable", "boto-errors").returncode == 0
    with pytest.raises(botocore.exceptions.ClientError) as e:
        module_server.boto3(key).generate_random(NumberOfBytes=8)
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert kms(module_server.home, "access-key", "enable", "boto-errors").returncode == 0
    assert len(module_server.boto3(key).generate_random(NumberOfBytes=8)["Plaintext"]) == 8


def test_an_unknown_operation_is_refused_and_audited(module_server):
    key = module_server.access_key(name="unknown-op")
    resp = post(module_server, key, target="MakeMeAdmin<script>", body=b"{}")
    assert error_of(resp)[:2] == (400, "UnknownOperationException")
    record = audit_of(module_server, "aws.(unknown)", key.access_key_id)
    assert record["outcome"] == "denied: UnknownOperation"
    # unauthenticated callers learn nothing about which operations exist
    anon = post(module_server, AccessKey("KHAKAAAAAAAAAAAAAAAB", "z" * 40), target="MakeMeAdmin", body=b"{}")
    assert error_of(anon)[:2] == (400, "UnrecognizedClientException")


def test_a_policy_refusal_is_access_denied_and_audited(module_server):
    key = module_server.access_key('[[allow]]\noperations = ["encrypt_data"]\nkeys = ["app/*"]\n', name="narrow")
    resp = post(module_server, key)
    assert error_of(resp)[:2] == (400, "AccessDeniedException")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        module_server.boto3(key).generate_random(NumberOfBytes=8)
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    record = audit_of(module_server, "aws.GenerateRandom", key.access_key_id)
    assert record["outcome"] == "denied: AccessDenied" and record["caller"] == f"access-key {key.access_key_id} (narrow)"
    # set-policy reaches the running server at its next request
    policy = module_server.home.parent / "gen-random.toml"
    policy.write_text('[[allow]]\noperations = ["gen_random"]\nkeys = ["*"]\n')
    assert kms(module_server.home, "access-key", "set-policy", "narrow", "--policy", str(policy)).returncode == 0
    assert post(module_server, key).status_code == 200


def test_kms_audit_list_shows_the_access_key(module_server):
    key = module_server.access_key(ALLOW_ALL, name="listed")
    assert post(module_server, key).status_code == 200
    audit_of(module_server, "GenerateRandom", key.access_key_id)
    out = kms(module_server.home, "audit", "list", "--operation", "GenerateRandom")
    assert f"[access-key {key.access_key_id} (listed)]" in out.stdout.decode()


def test_no_secret_reaches_the_log(module_server):
    key = module_server.access_key(name="quiet")
    post(module_server, key)
    post(module_server, AccessKey(key.access_key_id, key.secret[::-1]))
    text = module_server.log.read_text()
    assert key.secret not in text and key.secret[::-1] not in text
