"""Whole-body encryption as envelopes: buffered and streamed, round trips, fail closed."""

from __future__ import annotations

import gzip
import hashlib
import os
import time

import httpx
import pytest
pytest.importorskip("kmscore.envelope", reason="the envelope format (kmscore.envelope) is not installed")
from conftest import LIMIT, error_of

from sidecar import bodies

ENV = "application/vnd.keyhold.envelope"


def test_store_then_fetch_restores_bytes_and_type(client, upstream):
    data = os.urandom(5000)
    r = client.put("/store/small", content=data, headers={"content-type": "image/png"})
    assert r.status_code == 201
    rec = upstream.last()
    assert rec.headers["content-type"] == ENV and rec.headers["x-keyhold-content-type"] == "image/png"
    assert data not in rec.body and len(rec.body) > len(data)
    r = client.get("/store/small")
    assert r.status_code == 200 and r.content == data and r.headers["content-type"] == "image/png"
    assert "x-keyhold-content-type" not in r.headers


def test_streamed_round_trip_chunked_both_ways(client, upstream):
    block = os.urandom(256 * 1024)
    n = 12  # 3 MiB, well over the 64 KiB buffering limit: streams
    def gen():
        for _ in range(n):
            yield block
    r = client.post("/store/big", content=gen(), headers={"content-type": "application/octet-stream"})
    assert r.status_code == 201
    rec = upstream.last()
    assert rec.headers.get("transfer-encoding") == "chunked" and "content-length" not in rec.headers
    assert rec.headers["content-type"] == ENV and rec.length > n * len(block)
    h = hashlib.sha256()
    with client.stream("GET", "/store/big") as resp:
        assert resp.headers["content-type"] == "application/octet-stream"
        assert resp.headers.get("transfer-encoding") == "chunked"
        for chunk in resp.iter_raw():
            h.update(chunk)
    assert h.digest() == hashlib.sha256(block * n).digest()


def test_known_length_over_limit_streams_too(client, upstream):
    data = os.urandom(LIMIT * 3)
    assert client.put("/store/known", content=data).status_code == 201
    assert upstream.last().headers.get("transfer-encoding") == "chunked"
    assert client.get("/store/known").content == data


def test_echo_encrypts_up_and_decrypts_down(client, upstream):
    r = client.post("/body", content=b'{"a":1}', headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.content == b'{"a":1}' and r.headers["content-type"] == "application/json"
    assert b'"a"' not in upstream.last().body


def test_content_encoding_travels_inside(client, upstream):
    raw = gzip.compress(b"hello " * 100)
    client.put("/store/gz", content=raw, headers={"content-type": "text/plain", "content-encoding": "gzip"})
    assert "content-encoding" not in upstream.last().headers
    r = client.get("/store/gz", headers={"accept-encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip" and r.text == "hello " * 100


def test_empty_body_passes(client, upstream):
    r = client.post("/body", content=b"")
    assert r.status_code == 200 and upstream.last().length == 0


def test_envelope_decrypts_with_kmscore_alone(client, upstream, kms):
    data = os.urandom(70000)
    client.put("/store/third", content=data)
    stored = (upstream.dir / "third").read_bytes()
    assert bodies.open_all(kms, stored) == data


def test_malformed_envelopes_fail_closed(client, upstream, kms):
    good = bodies.seal_all(kms, "app/data", b"secret" * 100, 4096)
    flipped = bytearray(good)
    flipped[-20] ^= 1
    cases = {
        "garbage": b"not an envelope at all, no no",
        "flipped": bytes(flipped),
        "truncated": good[:-10],
        "header only": good[:40],
    }
    for name, body in cases.items():
        r = client.post("/dec-body", content=body, headers={"content-type": ENV})
        assert r.status_code == 422, name
        assert error_of(r)["rule"] == "dec-body", name
    other = bodies.seal_all(kms, "app/other", b"secret" * 100, 4096)
    r = client.post("/dec-body", content=other, headers={"content-type": ENV})
    assert r.status_code == 422 and "this rule's key" in error_of(r)["message"]
    r = client.post("/dec-body", content=good, headers={"content-type": "text/plain"})
    assert r.status_code == 422 and "not a keyhold envelope" in error_of(r)["message"]
    assert upstream.received == []
    typed = bodies.seal_all(kms, "app/data", b"secret" * 100, 4096, {"content-type": "text/plain"})
    r = client.post("/dec-body", content=typed, headers={"content-type": ENV, "x-keyhold-content-type": "text/x"})
    assert r.status_code == 200 and upstream.last().body == b"secret" * 100
    assert upstream.last().headers["content-type"] == "text/plain"  # the envelope's (v2), not the hint


def test_bad_envelope_from_upstream_is_502(client, upstream):
    upstream.reply = (b"KHEV" + b"\x00" * 60, ENV, {})
    r = client.get("/reply/body")
    assert r.status_code == 502 and error_of(r)["direction"] == "response"


def test_plaintext_from_upstream_where_envelope_expected_is_502(client, upstream):
    upstream.reply = (b'{"leak":1}', "application/json", {})
    r = client.get("/reply/body")
    assert r.status_code == 502 and b"leak" not in r.content


def test_streamed_tampered_download_is_cut_off(client, upstream):
    data = os.urandom(LIMIT * 4)
    client.put("/store/tamper", content=data)
    path = upstream.dir / "tamper"
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 1  # inside the last frame
    path.write_bytes(bytes(blob))
    got = bytearray()
    try:
        with client.stream("GET", "/store/tamper") as resp:
            for chunk in resp.iter_raw():
                got += chunk
        complete = True
    except httpx.HTTPError:
        complete = False
    assert not complete  # the client sees a broken message, never a silently wrong one
    assert bytes(got) == data[: len(got)] and len(got) < len(data)


def test_disabled_key_stops_decryption(client, upstream, kms):
    """A body sealed under a key that is then disabled is not decrypted any more."""
    sealed = bodies.seal_all(kms, "app/off", b"top secret", 4096)
    upstream.reply = (sealed, ENV, {bodies.ORIG_TYPE: "text/plain"})
    assert client.get("/reply/off").content == b"top secret"
    kms.disable_key("app/off")
    try:
        deadline = time.monotonic() + 30
        while True:  # the data-key cache forgets a revoked key within its revocation bound
            r = client.get("/reply/off")
            if r.status_code != 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 503 and error_of(r)["reason"] == "key_unavailable"
        assert b"top secret" not in r.content
    finally:
        kms.enable_key("app/off")


def test_response_encryption(client, upstream, kms):
    upstream.reply = (b'{"card":"4111"}', "application/json", {})
    r = client.get("/reply/enc")
    assert r.status_code == 200 and r.headers["content-type"] == ENV
    assert r.headers[bodies.ORIG_TYPE] == "application/json" and b"4111" not in r.content
    assert bodies.open_all(kms, r.content) == b'{"card":"4111"}'
