"""Front ends on a host without the key store: `kms up` with `[kms] url` runs a real
sidecar (mitmproxy) and a real FUSE mount on the remote facade of a `kms serve` in
another process. No key store is opened or created on the front ends' side; a key
disabled on the server is refused by both within the revocation bound; with the
server gone both fail closed, and both recover by themselves when it is back on the
same port.

Effects are awaited "up to N seconds" (never timed)."""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil

import httpx
import pytest

from tests.e2e.kmsup import fuse_mounted, recording_upstream, start_up, stop, unmount, wait_for, wait_log
from tests.serve.conftest import clean_env, free_port, remote_kms, restart_server, stop_server, write_access_key_file

if not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"):
    pytest.skip("FUSE (/dev/fuse, fusermount3) is not available", allow_module_level=True)
if importlib.util.find_spec("mitmproxy") is None:
    pytest.skip("the sidecar needs mitmproxy (Python >= 3.12)", allow_module_level=True)


@pytest.fixture
def upstream():
    with recording_upstream() as up:
        yield up


CONFIG = """
[kms]
url = "{url}"
access_key_file = "app.key"
home = "local"
revocation_bound = 2

[[keys]]
alias = "remote/files"

[[keys]]
alias = "remote/bodies"

[[mount]]
cipher_dir = "cipher"
mount_point = "plain"
key = "remote/files"

[[proxy]]
listen = "127.0.0.1:{listen}"
upstream = "http://127.0.0.1:{upstream}"

[[proxy.route]]
name = "store"
match = {{ path = "/store/*", methods = ["PUT"] }}
request = {{ action = "encrypt", key = "remote/bodies" }}

[[proxy.route]]
name = "open"
match = {{ path = "/open/*", methods = ["PUT"] }}
request = {{ action = "decrypt", key = "remote/bodies" }}
"""

FRONTEND_POLICY = """
[[allow]]
operations = ["list_keys", "create_key"]
keys = ["*"]

[[allow]]
operations = ["describe_key", "key_usable", "default_key", "encrypt_data", "decrypt_data",
              "create_datakey", "encrypt_datakey", "decrypt_datakey"]
keys = ["remote/*", "sidecar/default", "fsmount/default"]
"""


@pytest.fixture
def remote_host(tmp_path, server, upstream):
    """A front-end host: a folder with a config naming the server, and `kms up` on it."""
    host = tmp_path / "frontend-host"
    host.mkdir()
    write_access_key_file(host / "app.key", server.access_key(FRONTEND_POLICY, name="frontends"))
    listen = free_port()
    (host / "deploy.toml").write_text(CONFIG.format(url=server.url, listen=listen, upstream=upstream.port))
    log = host / "up.log"
    proc = start_up(host / "deploy.toml", log, env=clean_env())
    state = {"proc": proc, "host": host, "log": log, "listen": listen, "received": upstream.received}
    try:
        wait_log(proc, log, "running deploy.toml")
        yield state
    finally:
        stop(proc)
        unmount(host / "plain")


def put(state, path: str, body: bytes) -> httpx.Response:
    headers = {"Content-Type": "application/vnd.keyhold.envelope"} if path.startswith("/open/") else {}
    return httpx.put(f"http://127.0.0.1:{state['listen']}{path}", content=body, headers=headers, timeout=20)


def read_fails(fd: int) -> bool:
    try:
        os.pread(fd, 100, 0)
    except OSError as e:
        assert e.errno == errno.ENOKEY, e
        return True
    return False


def read_works(fd: int, data: bytes) -> bool:
    try:
        return os.pread(fd, len(data), 0) == data
    except OSError as e:
        assert e.errno == errno.ENOKEY, e
        return False


def test_sidecar_and_mount_on_the_remote_facade(server, remote_host):
    host, received = remote_host["host"], remote_host["received"]
    plain = host / "plain"
    assert fuse_mounted(plain)
    # no key store on this host: nothing but logs in its home, no root key
    assert not list(host.rglob("keys.db")) and not list(host.rglob("root.key"))
    assert "remote KMS http://127.0.0.1" in remote_host["log"].read_text()

    # the mount: files written are envelopes under the server's key
    data = os.urandom(50_000) + b"attack at dawn"
    (plain / "f").write_bytes(data)
    assert (plain / "f").read_bytes() == data
    backing = b"".join(p.read_bytes() for p in (host / "cipher").rglob("*") if p.is_file())
    assert backing and b"attack at dawn" not in backing

    # the sidecar: the upstream receives an envelope, never the body
    r = put(remote_host, "/store/a", b"top secret body")
    assert r.status_code == 200, r.text
    assert received[-1].path == "/store/a" and b"top secret body" not in received[-1].body
    envelope = received[-1].body
    for _ in range(2):  # the second from the data-key cache
        r = put(remote_host, "/open/a", envelope)
        assert r.status_code == 200 and (received[-1].path, received[-1].body) == ("/open/a", b"top secret body"), r.text

    def open_refused() -> bool:
        r = put(remote_host, "/open/x", envelope)
        return r.status_code == 503 and b"top secret body" not in r.content

    # revocation on the server reaches both within the bound
    admin = remote_kms(server)
    fd = os.open(plain / "f", os.O_RDONLY)
    try:
        admin.disable_key("remote/files")
        admin.disable_key("remote/bodies")
        wait_for("the open file to become unreadable", lambda: read_fails(fd))
        r = put(remote_host, "/store/b", b"must not leave")
        assert r.status_code == 503 and b"must not leave" not in r.content
        assert all(r.path != "/store/b" for r in received)
        wait_for("the sidecar's cached data key to be refused", open_refused)
        admin.enable_key("remote/files")
        admin.enable_key("remote/bodies")
        wait_for("the open file to be readable again", lambda: read_works(fd, data))
        assert put(remote_host, "/store/c", b"again").status_code == 200
        wait_for("decryption to work again", lambda: put(remote_host, "/open/c", envelope).status_code == 200)

        # the server goes away: both fail closed ...
        stop_server(server)
        wait_for("reads to fail with the KMS gone", lambda: read_fails(fd))
        r = put(remote_host, "/store/d", b"nobody to ask")
        assert r.status_code == 503 and b"nobody to ask" not in r.content
        assert all(r.path != "/store/d" for r in received)
        wait_for("the sidecar to refuse decryption with the KMS gone", open_refused)
        assert remote_host["proc"].poll() is None  # kms up keeps running

        # ... and recover by themselves when it is back on the same port
        with restart_server(server):
            wait_for("reads to work again", lambda: read_works(fd, data))
            r = put(remote_host, "/store/e", b"back")
            assert r.status_code == 200, r.text
            assert received[-1].path == "/store/e" and b"back" not in received[-1].body
            wait_for("decryption after the restart", lambda: put(remote_host, "/open/e", envelope).status_code == 200)
            assert (received[-1].path, received[-1].body) == ("/open/e", b"top secret body")
    finally:
        os.close(fd)
        admin.close()
