"""Issue 9, item 11: the original Content-Type/-Encoding travel inside the envelope.

An object store keeps only the body and its Content-Type: the X-Keyhold-* headers are
gone when the body is read back, and anyone on the path can rewrite them. Version-2
envelopes carry both as authenticated metadata; the sidecar restores them from there,
for buffered and streamed bodies alike (a stream starts once the envelope header is in).
Version-1 envelopes (no metadata) keep decrypting, with the hints as before.
"""

from __future__ import annotations

import gzip
import hashlib
import os

import httpx
import pytest

from conftest import LIMIT

from kmscore.envelope import Header, StreamEncryptor, new_envelope

ENV = "application/vnd.keyhold.envelope"


def drop_hints(upstream, name: str, **replace: str) -> None:
    """What an object store does: forget the X-Keyhold-* headers (or, with `replace`,
    what a party on the path does: change them)."""
    (upstream.dir / name).with_suffix(".meta").write_text(repr(dict(replace)))


def test_an_object_store_that_drops_the_hints_still_gets_type_and_encoding_back(client, upstream):
    raw = gzip.compress(b"<svg/>" * 200)
    r = client.put("/store/logo", content=raw, headers={"content-type": "image/svg+xml", "content-encoding": "gzip"})
    assert r.status_code == 201
    stored = upstream.dir / "logo"
    assert Header.decode(stored.read_bytes()).metadata == {"content-type": "image/svg+xml", "content-encoding": "gzip"}
    drop_hints(upstream, "logo")
    r = client.get("/store/logo", headers={"accept-encoding": "gzip"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml"
    assert r.headers["content-encoding"] == "gzip" and r.content == b"<svg/>" * 200
    assert not any(h.startswith("x-keyhold-content") for h in r.headers)


def test_hints_changed_on_the_path_do_not_change_what_the_client_gets(client, upstream):
    client.put("/store/pic", content=os.urandom(2000), headers={"content-type": "image/png"})
    drop_hints(upstream, "pic", **{"X-Keyhold-Content-Type": "text/html", "X-Keyhold-Content-Encoding": "gzip"})
    r = client.get("/store/pic")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert "content-encoding" not in r.headers


def test_a_body_without_type_comes_back_without_one(client, upstream):
    client.put("/store/untyped", content=b"plain bytes")
    drop_hints(upstream, "untyped", **{"X-Keyhold-Content-Type": "text/html"})
    r = client.get("/store/untyped")
    assert r.content == b"plain bytes" and "content-type" not in r.headers


def big(n: int = 4 * LIMIT) -> bytes:
    return hashlib.shake_256(b"ct").digest(n)


def test_streamed_body_with_its_hints_round_trips(client, upstream):
    data = big()
    assert client.put("/store/video", content=data, headers={"content-type": "video/mp4"}).status_code == 201
    assert Header.decode((upstream.dir / "video").read_bytes()).metadata == {"content-type": "video/mp4"}
    r = client.get("/store/video")
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4" and r.content == data


def test_streamed_body_whose_hints_were_changed_or_dropped_gets_the_envelopes_type(client, upstream):
    """Streamed (over the buffer limit, chunked from the store), the response headers
    leave only once the envelope header is read: its metadata decides, not the hints."""
    data = big()
    client.put("/store/video2", content=data, headers={"content-type": "video/mp4"})
    for hints in ({"X-Keyhold-Content-Type": "text/html"}, {}):
        drop_hints(upstream, "video2", **hints)
        with client.stream("GET", "/store/video2") as r:
            assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
            assert r.headers.get("transfer-encoding") == "chunked"
            assert b"".join(r.iter_raw()) == data


@pytest.mark.parametrize("size", [100, 4 * LIMIT])
def test_version_1_envelopes_keep_decrypting_with_their_hints(client, upstream, kms, size):
    """What the sidecar wrote before version 2: a v1 envelope and X-Keyhold-* headers."""
    data = os.urandom(size)
    header, cipher = new_envelope(kms, "app/data", 4096)
    assert header.version == 1
    enc = StreamEncryptor(cipher)
    (upstream.dir / "old").write_bytes(header.encode() + enc.update(data) + enc.finalize())
    (upstream.dir / "old.type").write_text(ENV)
    drop_hints(upstream, "old", **{"X-Keyhold-Content-Type": "text/csv"})
    r = client.get("/store/old")
    assert r.status_code == 200 and r.content == data and r.headers["content-type"] == "text/csv"
