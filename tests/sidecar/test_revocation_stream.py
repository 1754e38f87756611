"""Issue 9, item 6: revoking a key stops every stream that uses it, in both directions.

A real `kms-proxy` process; a real upstream that serves (or swallows) an *endless*
stream, paced at ~10 MiB/s; the key is revoked by the real `kms` CLI in another process
(disable-key, schedule-key-deletion) or its imported material expires. The stream must
then be cut: the test counts what still flows after the revocation and requires the
stream to end long before CAP (at the upstream's pace, CAP is ~25 s of data; the
revocation bound is 5 s). On the old code a streamed decrypt kept flowing to CAP.
No timing is asserted; the pace only keeps a failing run short.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from proxyproc import MiB, ProxyProcess, write_config

from kmscore.envelope import StreamEncryptor, new_envelope

CAP = 250 * MiB
PACE = 0.1  # seconds per MiB
ENV = "application/vnd.keyhold.envelope"
KEYS = ["rev/dec", "rev/del", "rev/exp", "rev/enc", "rev/decup", "rev/encdown"]


def endless_envelope(kms, key: str):
    """Envelope bytes under `key` that never end: the header, then frames, 1 MiB a step."""
    header, cipher = new_envelope(kms, key, 65536, metadata={"content-type": "video/mp4"})
    enc = StreamEncryptor(cipher)
    block = os.urandom(MiB)

    def gen():
        yield header.encode()
        while True:
            yield enc.update(block)

    return gen()


class Endless:
    """The upstream: GET streams `self.sources[path]` (chunked, paced); POST reads and
    counts what it receives (a paced client feeds it)."""

    def __init__(self) -> None:
        self.sources: dict[str, object] = {}
        self.received: dict[str, int] = {}
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                source = up.sources[self.path]
                self.send_response(200)
                self.send_header("Content-Type", ENV if self.path.startswith(("/dec", "/del", "/exp")) else "video/mp4")
                self.send_header("X-Keyhold-Content-Type", "video/mp4")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for data in source:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        time.sleep(PACE)
                except OSError:
                    return

            def do_POST(self):
                n = 0
                try:
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            break
                        left = size
                        while left:
                            data = self.rfile.read(min(left, MiB))
                            if not data:
                                raise ConnectionError
                            left -= len(data)
                            n += len(data)
                            up.received[self.path] = n
                        self.rfile.readline()
                except (OSError, ValueError, ConnectionError):
                    return
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"


def routes() -> str:
    def route(path, direction, action, key):
        return (f'[[proxy.route]]\nmatch = {{ path = "{path}" }}\n'
                f'{direction} = {{ action = "{action}", key = "{key}" }}\n')

    return "\n".join([
        route("/dec/*", "response", "decrypt", "rev/dec"),
        route("/del/*", "response", "decrypt", "rev/del"),
        route("/exp/*", "response", "decrypt", "rev/exp"),
        route("/enc/*", "request", "encrypt", "rev/enc"),
        route("/decup/*", "request", "decrypt", "rev/decup"),
        route("/encdown/*", "response", "encrypt", "rev/encdown"),
    ])


@pytest.fixture(scope="module")
def setup(kms, tmp_path_factory):

    for alias in KEYS:
        if alias == "rev/exp":
            kms.create_key(alias=alias, spec="AES_256", origin="EXTERNAL")
        else:
            kms.create_key(alias, "AES_256")
    up = Endless()
    listen = f"127.0.0.1:{free_port()}"
    cfg = write_config(tmp_path_factory.mktemp("revocation") / "deploy.toml", listen, up.url, routes(),
                       limits="limits = { max_buffered_body = 1048576 }")
    proxy = ProxyProcess(kms.home, cfg)
    proxy.url = f"http://{listen}"
    yield kms, up, proxy
    proxy.stop()
    up.server.shutdown()


def kms_cli(kms, *args: str) -> None:
    out = subprocess.run([str(Path(sys.executable).parent / "kms"), *args], capture_output=True, text=True,
                         env={**os.environ, "KMS_HOME": str(kms.home)}, timeout=120)
    assert out.returncode == 0, out.stderr


def read_until_cut(url: str, revoke) -> tuple[int, bool]:
    """Stream GET `url`; after 4 MiB, call `revoke()`; return (bytes after it, cut?)."""
    after, revoked = 0, False
    with httpx.Client(timeout=60) as c:
        try:
            with c.stream("GET", url) as r:
                if r.status_code != 200:
                    return 0, True  # refused before any byte: fine too
                seen = 0
                for chunk in r.iter_raw(MiB):
                    seen += len(chunk)
                    if revoked:
                        after += len(chunk)
                        if after > CAP:
                            return after, False
                    elif seen >= 4 * MiB:
                        revoke()
                        revoked = True
        except (httpx.RemoteProtocolError, httpx.ReadError):
            return after, True
    return after, True  # the stream ended (not endless any more): cut


@pytest.mark.parametrize("prefix,key,how", [
    ("/dec", "rev/dec", ["disable-key"]),
    ("/del", "rev/del", ["schedule-key-deletion", "--pending-days", "7"]),
])
def test_streamed_decrypt_response_stops_after_revocation(setup, prefix, key, how):
    kms, up, proxy = setup
    up.sources[f"{prefix}/movie"] = endless_envelope(kms, key)
    after, cut = read_until_cut(f"{proxy.url}{prefix}/movie", lambda: kms_cli(kms, *how, key))
    assert cut, f"{after >> 20} MiB of plaintext after the key was revoked, still flowing"
    print(f"\n{how[0]}: {after / MiB:.0f} MiB after the revocation returned")
    assert proxy.alive()


def test_streamed_decrypt_stops_when_imported_material_expires(setup):
    kms, up, proxy = setup
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    params = kms.get_parameters_for_import("rev/exp", "RSAES_OAEP_SHA_256", "RSA_2048")
    wrapped = load_pem_public_key(params.public_key_pem.encode()).encrypt(
        os.urandom(32), padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
    kms.import_key_material("rev/exp", params.import_token, wrapped, time.time() + 8)
    up.sources["/exp/movie"] = endless_envelope(kms, "rev/exp")
    after, cut = read_until_cut(f"{proxy.url}/exp/movie", lambda: None)
    assert cut, f"{after >> 20} MiB after the 4 MiB mark, still flowing past the material's expiry"


def paced_upload(url: str, source, revoke, upstream_count) -> tuple[int, bool]:
    """POST an endless paced body; once 4 MiB reached the upstream call `revoke()`.
    Returns (bytes the upstream received after the revocation, cut?)."""
    state = {"sent": 0, "mark": None, "capped": False}

    def gen():
        for data in source:
            yield data
            state["sent"] += len(data)
            if state["mark"] is None and upstream_count() >= 4 * MiB:  # it streams: now revoke
                revoke()
                state["mark"], state["sent_at_mark"] = upstream_count(), state["sent"]
            if state["mark"] is not None and upstream_count() - state["mark"] > CAP:
                state["capped"] = True  # still flowing at CAP: not cut, whatever happens next
                return
            if state["sent"] > 4 * CAP:
                return  # the proxy stopped forwarding long ago and only drains what we send
            time.sleep(PACE)

    try:
        with httpx.Client(timeout=60) as c:
            r = c.post(url, content=gen(), headers={"content-type": ENV if "decup" in url else "video/mp4"})
        cut = r.status_code != 200
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        cut = True
    assert state["mark"], "nothing reached the upstream before the revocation: the stream never flowed"
    return upstream_count() - state["mark"], cut and not state["capped"]


def test_streamed_encrypt_request_stops_after_disable(setup):
    kms, up, proxy = setup
    block = os.urandom(MiB)
    after, cut = paced_upload(f"{proxy.url}/enc/up", iter(lambda: block, None),
                              lambda: kms_cli(kms, "disable-key", "rev/enc"), lambda: up.received.get("/enc/up", 0))
    assert cut, f"{after >> 20} MiB reached the upstream after the key was disabled"


def test_streamed_decrypt_request_stops_after_disable(setup):
    """The worst case: the upstream receives plaintext decrypted by the sidecar."""
    kms, up, proxy = setup
    after, cut = paced_upload(f"{proxy.url}/decup/up", endless_envelope(kms, "rev/decup"),
                              lambda: kms_cli(kms, "disable-key", "rev/decup"),
                              lambda: up.received.get("/decup/up", 0))
    assert cut, f"{after >> 20} MiB of plaintext reached the upstream after the key was disabled"


def test_streamed_encrypt_response_stops_after_disable(setup):
    kms, up, proxy = setup
    block = os.urandom(MiB)
    up.sources["/encdown/movie"] = iter(lambda: block, None)
    after, cut = read_until_cut(f"{proxy.url}/encdown/movie", lambda: kms_cli(kms, "disable-key", "rev/encdown"))
    assert cut, f"{after >> 20} MiB after the key was disabled, still flowing"
