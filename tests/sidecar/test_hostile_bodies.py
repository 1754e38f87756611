"""Issue 9, item 5: no body a client (or upstream) sends can fill the proxy's memory.

One real `kms-proxy` process with the default buffer limit (16 MiB) in front of the
recording upstream; bodies come from real sockets and httpx. After each test the
proxy's peak RSS (VmHWM, the high-water mark of its whole life so far) must stay under
200 MiB, and it must still be serving. On the old code chunked bodies were buffered
without bound (413 only after GiBs), a 300 KB gzip body decoded to 256 MiB, a JSON body
of empty objects parsed into ~400 MiB and pass-through uploads were held whole.
"""

from __future__ import annotations

import gzip
import json
import os
import select
import socket
import zlib
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from proxyproc import MiB, ProxyProcess, write_config

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")

PEAK_LIMIT = 200 * MiB
LIMIT = 16 * MiB  # the default limits.max_buffered_body
FIELDS = '["user.ssn"]'
ROUTES = f'''
[[proxy.route]]
name = "fields"
match = {{ path = "/fields/*" }}
request = {{ action = "encrypt", key = "app/data", fields = {FIELDS} }}

[[proxy.route]]
name = "fields-down"
match = {{ path = "/store/f-*", methods = ["GET"] }}
response = {{ action = "decrypt", key = "app/data", fields = {FIELDS} }}

[[proxy.route]]
name = "reply-fields"
match = {{ path = "/reply/fields" }}
response = {{ action = "decrypt", key = "app/data", fields = {FIELDS} }}

[[proxy.route]]
name = "reply-body"
match = {{ path = "/reply/body" }}
response = {{ action = "decrypt", key = "app/data" }}

[[proxy.route]]
name = "sign"
match = {{ path = "/sign/*" }}
request = {{ action = "sign", key = "app/mac" }}

[[proxy.route]]
name = "verify"
match = {{ path = "/verify/*" }}
request = {{ action = "verify", key = "app/mac" }}

[[proxy.route]]
name = "store"
match = {{ path = "/store/e-*" }}
request = {{ action = "encrypt", key = "app/data" }}
'''


WORKERS = pytest.mark.parametrize("proxy", [1, 2], indirect=True, ids=["1-worker", "2-workers"])
"""The tests of this mark also run against 2 worker processes (issue 14); the memory
bound holds for each of them."""


@pytest.fixture(scope="module")
def proxy(kms, upstream, tmp_path_factory, request):
    listen = f"127.0.0.1:{free_port()}"
    cfg = write_config(tmp_path_factory.mktemp("hostile") / "deploy.toml", listen, upstream.url, ROUTES)
    p = ProxyProcess(kms.home, cfg, workers=getattr(request, "param", 1))
    p.url = f"http://{listen}"
    p.address = ("127.0.0.1", int(listen.rsplit(":", 1)[1]))
    yield p
    p.stop()


@pytest.fixture
def check_memory(proxy, upstream):
    upstream.clear()
    yield
    assert proxy.alive(), "".join(proxy.lines[-20:])
    peak = proxy.peak_rss()
    print(f"\nproxy peak RSS so far: {peak / MiB:.1f} MiB")
    assert peak < PEAK_LIMIT, f"proxy peak RSS {peak / MiB:.0f} MiB"
    with httpx.Client(base_url=proxy.url, timeout=30) as c:  # still serving
        r = c.post("/fields/ok", json={"user": {"ssn": "1"}})
        assert r.status_code == 200 and "khf1." in upstream.last().body.decode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        more = sock.recv(65536)
        assert more, f"connection closed without an answer ({buf[:200]!r})"
        buf += more
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    want = int(headers.get("content-length", "0"))
    while len(body) < want:
        more = sock.recv(65536)
        if not more:
            break
        body += more
    return status, headers, body[:want]


def send_endless_chunked(address, path: str, cap: int, extra: str = "") -> tuple[int, dict, bytes, int]:
    """POST a chunked JSON body that never ends (until `cap` bytes); stop as soon as the
    proxy answers. Returns (status, headers, body, bytes sent before the answer)."""
    block = b"a" * MiB
    sock = socket.create_connection(address)
    try:
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
                      "Transfer-Encoding: chunked\r\n\r\n").encode())
        sent = 0
        first = b'{"user":{"ssn":"' + b"a" * (MiB - 16)
        while sent < cap:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            data = first if sent == 0 else block
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(data)
        else:
            raise AssertionError(f"no answer after {sent >> 20} MiB of body: the proxy is buffering it")
        status, headers, body = read_response(sock)
        return status, headers, body, sent
    finally:
        sock.close()


@WORKERS
@pytest.mark.parametrize("path", ["/fields/x", "/sign/x", "/verify/x"])
def test_endless_chunked_body_is_refused_early_with_413(proxy, upstream, check_memory, path):
    """Fields, sign and verify need the whole body: a chunked one is refused as soon as
    it passes the limit (a verify route needs no valid signature to get there)."""
    status, headers, body, sent = send_endless_chunked(proxy.address, path, cap=512 * MiB)
    assert status == 413 and headers["x-keyhold-error"] == "too_large"
    assert json.loads(body)["error"]["reason"] == "too_large"
    assert sent < LIMIT + 64 * MiB  # answered near the limit (kernel buffers add some)
    assert not [r for r in upstream.received if r.path == path]


@WORKERS
def test_declared_length_over_limit_is_refused_before_the_body(proxy, upstream, check_memory):
    sock = socket.create_connection(proxy.address)
    try:
        sock.sendall(f"POST /fields/big HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {8 << 30}\r\n\r\n".encode() + b'{"user":{"ssn":"' + b"a" * 65536)
        status, headers, _ = read_response(sock)
    finally:
        sock.close()
    assert status == 413 and headers["connection"] == "close"


def bomb(encoding: str, size: int = 256 * MiB) -> bytes:
    zeros = b"\0" * MiB
    if encoding in ("gzip", "deflate"):
        c = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
        out = b"".join(c.compress(zeros) for _ in range(size // MiB)) + c.flush()
        return out
    if encoding == "br":
        import brotli

        return brotli.compress(b"\0" * size, quality=1)
    try:
        from compression import zstd
    except ImportError:
        from backports import zstd
    return zstd.compress(b"\0" * size)


@WORKERS
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_compression_bomb_on_a_fields_route_is_413(proxy, upstream, check_memory, encoding):
    data = bomb(encoding)
    assert len(data) < LIMIT
    with httpx.Client(base_url=proxy.url, timeout=60) as c:
        r = c.post("/fields/bomb", content=data,
                   headers={"content-type": "application/json", "content-encoding": encoding})
    assert r.status_code == 413 and r.json()["error"]["reason"] == "too_large"
    assert upstream.received == []


def test_compressed_fields_body_still_round_trips(proxy, upstream, check_memory):
    doc = {"user": {"ssn": "078-05-1120"}, "pad": "x" * 5000}
    with httpx.Client(base_url=proxy.url, timeout=60) as c:
        r = c.post("/fields/gz", content=gzip.compress(json.dumps(doc).encode()),
                   headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert r.status_code == 200
    sent = json.loads(gzip.decompress(upstream.last().body))
    assert sent["user"]["ssn"].startswith("khf1.") and sent["pad"] == doc["pad"]


def test_json_that_parses_into_millions_of_objects_is_413(proxy, upstream, check_memory):
    """16 MiB of `{},` is 5.6 M dicts (~400 MiB in Python): refused before parsing."""
    body = b'{"user":{"ssn":"1"},"x":[' + b"{}," * (5 * MiB) + b"{}]}"
    assert len(body) < LIMIT
    with httpx.Client(base_url=proxy.url, timeout=60) as c:
        r = c.post("/fields/many", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and upstream.received == []


def test_endless_chunked_upstream_response_on_a_fields_route_is_502(proxy, upstream, check_memory):
    """The upstream is not trusted with memory either: its chunked response to a fields
    route is cut at the limit, the client gets a JSON 502."""
    (upstream.dir / "f-huge").write_bytes(b'{"user":{"ssn":"' + b"a" * (300 * MiB))
    (upstream.dir / "f-huge.type").write_text("application/json")
    (upstream.dir / "f-huge.meta").write_text("{}")
    try:
        with httpx.Client(base_url=proxy.url, timeout=60) as c:
            r = c.get("/store/f-huge")
        assert r.status_code == 502 and r.json()["error"]["reason"] == "too_large"
        assert b"aaaa" not in r.content
    finally:
        (upstream.dir / "f-huge").unlink()


def test_gzip_bomb_from_upstream_on_a_fields_route_is_502(proxy, upstream, check_memory):
    upstream.reply = (bomb("gzip"), "application/json", {"Content-Encoding": "gzip"})
    try:
        with httpx.Client(base_url=proxy.url, timeout=60) as c:
            r = c.get("/reply/fields", headers={"accept-encoding": "identity"})
        assert r.status_code == 502 and r.json()["error"]["reason"] == "too_large"
    finally:
        upstream.reply = (b'{"ok":true}', "application/json", {})


def test_pass_through_bodies_stream_instead_of_buffering(proxy, upstream, check_memory):
    """A path no route matches: 300 MiB go through, and the proxy never holds them."""
    block = os.urandom(MiB)

    def gen():
        for _ in range(300):
            yield block

    with httpx.Client(base_url=proxy.url, timeout=120) as c:
        r = c.post("/nothing/here", content=gen(), headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200
    assert [x.length for x in upstream.received if x.path == "/nothing/here"] == [300 * MiB]


def test_small_bodies_on_the_same_routes_still_work(proxy, upstream, check_memory):
    with httpx.Client(base_url=proxy.url, timeout=60) as c:
        r = c.post("/sign/small", content=b"hello", headers={"content-type": "text/plain"})
        assert r.status_code == 200 and "signature" in upstream.last().headers
        def gen():
            yield b'{"user":'
            yield b'{"ssn":"078-05-1120"}}'
        r = c.post("/fields/chunked", content=gen(), headers={"content-type": "application/json"})
        assert r.status_code == 200 and json.loads(upstream.last().body)["user"]["ssn"].startswith("khf1.")


def test_large_responses_with_a_content_length_still_stream(proxy, upstream, check_memory, kms):
    """A declared length over the limit refuses only bodies that must be buffered: a
    pass-through download and a whole-body decryption of 48 MiB go through."""
    from sidecar import bodies

    data = os.urandom(48 * MiB)
    try:
        upstream.reply = (data, "application/octet-stream", {})
        with httpx.Client(base_url=proxy.url, timeout=120) as c:
            r = c.get("/reply/raw")
            assert r.status_code == 200 and r.content == data
            upstream.reply = (bodies.seal_all(kms, "app/data", data, 65536, {"content-type": "video/mp4"}),
                              "application/vnd.keyhold.envelope", {})
            r = c.get("/reply/body")
            assert r.status_code == 200 and r.headers["content-type"] == "video/mp4" and r.content == data
    finally:
        upstream.reply = (b'{"ok":true}', "application/json", {})
