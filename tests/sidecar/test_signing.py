"""RFC 9421 signatures: the sidecar's are checked by the independent `http-message-signatures`
package; signatures it checks are made by that package."""

from __future__ import annotations

import datetime
import json
import secrets
import time
from types import SimpleNamespace

import httpx
import pytest
from conftest import EXTERNAL_EC, error_of
from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, InvalidSignature, algorithms
from http_message_signatures.resolvers import MappingKeyResolver

from sidecar import httpsig


def kms_hmac(kms, key):
    """HMAC keys never leave the KMS, so the library's HMAC primitive calls it; the
    signature base, Signature-Input and Content-Digest handling stay the library's own."""

    class KmsHmac(algorithms.HMAC_SHA256):
        def sign(self, message: bytes):
            return kms.generate_mac(key, message)

        def verify(self, signature: bytes, message: bytes):
            if not kms.verify_mac(key, message, signature):
                raise InvalidSignature("HMAC mismatch")

    return KmsHmac


def received(up_rec, url):
    """The request the upstream received, as the library's message view."""
    return SimpleNamespace(method=up_rec.method, url=url, headers=httpx.Headers(up_rec.headers))


def lib_verify(upstream, alg_class, key_material, keyid, url, *, body=None):
    rec = upstream.last()
    verifier = HTTPMessageVerifier(
        signature_algorithm=alg_class,
        key_resolver=MappingKeyResolver(public_keys={keyid: key_material}, private_keys={}),
    )
    return verifier.verify(
        received(rec, url), body=rec.body if body is None else body,
        require_components=("@method", "@target-uri", "content-digest"),
        max_age=datetime.timedelta(minutes=5),
    )


@pytest.mark.parametrize(
    "path, key, keyid, alg_class",
    [
        ("/sign/ec", "app/ec", "ec-1", algorithms.ECDSA_P256_SHA256),
        ("/sign/p384", "app/ec384", "app/ec384", algorithms.ECDSA_P384_SHA384),
        ("/sign/pss", "app/rsa", "app/rsa", algorithms.RSA_PSS_SHA512),
        ("/sign/pkcs1", "app/rsa", "app/rsa", algorithms.RSA_V1_5_SHA256),
    ],
)
def test_asymmetric_signatures_verify_independently(client, upstream, kms, path, key, keyid, alg_class):
    r = client.post(path + "?q=1", json={"amount": 10})
    assert r.status_code == 200
    pem = kms.get_public_key(key).encode()
    url = f"{upstream.url}{path}?q=1"
    [result] = lib_verify(upstream, alg_class, pem, keyid, url)
    assert result.parameters["alg"] == alg_class.algorithm_id
    assert {c.strip('"') for c in result.covered_components} >= {"@method", "@target-uri", "content-digest", "content-type"}


def test_hmac_signature_verifies_independently(client, upstream, kms):
    r = client.post("/sign/hmac", json={"amount": 10})
    assert r.status_code == 200
    [result] = lib_verify(upstream, kms_hmac(kms, "app/mac"), b"unused", "app/mac", f"{upstream.url}/sign/hmac")
    assert result.parameters["keyid"] == "app/mac"


@pytest.mark.parametrize("path, key, keyid, alg_class", [
    ("/sign/hmac", "app/mac", "app/mac", None),
    ("/sign/ec", "app/ec", "ec-1", algorithms.ECDSA_P256_SHA256),
])
def test_tampering_fails_independent_verification(client, upstream, kms, path, key, keyid, alg_class):
    material = b"unused" if alg_class is None else kms.get_public_key(key).encode()
    alg_class = alg_class or kms_hmac(kms, key)
    client.post(path, json={"amount": 10})
    url = f"{upstream.url}{path}"
    lib_verify(upstream, alg_class, material, keyid, url)  # untampered: fine
    with pytest.raises(InvalidSignature):  # body changed: digest no longer matches
        lib_verify(upstream, alg_class, material, keyid, url, body=b'{"amount":1000}')
    with pytest.raises(InvalidSignature):  # path changed
        lib_verify(upstream, alg_class, material, keyid, url + "/other")
    rec = upstream.last()
    rec.headers["content-digest"] = httpsig.content_digest(b'{"amount":1000}')
    with pytest.raises(InvalidSignature):  # digest replaced to match a new body
        lib_verify(upstream, alg_class, material, keyid, url, body=b'{"amount":1000}')


# -- the sidecar verifying signatures made by the independent library ---------------------
def signed_request(base, path, body: bytes, alg_class, resolver, keyid, *, created=None, nonce=True,
                   covers=("@method", "@target-uri", "content-digest", "content-type")):
    req = httpx.Request("POST", base + path, content=body, headers={"content-type": "application/json"})
    HTTPMessageSigner(signature_algorithm=alg_class, key_resolver=resolver).sign(
        req, key_id=keyid, label="sig1", body=body, created=created,
        nonce=secrets.token_urlsafe(16) if nonce is True else nonce or None,
        covered_component_ids=covers,
    )
    return req


@pytest.fixture
def ec_signer():
    return algorithms.ECDSA_P256_SHA256, MappingKeyResolver(public_keys={}, private_keys={"ext": EXTERNAL_EC}), "ext"


def test_sidecar_accepts_library_signatures(client, upstream, sidecar, ec_signer, kms):
    body = b'{"pay":1}'
    r = client.send(signed_request(sidecar.urls["main"], "/verify/ec", body, *ec_signer))
    assert r.status_code == 200, r.text
    assert upstream.last().body == body
    resolver = MappingKeyResolver(public_keys={}, private_keys={"k": b"unused"})
    r = client.send(signed_request(sidecar.urls["main"], "/verify/hmac", body, kms_hmac(kms, "app/mac"), resolver, "k"))
    assert r.status_code == 200, r.text


def test_sidecar_rejects_tampered_missing_and_stale(client, upstream, sidecar, ec_signer):
    base = sidecar.urls["main"]
    body = b'{"pay":1}'
    cases = {}
    req = signed_request(base, "/verify/ec", body, *ec_signer)
    cases["tampered body"] = httpx.Request("POST", req.url, content=b'{"pay":9}', headers=req.headers)
    req = signed_request(base, "/verify/ec", body, *ec_signer)
    cases["tampered path"] = httpx.Request("POST", base + "/verify/ec/other", content=body, headers=req.headers)
    req = signed_request(base, "/verify/ec", body, *ec_signer)
    h = dict(req.headers)
    h["content-digest"] = httpsig.content_digest(b'{"pay":9}')
    cases["tampered digest"] = httpx.Request("POST", req.url, content=b'{"pay":9}', headers=h)
    cases["unsigned"] = httpx.Request("POST", base + "/verify/ec", content=body)
    old = datetime.datetime.fromtimestamp(time.time() - 3600, tz=datetime.timezone.utc)
    cases["stale"] = signed_request(base, "/verify/ec", body, *ec_signer, created=old)
    future = datetime.datetime.fromtimestamp(time.time() + 3600, tz=datetime.timezone.utc)
    cases["from the future"] = signed_request(base, "/verify/ec", body, *ec_signer, created=future)
    h = dict(signed_request(base, "/verify/ec", body, *ec_signer).headers)
    h["signature-input"] = "sig1=(garbage"
    cases["malformed"] = httpx.Request("POST", base + "/verify/ec", content=body, headers=h)
    for name, req in cases.items():
        r = client.send(req)
        assert r.status_code == 401, name
        err = error_of(r)
        assert err["reason"] == "bad_signature" and err["rule"] == "verify-ec", name
    assert upstream.received == []


def test_response_signing_and_verification(client, upstream, kms):
    upstream.reply = (b'{"balance":5}', "application/json", {})
    r = client.get("/reply/sign")
    assert r.status_code == 200 and r.content == b'{"balance":5}'
    assert httpsig.check_content_digest(r.headers["content-digest"], r.content)
    resp = SimpleNamespace(status_code=r.status_code, headers=r.headers,
                           request=SimpleNamespace(method="GET", url=str(r.request.url), headers=httpx.Headers()))
    verifier = HTTPMessageVerifier(
        signature_algorithm=algorithms.ECDSA_P256_SHA256,
        key_resolver=MappingKeyResolver(public_keys={"app/ec": kms.get_public_key("app/ec").encode()}, private_keys={}),
    )
    verifier.verify(resp, body=r.content, require_components=("@status", "content-digest"))

    # an unsigned upstream response to a verify rule is not passed on
    upstream.reply = (b'{"balance":5}', "application/json", {})
    r = client.get("/reply/verify")
    assert r.status_code == 401 and error_of(r)["direction"] == "response"
    assert b"balance" not in r.content


def test_signature_base_matches_rfc9421_example():
    """RFC 9421 appendix B.2.5-style base, built by our code from a fixed message."""
    msg = httpsig.Message("POST", "https://example.com/foo?param=Value&Pet=dog", None,
                          {"content-type": "application/json", "content-digest": "sha-512=:abc=:"})
    inp = httpsig.SignatureInput(("@method", "@target-uri", "content-type"),
                                 (("created", 1618884473), ("keyid", "test-key-ecc-p256")))
    assert httpsig.signature_base(inp, msg) == (
        b'"@method": POST\n'
        b'"@target-uri": https://example.com/foo?param=Value&Pet=dog\n'
        b'"content-type": application/json\n'
        b'"@signature-params": ("@method" "@target-uri" "content-type");created=1618884473;keyid="test-key-ecc-p256"'
    )
    assert httpsig.parse_signature_input("sig1=" + inp.serialize()) == {"sig1": inp}
    assert json.dumps(httpsig.content_digest(b'{"hello": "world"}\n')) == (
        '"sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:"'
    )  # RFC 9530 appendix B.1


def test_signed_upstream_response_is_verified(client, upstream, kms):
    """The upstream signs its response with the independent library; the sidecar checks it."""
    body = b'{"balance":7}'
    headers = httpx.Headers({"content-type": "application/json"})
    resp = SimpleNamespace(status_code=200, headers=headers,
                           request=SimpleNamespace(method="GET", url=f"{upstream.url}/reply/verify", headers=httpx.Headers()))
    HTTPMessageSigner(signature_algorithm=kms_hmac(kms, "app/mac"),
                      key_resolver=MappingKeyResolver(public_keys={}, private_keys={"k": b"unused"})).sign(
        resp, key_id="k", label="sig1", body=body, nonce=secrets.token_urlsafe(16),
        covered_component_ids=("@status", "content-digest", "content-type"))
    extra = {k: v for k, v in headers.items() if k != "content-type"}
    upstream.reply = (body, "application/json", extra)
    r = client.get("/reply/verify")
    assert r.status_code == 200 and r.content == body
    upstream.reply = (b'{"balance":7000}', "application/json", extra)  # body swapped under the signature
    r = client.get("/reply/verify")
    assert r.status_code == 401 and b"7000" not in r.content
