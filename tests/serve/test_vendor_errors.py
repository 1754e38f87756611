"""Error paths through the vendor's SDK against a real `kms serve`: every refusal is the
vendor's code and HTTP status in the SDK's own exception (ClientRequestException with
error_code), carries an X-Request-Id, says nothing that helps an attacker, and is
audited with the caller's access key.

The tests that do not read the audit log share one server (module_server); those that
do have their own (`server`), since reading it needs the server stopped."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from kmscore import Kms
from kmsserve.apis.vendor import AUTH_MESSAGE
from kmsserve.auth import sdkhmac
from tests.serve.conftest import AccessKey
from tests.serve.vendorsdk import VENDOR_PROJECT, disable_access_key, vendor_client

pytestmark = pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")  # the SDK's signer
pytest.importorskip("huaweicloudsdkkms")
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException  # noqa: E402
from huaweicloudsdkkms.v2 import (  # noqa: E402
    CreateGrantRequest, CreateGrantRequestBody, CreateKeyRequest, CreateKeyRequestBody, CreateRandomRequest,
    DeleteKeyRequest, DisableKeyRequest, EncryptDataRequest, EncryptDataRequestBody, GenRandomRequestBody,
    ListKeyDetailRequest, OperateKeyRequestBody, ScheduleKeyDeletionRequestBody, ShowKmsTagsRequest,
)


def seq() -> str:
    return str(uuid.uuid4())


def refused(call) -> ClientRequestException:
    with pytest.raises(ClientRequestException) as e:
        call()
    assert e.value.request_id  # X-Request-Id on every answer
    return e.value


def encrypt(kms, key: str, text: str = "secret"):
    return kms.encrypt_data(EncryptDataRequest(body=EncryptDataRequestBody(key_id=key, plain_text=text, sequence=seq())))


def create(kms, **body) -> str:
    return kms.create_key(CreateKeyRequest(body=CreateKeyRequestBody(sequence=seq(), **body))).key_info.key_id


def records(server, operation: str) -> list[dict]:
    server.proc.terminate()
    server.proc.wait(timeout=15)
    with Kms(server.home) as k:
        return k.audit_records(operation=operation)


def test_key_state_errors_have_the_vendor_codes(module_server):
    kms = vendor_client(module_server, module_server.access_key())
    e = refused(lambda: kms.list_key_detail(ListKeyDetailRequest(body=OperateKeyRequestBody(key_id=str(uuid.uuid4())))))
    assert (e.status_code, e.error_code) == (404, "KMS.0207")
    key_id = create(kms)
    kms.disable_key(DisableKeyRequest(body=OperateKeyRequestBody(key_id=key_id, sequence=seq())))
    e = refused(lambda: encrypt(kms, key_id))
    assert (e.status_code, e.error_code) == (400, "KMS.0209")
    other = create(kms)
    kms.delete_key(DeleteKeyRequest(body=ScheduleKeyDeletionRequestBody(key_id=other, pending_days="7", sequence=seq())))
    assert refused(lambda: encrypt(kms, other)).error_code == "KMS.0210"
    e = refused(lambda: kms.delete_key(DeleteKeyRequest(body=ScheduleKeyDeletionRequestBody(
        key_id=key_id, pending_days="3", sequence=seq()))))
    assert e.error_code == "KMS.1401"  # 7 to 1096 days
    kms.list_key_detail(ListKeyDetailRequest(body=OperateKeyRequestBody(key_id="sidecar/default", sequence=seq())))
    e = refused(lambda: kms.disable_key(DisableKeyRequest(body=OperateKeyRequestBody(key_id="sidecar/default", sequence=seq()))))
    assert e.error_code == "KMS.0211"  # default keys cannot be disabled
    e = refused(lambda: kms.create_key(CreateKeyRequest(body=CreateKeyRequestBody(key_alias="bad alias!", sequence=seq()))))
    assert e.error_code == "KMS.1101"
    create(kms, key_alias="taken")
    assert refused(lambda: create(kms, key_alias="taken")).error_code == "KMS.1104"


def test_wrong_signature_and_unknown_access_key_get_one_answer_and_are_audited(server):
    key = server.access_key()
    answers = []
    for bad in (AccessKey(key.access_key_id, "x" * 40), AccessKey("KHAKNOSUCHKEY0000000", key.secret)):
        e = refused(lambda: vendor_client(server, bad).create_random(
            CreateRandomRequest(body=GenRandomRequestBody(random_data_length="256", sequence=seq()))))
        answers.append((e.status_code, e.error_code, e.error_msg))
    assert answers == [(401, "APIGW.0301", AUTH_MESSAGE)] * 2
    recs = records(server, "vendor.gen-random")
    assert sum(r["count"] for r in recs) == 2  # identical refusals are one record with a count
    assert all(r["caller"].startswith("unauthenticated") and r["outcome"] == "denied: AuthFailed" for r in recs)


def test_clock_skew_is_refused(module_server):
    kms = vendor_client(module_server, module_server.access_key())
    for minutes in (-16, 16):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() + minutes * 60))
        invoker = kms.create_random_invoker(CreateRandomRequest(body=GenRandomRequestBody(
            random_data_length="256", sequence=seq()))).add_header("X-Sdk-Date", stamp)
        e = refused(invoker.invoke)
        assert (e.status_code, e.error_code) == (401, "APIGW.0301") and "15 minutes" in e.error_msg
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 10 * 60))  # inside the window
    kms.create_random_invoker(CreateRandomRequest(body=GenRandomRequestBody(
        random_data_length="256", sequence=seq()))).add_header("X-Sdk-Date", stamp).invoke()


def test_a_replayed_request_is_refused_and_audited(server):
    key = server.access_key()
    kms = vendor_client(server, key)
    key_id = create(kms)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    body = EncryptDataRequestBody(key_id=key_id, plain_text="pay 10", sequence=seq())

    def send():
        return kms.encrypt_data_invoker(EncryptDataRequest(body=body)).add_header("X-Sdk-Date", stamp).invoke()

    send()  # the same date, body and headers: the very same signature
    deadline = time.monotonic() + 30  # the replay memory may accept an immediate honest repeat
    while True:
        try:
            send()
        except ClientRequestException as e:
            error = e
            break
        assert time.monotonic() < deadline, "a replayed signature kept being accepted"
        time.sleep(0.5)
    assert (error.status_code, error.error_code) == (401, "APIGW.0301") and "already used" in error.error_msg
    kms.encrypt_data_invoker(EncryptDataRequest(body=EncryptDataRequestBody(  # a fresh sequence is a new request
        key_id=key_id, plain_text="pay 10", sequence=seq()))).add_header("X-Sdk-Date", stamp).invoke()
    recs = records(server, "vendor.encrypt-data")
    assert recs[-1]["outcome"] == "denied: Replayed" and recs[-1]["caller"].startswith("unauthenticated")
    log = server.log.read_text()
    assert "pay 10" not in log and key.secret not in log  # neither plaintext nor secret reaches the log


def test_policy_refusal_is_the_vendors_code_and_audited_with_the_access_key(server):
    admin = vendor_client(server, server.access_key())
    app_key = create(admin, key_alias="app/orders")
    other_key = create(admin, key_alias="billing/ledger")
    key = server.access_key('[[allow]]\noperations = ["encrypt_data"]\nkeys = ["app/*"]\n', name="app1")
    kms = vendor_client(server, key)
    encrypt(kms, app_key)  # allowed
    e = refused(lambda: encrypt(kms, other_key))
    assert (e.status_code, e.error_code) == (403, "KMS.0306")
    e = refused(lambda: kms.list_key_detail(ListKeyDetailRequest(body=OperateKeyRequestBody(key_id=app_key, sequence=seq()))))
    assert (e.status_code, e.error_code) == (403, "KMS.0306")
    recs = records(server, "vendor.encrypt-data")
    assert recs[-1]["outcome"] == "denied: AccessDenied"
    assert recs[-1]["caller"] == f"access-key {key.access_key_id} (app1)"


def test_operations_keyhold_does_not_offer_are_the_gateways_404(module_server):
    kms = vendor_client(module_server, module_server.access_key())
    key_id = create(kms)
    e = refused(lambda: kms.create_grant(CreateGrantRequest(body=CreateGrantRequestBody(
        key_id=key_id, grantee_principal="someone", operations=["describe-key"]))))
    assert (e.status_code, e.error_code) == (404, "APIGW.0101")
    e = refused(lambda: kms.show_kms_tags(ShowKmsTagsRequest(key_id=key_id)))  # GET /kms/{key_id}/tags
    assert (e.status_code, e.error_code) == (404, "APIGW.0101")


def _raw(server, key: AccessKey, body: bytes, *, path: str | None = None, project: str = VENDOR_PROJECT):
    path = path or f"/v1.0/{VENDOR_PROJECT}/kms/gen-random"
    host = server.url.removeprefix("http://")
    headers = {"Host": host, "Content-Type": "application/json;charset=UTF-8", "X-Project-Id": project}
    headers.update(sdkhmac.sign("POST", path, "", headers, body, access_key_id=key.access_key_id, secret=key.secret))
    return httpx.post(server.url + path, content=body, headers=headers, timeout=30)


def test_malformed_bodies_and_a_mismatched_project_are_the_vendors_errors(module_server):
    key = module_server.access_key()
    ok = _raw(module_server, key, json.dumps({"random_data_length": 256}).encode())  # numbers as numbers are read too
    assert ok.status_code == 200 and len(bytes.fromhex(ok.json()["random_data"])) == 32
    assert ok.headers["x-request-id"]
    for body, code in ((b"{not json", "KMS.0202"), (b"[]", "KMS.0202"), (b"{}", "KMS.0204"),
                       (b'{"random_data_length": "12"}', "KMS.1802"), (b'{"random_data_length": true}', "KMS.1801")):
        r = _raw(module_server, key, body)
        assert (r.status_code, r.json()["error"]["error_code"]) == (400, code), body
    r = _raw(module_server, key, b'{"random_data_length": "256"}', project="another-project")
    assert (r.status_code, r.json()["error"]["error_code"]) == (403, "KMS.0321")
    r = _raw(module_server, key, b'{"key_id": "x", "message": "%%%"}', path=f"/v1.0/{VENDOR_PROJECT}/kms/sign")
    assert r.json()["error"]["error_code"] in ("KMS.0308", "KMS.0204")
    unsigned = httpx.post(module_server.url + f"/v1.0/{VENDOR_PROJECT}/kms/gen-random", json={"random_data_length": "256"})
    assert unsigned.status_code == 401 and unsigned.json() == {
        "error_code": "APIGW.0301", "error_msg": AUTH_MESSAGE, "request_id": unsigned.headers["x-request-id"]}


def test_a_disabled_access_key_gets_the_wrong_signature_answer(module_server):
    key = module_server.access_key(name="soon-disabled")
    kms = vendor_client(module_server, key)
    kms.create_random(CreateRandomRequest(body=GenRandomRequestBody(random_data_length="256", sequence=seq())))
    disable_access_key(module_server, key)
    e = refused(lambda: kms.create_random(CreateRandomRequest(body=GenRandomRequestBody(random_data_length="256", sequence=seq()))))
    assert (e.status_code, e.error_code, e.error_msg) == (401, "APIGW.0301", AUTH_MESSAGE)
