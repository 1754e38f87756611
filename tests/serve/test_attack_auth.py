"""Attacks on the signatures, as someone holding one captured request or a valid key: a
real `kms serve`, raw requests over httpx (boto3 would not send them).

- X-Amz-Target names the operation: if the signature does not cover it, whoever holds a
  captured request (a log, a proxy) can send it again as another operation;
- a signed header, or Authorization / X-Amz-Date, sent twice: AWS joins repeated values
  with commas for the signature, the server reads one copy (and a proxy another).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timezone
from urllib.parse import urlsplit

import httpx

from kmsserve.auth import sigv4
from tests.serve.servecore import signed_request


def sign_pairs(url: str, key, pairs: list[tuple[str, str]], body: bytes, signed: list[str] | None = None,
               region: str = "eu-west-1") -> list[tuple[str, str]]:
    """Headers (repeats allowed) signed as SigV4 specifies for repeats (values joined by
    commas), over `signed` (default: every header sent)."""
    amz_date = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    payload = hashlib.sha256(body).hexdigest()
    pairs = [("host", urlsplit(url).netloc), *pairs, ("x-amz-date", amz_date), ("x-amz-content-sha256", payload)]
    names = signed or sorted({n.lower() for n, _ in pairs})
    scope = f"{amz_date[:8]}/{region}/kms/aws4_request"
    canonical = sigv4.canonical_request("POST", "/", "", pairs, names, payload)
    signature = hmac.new(sigv4._key(key.secret, amz_date[:8], region, "kms"),
                         sigv4._string_to_sign(amz_date, scope, canonical).encode(), hashlib.sha256).hexdigest()
    auth = f"{sigv4.ALGORITHM} Credential={key.access_key_id}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    return [*pairs, ("authorization", auth)]


def test_a_signature_that_does_not_cover_x_amz_target_is_refused(server):
    key = server.access_key()
    body = json.dumps({"NumberOfBytes": 16}).encode()
    # signed as botocore would, but without the operation; the operation added afterwards
    url, headers, _ = signed_request(server.url, key, "GenerateRandom", body)
    unsigned = dict(headers)
    del unsigned["X-Amz-Target"]
    pairs = sign_pairs(server.url, key, [("content-type", "application/x-amz-json-1.1")], body)
    pairs.append(("x-amz-target", "TrentService.GenerateRandom"))
    r = httpx.post(url, headers=pairs, content=body)
    assert r.status_code == 400, r.text
    assert r.json()["__type"] == "UnrecognizedClientException"
    # and a request that signs it still works
    r = httpx.post(url, headers=headers, content=body)
    assert r.status_code == 200, r.text


def test_a_signature_that_does_not_cover_content_type_is_refused(server):
    key = server.access_key()
    body = json.dumps({"NumberOfBytes": 16}).encode()
    pairs = sign_pairs(server.url, key, [("x-amz-target", "TrentService.GenerateRandom")], body)
    pairs.append(("content-type", "application/x-amz-json-1.1"))
    r = httpx.post(server.url + "/", headers=pairs, content=body)
    assert r.status_code == 400 and r.json()["__type"] == "UnrecognizedClientException", r.text


def test_a_signed_header_sent_twice_is_refused(server):
    key = server.access_key()
    body = json.dumps({"NumberOfBytes": 16}).encode()
    twice = [("content-type", "application/x-amz-json-1.1"), ("x-amz-target", "TrentService.GenerateRandom"),
             ("x-amz-target", "TrentService.CreateKey")]
    r = httpx.post(server.url + "/", headers=sign_pairs(server.url, key, twice, body), content=body)
    assert r.status_code == 400 and r.json()["__type"] == "UnrecognizedClientException", r.text
    once = sign_pairs(server.url, key, twice[:2], body)
    r = httpx.post(server.url + "/", headers=[*once, ("authorization", "AWS4-HMAC-SHA256 garbage")], content=body)
    assert r.status_code == 400 and r.json()["__type"] == "UnrecognizedClientException", r.text
    r = httpx.post(server.url + "/", headers=[*once, ("x-amz-date", "20000101T000000Z")], content=body)
    assert r.status_code == 400 and r.json()["__type"] == "UnrecognizedClientException", r.text
    r = httpx.post(server.url + "/", headers=once, content=body)
    assert r.status_code == 200, r.text  # the same request, each header once
