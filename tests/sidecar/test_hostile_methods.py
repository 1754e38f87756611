"""A method a route does not list must not carry a body past the route's rule.

The main proxy has `store-put` (`/store/*`, PUT and POST: encrypt the request) before
`store-get` (`/store/*`, GET: decrypt the response). Any other method with a body on
`/store/*` would skip the encryption: the sidecar answers 405 with `Allow` and the
upstream receives nothing, whatever the client (httpx, a raw socket, curl).
"""

from __future__ import annotations

import socket
import subprocess

import httpx
import pytest
from conftest import error_of, free_port

from sidecar.config import ProxyEntry

MARKER = b"PLAINTEXT-MARKER-METHOD"
BODY = b'{"secret":"' + MARKER + b'"}'


@pytest.mark.parametrize("method", ["PATCH", "DELETE", "GET", "OPTIONS", "PROPFIND", "patch"])
def test_unlisted_method_with_a_body_is_405(client, upstream, method):
    r = client.request(method, "/store/x", content=BODY, headers={"content-type": "application/json"})
    assert r.status_code == 405, r.text
    err = error_of(r)
    assert err["reason"] == "method_not_allowed" and err["rule"] == "store-put"
    assert r.headers["allow"] == "POST, PUT"
    assert MARKER not in r.content
    assert upstream.received == []


def test_chunked_body_on_raw_socket_is_405(sidecar, upstream):
    upstream.clear()
    host, port = sidecar.urls["main"].removeprefix("http://").rsplit(":", 1)
    request = (b"DELETE /store/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
               + b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY))
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 405")
    assert upstream.received == []


def test_curl_custom_method(sidecar, upstream):
    upstream.clear()
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PATCH",
                          "--data-binary", BODY.decode(), sidecar.urls["main"] + "/store/x"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert out == "405" and upstream.received == []


def test_listed_methods_and_bodyless_requests_still_pass(client, upstream):
    assert client.put("/store/m", content=BODY).status_code == 201
    assert MARKER not in upstream.last().body  # encrypted
    assert client.get("/store/m").content == BODY  # store-get decrypts
    upstream.clear()
    assert client.delete("/store/m").status_code in (200, 404)  # no body: nothing to leak
    assert len(upstream.received) == 1


@pytest.fixture(scope="module")
def extra_proxy(sidecar, upstream):
    """A second proxy with method-limited verify / response-encrypt routes and an opt-out."""
    enc = {"action": "encrypt", "key": "app/data"}
    entry = ProxyEntry.model_validate({
        "name": "methods", "listen": f"127.0.0.1:{free_port()}", "upstream": upstream.url,
        "route": [
            {"name": "loose", "match": {"path": "/loose*", "methods": ["PUT"], "other_methods": "pass"}, "request": enc},
            {"name": "pay", "match": {"path": "/pay*", "methods": ["POST"]}, "request": {"action": "verify", "key": "app/mac"}},
            {"name": "sealed-reply", "match": {"path": "/reply*", "methods": ["GET"]}, "response": enc},
        ],
    })
    before = list(sidecar.entries)
    sidecar.apply([*before, entry])
    yield f"http://{entry.listen}"
    sidecar.apply(before)


def test_opt_out_lets_other_methods_pass(extra_proxy, upstream):
    upstream.clear()
    r = httpx.patch(extra_proxy + "/loose", content=BODY, timeout=30)
    assert r.status_code == 200 and upstream.last().body == BODY  # the config said so


def test_unlisted_method_cannot_skip_signature_verification(extra_proxy, upstream):
    upstream.clear()
    r = httpx.put(extra_proxy + "/pay", content=b'{"amount":12000}', timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert upstream.received == []
    assert httpx.post(extra_proxy + "/pay", content=b"{}", timeout=30).status_code == 401  # unsigned


def test_unlisted_method_cannot_skip_response_encryption(extra_proxy, upstream):
    upstream.reply = (b'{"balance":"' + MARKER + b'"}', "application/json", {})
    upstream.clear()
    r = httpx.post(extra_proxy + "/reply", timeout=30)  # no body: the response is what leaks
    assert r.status_code == 405 and MARKER not in r.content
    assert upstream.received == []
    r = httpx.get(extra_proxy + "/reply", timeout=30)
    assert r.status_code == 200 and MARKER not in r.content  # encrypted for the client
