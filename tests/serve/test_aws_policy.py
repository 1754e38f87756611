"""An access key's policy over the AWS API: each key an operation touches is checked
(the one inside a ciphertext for a Decrypt that names none; both keys of a ReEncrypt),
refusals answer AccessDeniedException and are audited with the caller's access key id;
a target AWS does not have is UnknownOperationException. A real `kms serve`, boto3."""

from __future__ import annotations

import uuid

import botocore.exceptions
import httpx
import pytest

from kmscore import Kms
from kmsserve.auth import sigv4

LIMITED = """
[[allow]]
operations = ["encrypt_data", "decrypt_data", "describe_key"]
keys = ["app/*"]
"""


def code_of(call, **kwargs) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(**kwargs)
    return e.value.response["Error"]["Code"]


def nonce(client):
    # one signed header unique per call (see test_aws_boto3.distinct)
    client.meta.events.register("before-sign.kms", lambda request, **kw: request.headers.__setitem__(
        "x-keyhold-test-nonce", uuid.uuid4().hex))
    return client


def test_policy_per_key_and_operation_and_the_audit(server):
    admin = nonce(server.boto3(server.access_key(name="admin")))
    app = admin.create_key(Description="app")["KeyMetadata"]["KeyId"]
    other = admin.create_key(Description="other")["KeyMetadata"]["KeyId"]
    admin.create_alias(AliasName="alias/app/a", TargetKeyId=app)
    admin.create_alias(AliasName="alias/other/b", TargetKeyId=other)
    own_blob = admin.encrypt(KeyId=app, Plaintext=b"mine")["CiphertextBlob"]
    other_blob = admin.encrypt(KeyId=other, Plaintext=b"theirs")["CiphertextBlob"]

    limited_key = server.access_key(LIMITED, name="app1")
    limited = nonce(server.boto3(limited_key))
    assert limited.encrypt(KeyId="alias/app/a", Plaintext=b"x")["KeyId"].endswith(app)
    assert limited.encrypt(KeyId=app, Plaintext=b"y")["KeyId"].endswith(app)  # by id: its alias matches
    assert limited.decrypt(CiphertextBlob=own_blob)["Plaintext"] == b"mine"
    assert code_of(limited.encrypt, KeyId="alias/other/b", Plaintext=b"x") == "AccessDeniedException"
    assert code_of(limited.decrypt, CiphertextBlob=other_blob) == "AccessDeniedException"  # the key inside
    assert code_of(limited.generate_data_key, KeyId=app, KeySpec="AES_256") == "AccessDeniedException"
    assert code_of(limited.re_encrypt, CiphertextBlob=own_blob, DestinationKeyId=other) == "AccessDeniedException"
    assert code_of(limited.re_encrypt, CiphertextBlob=other_blob, DestinationKeyId=app) == "AccessDeniedException"
    assert code_of(limited.list_keys) == "AccessDeniedException"
    assert code_of(limited.create_key) == "AccessDeniedException"
    assert code_of(limited.delete_alias, AliasName="alias/app/a") == "AccessDeniedException"
    assert admin.describe_key(KeyId="alias/app/a")["KeyMetadata"]["KeyId"] == app  # nothing changed

    server.proc.terminate()
    server.proc.wait(timeout=15)
    with Kms(server.home) as k:
        records = k.audit_records()
    caller = f"access-key {limited_key.access_key_id} (app1)"
    mine = [r for r in records if r["caller"] == caller]
    assert {(r["operation"], r["outcome"].split(":")[0]) for r in mine} >= {
        ("Encrypt", "ok"), ("Decrypt", "ok"), ("aws.Encrypt", "denied"), ("aws.Decrypt", "denied"),
        ("aws.ReEncrypt", "denied"), ("aws.GenerateDataKey", "denied"), ("aws.ListKeys", "denied")}
    assert all("AccessDenied" in r["outcome"] for r in mine if r["operation"].startswith("aws."))


def signed_post(server, key, target: str, body: bytes = b"{}") -> httpx.Response:
    host = server.url.removeprefix("http://")
    headers = {"Host": host, "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target,
               "X-Keyhold-Test-Nonce": uuid.uuid4().hex}
    headers.update(sigv4.sign("POST", "/", "", headers, body, access_key_id=key.access_key_id, secret=key.secret,
                              region="eu-west-1", service="kms"))
    return httpx.post(server.url + "/", content=body, headers=headers)


def test_unknown_operation_and_malformed_bodies(server):
    key = server.access_key()
    out = signed_post(server, key, "TrentService.NoSuchOperation")
    assert (out.status_code, out.json()["__type"]) == (400, "UnknownOperationException")
    out = signed_post(server, key, "TrentService.Encrypt", b"{not json")
    assert (out.status_code, out.json()["__type"]) == (400, "SerializationException")
    out = signed_post(server, key, "TrentService.Encrypt", b'{"KeyId": "alias/x", "Plaintext": "***"}')
    assert (out.status_code, out.json()["__type"]) == (400, "SerializationException")
    out = signed_post(server, key, "TrentService.GenerateRandom", b'{"NumberOfBytes": "8"}')
    assert (out.status_code, out.json()["__type"]) == (400, "SerializationException")
    out = signed_post(server, key, "TrentService.Encrypt", b'{"Plaintext": "eA=="}')
    assert (out.status_code, out.json()["__type"]) == (400, "ValidationException")
    out = signed_post(server, key, "TrentService.GenerateRandom", b'{"NumberOfBytes": 4}')
    assert out.status_code == 200 and out.headers["content-type"] == "application/x-amz-json-1.1"
