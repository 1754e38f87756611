"""Route bypass by path and host spelling, against a real `kms proxy` process.

Each spelling is sent byte for byte on a raw socket (and through `curl --path-as-is`)
to an encrypt route; the recording upstream must either receive nothing (the sidecar
refused with 400) or receive the canonical path with an encrypted body. Never the
plaintext marker, never a path other than the one that was matched.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

BIN = Path(sys.executable).parent
MARKER = b"PLAINTEXT-MARKER-4111"
BODY = b'{"card":"' + MARKER + b'"}'


def _toml(entries: list[dict]) -> str:
    return "\n".join(f"[[proxy]]\n{_table(e)}" for e in entries)


def _table(e: dict) -> str:
    return "\n".join(f"{k} = {json.dumps(v) if not isinstance(v, list) else _inline_list(v)}" for k, v in e.items())


def _inline_list(items: list) -> str:
    def inline(v):
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {inline(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(inline(x) for x in v) + "]"
        return json.dumps(v)

    return inline(items)


ENC = {"action": "encrypt", "key": "app/data"}


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def proxy(kms, upstream, tmp_path_factory, request):
    """A real `kms proxy --config` with a reverse and a forward entry, in one process and
    in 2 worker processes (issue 14)."""
    reverse, forward = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    routes = [
        {"name": "vault", "match": {"path": "/vault/*"}, "request": ENC},
        {"name": "exact", "match": {"path": "/Exact/*", "case_sensitive": True}, "request": ENC},
        {"name": "vhost", "match": {"host": "secure.example", "path": "/v/*"}, "request": ENC},
    ]
    cfg = tmp_path_factory.mktemp("hostile") / "proxy.toml"
    cfg.write_text(_toml([
        {"name": "rev", "listen": reverse, "upstream": upstream.url, "route": routes},
        {"name": "fwd", "listen": forward, "mode": "forward", "route": routes},
    ]))
    env = {**os.environ, "KMS_HOME": str(kms.home)}
    proc = subprocess.Popen([str(BIN / "kms"), "proxy", "--config", str(cfg), "--workers", str(request.param)], env=env,
                            stderr=subprocess.PIPE, text=True)
    seen = 0
    while seen < 2:
        line = proc.stderr.readline()
        assert line, "kms proxy exited before listening"
        seen += "listening on" in line
    yield {"reverse": reverse, "forward": forward}
    proc.terminate()
    proc.wait(timeout=30)


def raw_request(listen: str, target: bytes, host: bytes | None = b"127.0.0.1", *, extra: bytes = b"",
                method: bytes = b"PUT", body: bytes = BODY) -> int:
    """Send one request exactly as written; return the status code the sidecar answered."""
    head = method + b" " + target + b" HTTP/1.1\r\n"
    if host is not None:
        head += b"Host: " + host + b"\r\n"
    head += extra + b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    h, p = listen.rsplit(":", 1)
    with socket.create_connection((h, int(p)), timeout=30) as s:
        s.sendall(head + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def assert_no_plaintext(upstream) -> None:
    for rec in upstream.received:
        assert MARKER not in (rec.body or b""), f"plaintext reached the upstream at {rec.path}"


# spelling -> the path the upstream must receive (encrypted), or 400 (refused, nothing sent)
SPELLINGS = [
    (b"/vault/a", "/vault/a"),
    (b"/%76ault/a", "/vault/a"),  # escaped unreserved letter
    (b"/%76%61%75%6c%74/a", "/vault/a"),
    (b"//vault/a", "/vault/a"),  # duplicate slashes
    (b"/vault//a", "/vault/a"),
    (b"/./vault/a", "/vault/a"),  # dot segments
    (b"/x/../vault/a", "/vault/a"),
    (b"/../vault/a", "/vault/a"),
    (b"/%2e%2e/vault/a", "/vault/a"),  # escaped dot segments
    (b"/x/%2E./vault/a", "/vault/a"),
    (b"/VAULT/a", "/VAULT/a"),  # any case on a route with an action (the default)
    (b"/VaUlT/a?q=%2F#", 400),  # a fragment is never sent by a client
    (b"/vault%2Fa", 400),  # encoded slash
    (b"/vault%2fa", 400),
    (b"/vault%5Ca", 400),  # encoded backslash
    (b"/vault\\a", 400),  # raw backslash
    (b"/vault/a%00", 400),  # encoded NUL
    (b"/vault/%zz", 400),  # invalid escape
    (b"/vault/%4", 400),
    (b"/%2576ault/a", 400),  # double encoded
    (b"/vault;x/a", 400),  # ;params
    (b"/vault/a;jsessionid=1", 400),
    (b"/%C0%AE%C0%AE/vault/a", 400),  # overlong UTF-8 dots
    (b"*", 400),  # asterisk form
]


@pytest.mark.parametrize("target, expected", SPELLINGS, ids=[s.decode("latin-1") for s, _ in SPELLINGS])
def test_path_spellings_never_reach_upstream_in_plaintext(proxy, upstream, target, expected):
    upstream.clear()
    status = raw_request(proxy["reverse"], target)
    assert_no_plaintext(upstream)
    if expected == 400:
        assert status == 400 and upstream.received == []
    else:
        assert status == 200
        assert [r.path for r in upstream.received] == [expected]  # what was matched is what went out


def test_case_sensitive_route_is_a_documented_choice(proxy, upstream):
    upstream.clear()
    assert raw_request(proxy["reverse"], b"/Exact/a") == 200
    assert raw_request(proxy["reverse"], b"/EXACT/a") == 200  # exact case asked for: another path
    assert [MARKER in (r.body or b"") for r in upstream.received] == [False, True]


def test_curl_path_as_is(proxy, upstream):
    upstream.clear()
    out = subprocess.run(
        ["curl", "-sS", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
         "--data-binary", BODY.decode(), f"http://{proxy['reverse']}/a/b/../../%76ault/./x"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    assert out == "200"
    assert [r.path for r in upstream.received] == ["/vault/x"]
    assert_no_plaintext(upstream)


def test_absolute_form_target_is_matched_and_forwarded_in_origin_form(proxy, upstream):
    upstream.clear()
    listen = proxy["reverse"]
    assert raw_request(listen, f"http://{listen}/%76ault/a".encode(), listen.encode()) == 200
    assert [r.path for r in upstream.received] == ["/vault/a"]
    assert_no_plaintext(upstream)


HOSTS = [
    (b"secure.example", None, 200),
    (b"SECURE.Example.:8443", None, 200),  # case, port and a trailing dot name the same host
    (b"secure.example", b"Host: other.example\r\n", 400),  # two Host headers
    (b"secure.example@other.example", None, 400),  # userinfo
    (b"secure%2Eexample", None, 400),
]


@pytest.mark.parametrize("host, extra, expected", HOSTS, ids=[h.decode() + (" twice" if e else "") for h, e, _ in HOSTS])
def test_host_spellings(proxy, upstream, host, extra, expected):
    upstream.clear()
    assert raw_request(proxy["reverse"], b"/v/a", host, extra=extra or b"") == expected
    assert_no_plaintext(upstream)
    assert len(upstream.received) == (expected == 200)


def test_absolute_form_authority_and_host_must_agree(proxy, upstream):
    upstream.clear()
    assert raw_request(proxy["reverse"], b"http://other.example/v/a", b"secure.example") == 400
    assert raw_request(proxy["reverse"], b"http://secure.example/v/a", b"other.example") == 400
    assert raw_request(proxy["reverse"], b"http://secure.example/v/a", b"secure.example") == 200
    assert len(upstream.received) == 1
    assert_no_plaintext(upstream)


def test_forward_mode_destination_and_host_must_agree(proxy, upstream):
    """Routes match where a forward-proxied request really goes; a Host header naming
    another (virtual) host at that address is refused."""
    upstream.clear()
    target = f"http://127.0.0.1:{upstream.port}/v/a".encode()
    assert raw_request(proxy["forward"], target, b"secure.example") == 400
    assert raw_request(proxy["forward"], f"http://127.0.0.1:{upstream.port}/%76ault/a".encode(),
                       f"127.0.0.1:{upstream.port}".encode()) == 200
    assert [r.path for r in upstream.received] == ["/vault/a"]
    assert_no_plaintext(upstream)
