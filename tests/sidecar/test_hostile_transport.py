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
from transport_proc import start_proxy, start_up
from rude import RudeUpstream

pytest.importorskip("kmscore.envelope", reason="the envelope format (kmscore.envelope) is not installed")

LIMIT = 64 * 1024
BIG = 4 * 1024 * 1024


def config(upstream_url: str, rude_url: str, main: int, rude: int, forward: int | None = None) -> str:
    fwd = "" if forward is None else f'''
[[proxy]]
name = "forward"
mode = "forward"
listen = "127.0.0.1:{forward}"

[[proxy.route]]
name = "fwd-store"
match = {{ host = "127.0.0.1", path = "/store/*" }}
request = {{ action = "encrypt", key = "app/data" }}
'''
    return fwd + f'''
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

[[proxy.route]]
name = "reply-body"
match = {{ path = "/reply/body" }}
response = {{ action = "decrypt", key = "app/data" }}

[[proxy.route]]
name = "ws-open"
match = {{ path = "/ws-open*" }}
request = {{ action = "encrypt", key = "app/data" }}
allow_upgrade = true

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


WORKERS = pytest.mark.parametrize("proxy", [1, 2], indirect=True, ids=["1-worker", "2-workers"])
"""The tests of this mark also run against a proxy of 2 worker processes (issue 14)."""


@pytest.fixture(scope="module")
def proxy(kms, upstream, rude, tmp_path_factory, request):
    ports = free_port(), free_port(), free_port()
    p = start_proxy(tmp_path_factory.mktemp("hostile") / "deploy.toml", kms.home,
                    config(upstream.url, rude.url, *ports), workers=getattr(request, "param", 1))
    p.main, p.rude, p.forward = (f"http://127.0.0.1:{port}" for port in ports)
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
@WORKERS
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
        r = httpx.post(f"http://127.0.0.1:{port}/fields", content=b"not json", timeout=30)
        assert r.status_code == 422
        assert "rule=fields" in up.wait_for(f"refused request={r.headers['x-keyhold-request-id']}")
    finally:
        assert up.stop() == 0, up.log


@pytest.mark.parametrize("close", [socket.socket.close, reset], ids=["fin", "rst"])
@pytest.mark.parametrize("path,framing", [
    ("/store/cut", "content-length"),  # streamed encrypt
    ("/store/cut", "chunked"),
    ("/fields", "content-length"),  # buffered fields rule
    ("/sign", "content-length"),  # buffered sign rule
    ("/echo", "content-length"),  # no rule
])
def test_client_gone_mid_request_body(proxy, upstream, path, framing, close):
    """Nothing that looks like a whole body reaches the upstream (it records only bodies
    that arrived complete), and the proxy serves on."""
    path = f"{path}-{framing}-{close.__name__}"
    s = raw(proxy.ports[0])
    head = f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if framing == "chunked" else f"Content-Length: {BIG}\r\n\r\n"
    s.sendall(head.encode() + (b"4000\r\n" if framing == "chunked" else b"") + b"{" * 5000)
    close(s)
    assert serving(proxy, proxy.main), proxy.log
    assert not any(r.path == path for r in upstream.received)


@WORKERS
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
@WORKERS
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
        # a decrypt route buffers the start of a body (sidecar.bodylimit): what arrived is
        # not an envelope (bad_body) before the upstream is seen to die (upstream_failed)
        assert r.status_code == 502 and r.headers["x-keyhold-error"] in (
            ("upstream_failed", "bad_body") if path.startswith("/dec/") else ("upstream_failed",))
    assert serving(proxy, proxy.main), proxy.log
    assert "Traceback" not in proxy.log


def recv_all(s: socket.socket) -> bytes:
    data = bytearray()
    while chunk := s.recv(65536):
        data += chunk
    return bytes(data)


def json_error(raw_response: bytes) -> tuple[int, dict, dict]:
    """(status, lower-cased headers, error object) of a raw HTTP/1 error response."""
    head, _, body = raw_response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers.get("content-type") == "application/json", raw_response[:300]
    return int(lines[0].split()[1]), headers, json.loads(body)["error"]


# -- item 4: upgrades, CONNECT tunnels, HTTP/2 prior knowledge --------------------------------
@WORKERS
def test_websocket_upgrade_on_a_route_with_a_step_is_refused(proxy, upstream):
    websockets = pytest.importorskip("websockets.sync.client")
    upstream.clear()
    with pytest.raises(Exception) as caught:
        websockets.connect(f"ws://127.0.0.1:{proxy.ports[0]}/store/ws", open_timeout=30)
    response = caught.value.response
    assert response.status_code == 403
    assert response.headers["X-Keyhold-Error"] == "upgrade_refused"
    assert "allow_upgrade" in json.loads(response.body)["error"]["message"]
    assert not any(r.path == "/store/ws" for r in upstream.received)


def test_websocket_upgrade_passes_where_the_route_allows_it(proxy, upstream):
    """allow_upgrade = true: the upgrade request reaches the upstream (which is no
    WebSocket server, so the handshake itself then fails there)."""
    websockets = pytest.importorskip("websockets.sync.client")
    upstream.clear()
    with pytest.raises(Exception):
        websockets.connect(f"ws://127.0.0.1:{proxy.ports[0]}/ws-open", open_timeout=30)
    assert any(r.path == "/ws-open" and r.headers.get("upgrade") == "websocket" for r in upstream.received)


@pytest.mark.parametrize("upgrade", ["h2c", "websocket", "anything/1"])
def test_any_upgrade_header_on_a_route_with_a_step_is_refused(proxy, upstream, upgrade):
    upstream.clear()
    r = httpx.put(f"{proxy.main}/store/up", content=b"plaintext",
                  headers={"Connection": "Upgrade, HTTP2-Settings", "Upgrade": upgrade, "HTTP2-Settings": ""},
                  timeout=30)
    assert r.status_code == 403 and r.headers["x-keyhold-error"] == "upgrade_refused"
    assert not any(r.path == "/store/up" for r in upstream.received)


def test_upstream_switching_protocols_unasked_on_a_route_with_a_step_is_refused(proxy):
    """mitmproxy pipes a connection raw after any 101: on a route with a rule it must not."""
    r = httpx.get(f"{proxy.rude}/dec/switch", timeout=30)
    assert r.status_code == 502 and r.headers["x-keyhold-error"] == "upgrade_refused"
    assert b"raw bytes" not in r.content


def test_http2_prior_knowledge_gets_a_goaway_that_says_why(proxy, upstream):
    upstream.clear()
    s = raw(proxy.ports[0])
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    data = recv_all(s)
    s.close()
    frames = []
    while data:
        length = int.from_bytes(data[:3], "big")
        frames.append((data[3], data[9:9 + length]))
        data = data[9 + length:]
    goaway = [payload for kind, payload in frames if kind == 0x7]
    assert goaway, frames
    assert int.from_bytes(goaway[0][4:8], "big") == 0xD  # HTTP_1_1_REQUIRED
    assert b"HTTP/2 without TLS" in goaway[0][8:]
    assert upstream.received == []
    assert serving(proxy, proxy.main)


def test_curl_http2_prior_knowledge_gets_a_clear_error(proxy):
    r = subprocess.run(["curl", "-sv", "--http2-prior-knowledge", f"{proxy.main}/store/x", "-d", "plaintext"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "GOAWAY, error=13" in r.stderr, r.stderr  # 13 = HTTP_1_1_REQUIRED
    line = proxy.wait_for("reason=http2_prior_knowledge")
    assert " refused request=" in line


def test_http2_over_tls_runs_through_the_rules(proxy, upstream, tmp_path):
    """HTTP/2 (ALPN h2 on a TLS connection to the reverse listener, curl as the client) is
    transformed like HTTP/1.1: buffered and streamed bodies reach the upstream encrypted."""
    upstream.clear()
    url = f"https://127.0.0.1:{proxy.ports[0]}"
    (tmp_path / "small").write_bytes(b"plaintext h2")
    (tmp_path / "big").write_bytes(b"p" * LIMIT * 4)
    for name in ("small", "big"):
        r = subprocess.run(["curl", "-sk", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                            "-H", "content-type: text/plain", "-T", str(tmp_path / name), f"{url}/store/h2-{name}"],
                           capture_output=True, text=True, timeout=30)
        assert r.stdout == "2 201", r.stdout + r.stderr + proxy.log[-3000:]
        seen = next(x for x in upstream.received if x.path == f"/store/h2-{name}")
        assert seen.headers["content-type"] == "application/vnd.keyhold.envelope"
        assert seen.length > (tmp_path / name).stat().st_size  # the whole body, encrypted
        assert b"plaintext" not in (seen.body or b"") and b"pppp" not in (seen.body or b"")
    got = subprocess.run(["curl", "-sSk", "--http2", f"{url}/store/h2-big"], capture_output=True, timeout=30)
    assert got.stdout == b"p" * LIMIT * 4, got.stderr + proxy.log[-3000:].encode()


def _connect(proxy, upstream) -> socket.socket:
    s = raw(proxy.ports[2])
    s.sendall(f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return s


def test_connect_tunnel_carries_requests_through_the_rules(proxy, upstream):
    upstream.clear()
    s = _connect(proxy, upstream)
    s.sendall(b"PUT /store/tunnel HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 9\r\nConnection: close\r\n\r\n"
              b"plaintext")
    assert recv_all(s).startswith(b"HTTP/1.1 201")
    s.close()
    seen = [r for r in upstream.received if r.path == "/store/tunnel"]
    assert seen and seen[0].headers["content-type"] == "application/vnd.keyhold.envelope"
    assert b"plaintext" not in seen[0].body


@WORKERS
def test_connect_tunnel_with_bytes_that_do_not_look_like_http_is_never_relayed(proxy, rude):
    """A request after an empty line is not HTTP to mitmproxy's sniffer (which relayed
    such a tunnel as raw TCP, past every rule) but is to many servers: it must be parsed
    as HTTP (and the rule applied) or refused, never relayed."""
    rude.seen.clear()
    s = raw(proxy.ports[2])
    s.sendall(f"CONNECT 127.0.0.1:{rude.port} HTTP/1.1\r\nHost: 127.0.0.1:{rude.port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    s.sendall(b"\r\nPUT /store/tunnel2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 9\r\n\r\nplaintext")
    s.settimeout(5)
    try:
        s.recv(65536)
    except OSError:
        pass
    s.close()
    assert b"plaintext" not in rude.seen


# -- item 7: HTTP/1.0 bodies ----------------------------------------------------------------
def test_http10_body_over_the_limit_is_streamed_encrypted(proxy, upstream, kms):
    upstream.clear()
    body = b"0123456789abcdef" * (4 * LIMIT // 16)
    s = raw(proxy.ports[0])
    s.sendall(b"PUT /store/h10 HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    out = recv_all(s)
    s.close()
    assert out.startswith((b"HTTP/1.0 201", b"HTTP/1.1 201")), out[:200]
    seen = [r for r in upstream.received if r.path == "/store/h10"]
    assert len(seen) == 1 and seen[0].length > len(body)
    assert seen[0].headers["content-type"] == "application/vnd.keyhold.envelope"
    assert httpx.get(f"{proxy.main}/store/h10", timeout=30).content == body


@WORKERS
def test_http10_body_without_length_is_refused_with_411(proxy, upstream):
    upstream.clear()
    s = raw(proxy.ports[0])
    s.sendall(b"PUT /store/h10-nolen HTTP/1.0\r\nContent-Type: text/plain\r\n\r\nplaintext")
    status, headers, error = json_error(recv_all(s))
    s.close()
    assert status == 411 and error["reason"] == "length_required"
    assert not any(r.path.startswith("/store/h10-nolen") or b"plaintext" in (r.body or b"")
                   for r in upstream.received)


@pytest.mark.parametrize("path", ["/fields", "/sign"])
def test_http10_body_over_the_limit_on_a_buffering_rule_is_refused_with_413(proxy, upstream, path):
    upstream.clear()
    body = b'{"user": {"ssn": "' + b"1" * (2 * LIMIT) + b'"}}'
    s = raw(proxy.ports[0])
    s.sendall(b"POST %s HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
              % (path.encode(), len(body)) + body)
    status, headers, error = json_error(recv_all(s))
    s.close()
    assert status == 413 and error["reason"] == "too_large"
    assert not any(r.path == path for r in upstream.received)


def test_http10_client_gets_a_streamed_decrypt_response_unchunked(proxy, stored):
    s = raw(proxy.ports[0])
    s.sendall(b"GET /store/big HTTP/1.0\r\n\r\n")
    head, _, body = recv_all(s).partition(b"\r\n\r\n")
    s.close()
    assert head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))
    assert b"transfer-encoding" not in head.lower()
    assert body == stored


# -- item 9: errors and logs ------------------------------------------------------------------
def test_upstream_down_is_a_json_error_without_banner(kms, tmp_path):
    port = free_port()
    p = start_proxy(tmp_path / "deploy.toml", kms.home,
                    f'[[proxy]]\nlisten = "127.0.0.1:{port}"\nupstream = "http://127.0.0.1:{free_port()}"\n')
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/anything", timeout=30)
        assert r.status_code == 502 and r.headers["x-keyhold-error"] == "upstream_failed"
        assert r.json()["error"]["reason"] == "upstream_failed"
        assert "mitmproxy" not in r.headers.get("server", "") and b"<html" not in r.content
        line = p.wait_for("reason=upstream")
        assert "request=" in line and "path=/anything" in line
        # the same over HTTP/2 (TLS to the listener): a JSON body, no mitmproxy banner
        h2 = subprocess.run(["curl", "-sk", "--http2", "-D", "-", f"https://127.0.0.1:{port}/anything"],
                            capture_output=True, text=True, timeout=30).stdout
        head, _, body = h2.partition("\n\n")  # text mode: curl's CRLFs read as LFs
        assert head.startswith("HTTP/2 502") and "mitmproxy" not in head.lower(), head
        assert json.loads(body)["error"]["reason"] == "upstream_failed"
    finally:
        p.stop()


@pytest.mark.parametrize("head", [
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello",
    b"GARBAGE\r\n\r\n",
])
def test_requests_mitmproxy_cannot_parse_get_the_sidecars_json_error(proxy, head):
    s = raw(proxy.ports[0])
    s.sendall(head)
    status, headers, error = json_error(recv_all(s))
    s.close()
    assert status == 400 and headers["x-keyhold-error"] == "bad_request" and "server" not in headers


def test_upstream_response_mitmproxy_rejects_is_a_json_502(proxy):
    r = httpx.get(f"{proxy.rude}/te-cl", timeout=30)
    assert r.status_code == 502 and r.headers["x-keyhold-error"] == "upstream_failed"
    assert "mitmproxy" not in r.headers.get("server", "")


@WORKERS
def test_every_refusal_is_logged_with_id_route_and_reason_never_the_body(proxy):
    secret = "078-05-1120-SECRET"
    r = httpx.post(f"{proxy.main}/fields", content=f"not json {secret}".encode(), timeout=30)
    assert r.status_code == 422
    rid = r.headers["x-keyhold-request-id"]
    line = proxy.wait_for(f"request={rid}")
    assert "refused" in line and "rule=fields" in line and "reason=bad_body" in line and "proxy=main" in line
    assert secret not in proxy.log


@pytest.mark.parametrize("body,status", [
    (b'{"user": {"ssn": NaN}}', 422),
    (b'{"user": {"ssn": Infinity}}', 422),
    (b'{"user": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", 422),
    (json.dumps({"user": {"ssn": "x" * 5000}}).encode(), 413),
])
def test_client_mistakes_on_field_rules_are_4xx(proxy, upstream, body, status):
    upstream.clear()
    r = httpx.post(f"{proxy.main}/fields", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json" and "x-keyhold-error" in r.headers
    assert not any(x.path == "/fields" for x in upstream.received)


# -- item 10: validators and ranges of decrypted responses -------------------------------------
@pytest.fixture
def envelope_reply(kms, upstream):
    from sidecar import bodies

    plain = b"the plaintext body " * 50
    upstream.reply = (bodies.seal_all(kms, "app/data", plain, 65536), bodies.ENVELOPE_TYPE,
                      {"ETag": '"cipher-etag"', "Accept-Ranges": "bytes", "X-Keyhold-Content-Type": "text/plain"})
    yield plain
    upstream.reply = (b'{"ok":true}', "application/json", {})


def test_decrypted_response_drops_the_ciphertexts_validators(proxy, envelope_reply):
    r = httpx.get(f"{proxy.main}/reply/body", timeout=30)
    assert r.status_code == 200 and r.content == envelope_reply
    assert "etag" not in r.headers and "accept-ranges" not in r.headers


def test_a_large_decrypted_response_that_streams_drops_the_validators_too(proxy, kms, upstream):
    """Past 1 MiB a decrypt route switches from buffering to streaming mid-body
    (sidecar.bodylimit): the headers leave then, and must be fixed then."""
    from sidecar import bodies

    plain = bytes(range(256)) * (3 << 12)  # 3 MiB
    upstream.reply = (bodies.seal_all(kms, "app/data", plain, 65536), bodies.ENVELOPE_TYPE,
                      {"ETag": '"cipher-etag"', "Accept-Ranges": "bytes"})
    try:
        r = httpx.get(f"{proxy.main}/reply/body", timeout=60)
    finally:
        upstream.reply = (b'{"ok":true}', "application/json", {})
    assert r.status_code == 200 and r.content == plain
    assert "etag" not in r.headers and "accept-ranges" not in r.headers


def test_range_request_on_a_decrypt_route_gets_the_whole_plaintext(proxy, upstream, envelope_reply):
    upstream.clear()
    r = httpx.get(f"{proxy.main}/reply/body", headers={"Range": "bytes=0-9", "If-Range": '"cipher-etag"'},
                  timeout=30)
    assert r.status_code == 200 and r.content == envelope_reply
    assert "range" not in upstream.last().headers and "if-range" not in upstream.last().headers


def test_partial_response_on_a_decrypt_route_is_refused_clearly(proxy):
    r = httpx.get(f"{proxy.rude}/dec/partial", timeout=30)
    assert r.status_code == 502 and r.headers["x-keyhold-error"] == "partial_content"


def test_head_on_a_decrypt_route_gives_no_size_or_validator_of_the_envelope(proxy):
    r = httpx.head(f"{proxy.rude}/dec/head", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "text/plain"
    assert "content-length" not in r.headers and "etag" not in r.headers and "accept-ranges" not in r.headers
