"""Hostile clients and upstreams against a real `kms proxy` process (issue 9, items 1, 4,
7, 9, 10): nothing a peer does kills the process, upgrades and HTTP/2 that would skip a
rule are refused, HTTP/1.0 bodies are never forwarded as something else, every refusal
is a JSON error that is logged, and decrypted responses carry no stale validators.

Clients are real: curl, httpx, websockets, and raw sockets for what libraries won't send.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import time

import httpx
import pytest
from conftest import free_port
from proxyproc import start_proxy, start_up
from rude import RudeUpstream

pytest.importorskip("kmscore.envelope", reason="the envelope format (kmscore.envelope) is not installed")

LIMIT = 64 * 1024
BIG = 4 * 1024 * 1024


def config(upstream_url: str, rude_url: str, main: int, rude: int) -> str:
    return f'''
[[proxy]]
name = "main"
listen = "127.0.0.1:{main}"
upstream = "{upstream_url}"
limits = {{ max_buffered_body = {LIMIT} }}

[[proxy.route]]
name = "store-put"
match = {{ path = "/store/*", methods = ["PUT", "POST"] }}
request = {{ action = "encrypt", key = "app/data" }}

[[proxy.route]]
name = "store-get"
match = {{ path = "/store/*", methods = ["GET", "HEAD"] }}
response = {{ action = "decrypt", key = "app/data" }}

[[proxy.route]]
name = "fields"
match = {{ path = "/fields*" }}
request = {{ action = "encrypt", key = "app/data", fields = ["user.ssn"] }}

[[proxy.route]]
name = "sign"
match = {{ path = "/sign*" }}
request = {{ action = "sign", key = "app/mac" }}

[[proxy]]
name = "rude"
listen = "127.0.0.1:{rude}"
upstream = "{rude_url}"
limits = {{ max_buffered_body = {LIMIT} }}

[[proxy.route]]
name = "rude-decrypt"
match = {{ path = "/dec/*" }}
response = {{ action = "decrypt", key = "app/data" }}
'''


@pytest.fixture(scope="module")
def rude():
    r = RudeUpstream(b"application/vnd.keyhold.envelope")
    yield r
    r.close()


@pytest.fixture(scope="module")
def proxy(kms, upstream, rude, tmp_path_factory):
    ports = free_port(), free_port()
    p = start_proxy(tmp_path_factory.mktemp("hostile") / "deploy.toml", kms.home,
                    config(upstream.url, rude.url, *ports))
    p.main, p.rude = (f"http://127.0.0.1:{port}" for port in ports)
    p.ports = ports
    yield p
    p.stop()


@pytest.fixture(scope="module")
def stored(proxy, upstream):
    """A BIG body stored encrypted at /store/big, and its plaintext."""
    body = bytes(range(256)) * (BIG // 256)
    r = httpx.put(f"{proxy.main}/store/big", content=body, headers={"content-type": "application/octet-stream"},
                  timeout=60)
    assert r.status_code == 201, r.text
    return body


def serving(p, url: str) -> bool:
    """The proxy process is alive and still answers a plain request."""
    if not p.alive():
        return False
    r = httpx.post(f"{url}/echo", content=b"ping", timeout=30)
    return r.status_code == 200 and r.content == b"ping"


def raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    return s


def reset(s: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


# -- item 1: no client or upstream kills the process ----------------------------------------
def test_curl_piped_into_head_does_not_kill_the_proxy(proxy, stored):
    """The reproduction of the issue: `curl -s URL | head -c 1000`, several times."""
    for _ in range(6):
        out = subprocess.run(["sh", "-c", f"curl -s {proxy.main}/store/big | head -c 1000"],
                             capture_output=True, timeout=60).stdout
        assert out == stored[:1000]
    assert serving(proxy, proxy.main), proxy.log
    assert "Traceback" not in proxy.log


def test_curl_piped_into_head_does_not_kill_kms_up(kms, upstream, rude, stored, tmp_path):
    port = free_port()
    text = config(upstream.url, rude.url, port, free_port())
    up = start_up(tmp_path / "deploy.toml", kms.home, text)
    try:
        for _ in range(6):
            out = subprocess.run(["sh", "-c", f"curl -s http://127.0.0.1:{port}/store/big | head -c 1000"],
                                 capture_output=True, timeout=60).stdout
            assert out == stored[:1000]
        assert serving(up, f"http://127.0.0.1:{port}"), up.log
    finally:
        assert up.stop() == 0, up.log


@pytest.mark.parametrize("close", [socket.socket.close, reset], ids=["fin", "rst"])
@pytest.mark.parametrize("path,framing", [
    ("/store/cut", "content-length"),  # streamed encrypt
    ("/store/cut", "chunked"),
    ("/fields", "content-length"),  # buffered fields rule
    ("/echo", "content-length"),  # no rule
])
def test_client_gone_mid_request_body(proxy, upstream, path, framing, close):
    s = raw(proxy.ports[0])
    head = f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if framing == "chunked" else f"Content-Length: {BIG}\r\n\r\n"
    s.sendall(head.encode() + (b"4000\r\n" if framing == "chunked" else b"") + b"{" * 5000)
    close(s)
    assert serving(proxy, proxy.main), proxy.log
    assert not any(r.path == path and r.length >= BIG for r in upstream.received)


@pytest.mark.parametrize("close", [socket.socket.close, reset], ids=["fin", "rst"])
def test_client_gone_mid_response(proxy, stored, close):
    s = raw(proxy.ports[0])
    s.sendall(b"GET /store/big HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while len(got) < 100_000:
        got += s.recv(65536)
    close(s)
    assert serving(proxy, proxy.main), proxy.log


def test_slow_client_gets_everything(proxy, stored):
    """A client that sends its request a few bytes at a time and reads the response in
    small sips, pausing, still gets the whole decrypted body."""
    s = raw(proxy.ports[0])
    for part in (b"GET /store/b", b"ig HTTP/1.1\r\n", b"Host: x\r\n", b"Connection: close\r\n", b"\r\n"):
        s.sendall(part)
        time.sleep(0.05)
    data = bytearray()
    while chunk := s.recv(4096):
        data += chunk
        if len(data) < 64 * 1024:
            time.sleep(0.01)
    s.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert _dechunk(body) == stored
    assert serving(proxy, proxy.main)


def _dechunk(body: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += body[end + 2:end + 2 + size]
        pos = end + 4 + size


@pytest.mark.parametrize("path", ["/die/1000", "/rst/1000", "/chunked/1000", "/dec/die/100000",
                                  "/dec/rst/100000", "/dec/chunked/5"])
def test_upstream_dying_mid_response(proxy, path):
    """The client sees a cut-off response or a JSON 502 (never a complete-looking 200);
    the proxy lives."""
    try:
        with httpx.stream("GET", f"{proxy.rude}{path}", timeout=30) as r:
            for _ in r.iter_raw():
                pass
    except httpx.HTTPError:
        pass
    else:
        assert r.status_code == 502 and r.headers["x-keyhold-error"] == "upstream_failed"
    assert serving(proxy, proxy.main), proxy.log
    assert "Traceback" not in proxy.log
