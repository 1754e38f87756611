"""`kms up` as a real process on a temporary config: a real FUSE mount, a real proxy in
front of a real recording upstream, real edits of the file, real signals.

Effects are awaited "up to N seconds" (never timed). Every test leaves no process and
no mount behind, also when it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.kmsup import (KMS, Upstream, free_port, fuse_mounted, recording_upstream, start_up, stop, unmount, up_env,
                             wait_for, wait_log)

if not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"):
    pytest.skip("FUSE (/dev/fuse, fusermount3) is not available", allow_module_level=True)

SSN = "078-05-1120"


@pytest.fixture
def upstream():
    with recording_upstream() as up:
        yield up


# -- the deployment under test ----------------------------------------------------------
MOUNT = """
[[mount]]
cipher_dir = "run/{name}-cipher"
mount_point = "run/{name}"
"""

ROUTES = {
    "store": """
[[proxy.route]]
name = "store"
match = { path = "/store/*", methods = ["PUT"] }
request = { action = "encrypt" }
""",
    "fields": """
[[proxy.route]]
name = "fields"
match = { path = "/users/*" }
request = { action = "encrypt", fields = ["ssn"] }
""",
    "sign": """
[[proxy.route]]
name = "sign"
match = { path = "/hooks/*" }
request = { action = "sign", key = "e2e/hooks" }
""",
    "extra": """
[[proxy.route]]
name = "extra"
match = { path = "/extra/*" }
request = { action = "encrypt", key = "e2e/extra" }
""",
}


class Deployment:
    """A folder with a config file and `kms up` running on it."""

    def __init__(self, folder: Path, upstream: Upstream) -> None:
        self.folder = folder
        self.config = folder / "deploy.toml"
        self.log = folder / "up.log"
        self.port = free_port()
        self.upstream = upstream
        self.proc: subprocess.Popen | None = None
        self.mounts: set[Path] = set()

    def text(self, routes=("store", "fields", "sign"), mounts=("plain",), keys=("e2e/hooks:HMAC_256",), listen=None):
        out = ['[kms]\nhome = "run/kms"\nrevocation_bound = 1\n']
        for k in keys:
            alias, spec = k.split(":")
            out.append(f'[[keys]]\nalias = "{alias}"\nspec = "{spec}"\n')
        for name in mounts:
            (self.folder / "run" / name).mkdir(parents=True, exist_ok=True)
            (self.folder / "run" / f"{name}-cipher").mkdir(parents=True, exist_ok=True)
            self.mounts.add(self.folder / "run" / name)
            out.append(MOUNT.format(name=name))
        out.append(f'[[proxy]]\nlisten = "127.0.0.1:{listen or self.port}"\nupstream = "http://127.0.0.1:{self.upstream.port}"\n')
        out.extend(ROUTES[r] for r in routes)
        return "\n".join(out)

    def write(self, text: str, atomic: bool = True) -> None:
        """Save like an editor: a new file renamed over the old one (or rewritten in place)."""
        if atomic:
            tmp = self.config.with_name(".deploy.toml.swp")
            tmp.write_text(text)
            os.replace(tmp, self.config)
        else:
            self.config.write_text(text)

    def start(self, **extra_env: str) -> None:
        self.proc = start_up(self.config, self.log, env=up_env(**extra_env))
        self.wait_log("running deploy.toml")

    def output(self) -> str:
        return self.log.read_text()

    def wait_log(self, text: str, count: int = 1) -> None:
        wait_log(self.proc, self.log, text, count)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> int | None:
        return None if self.proc is None else stop(self.proc)


@pytest.fixture
def fresh(tmp_path, upstream):
    """A Deployment not started yet; whatever the test starts is stopped and unmounted."""
    d = Deployment(tmp_path, upstream)
    yield d
    d.stop()
    for m in d.mounts:
        unmount(m)


@pytest.fixture
def deployment(fresh):
    fresh.write(fresh.text())
    fresh.start()
    return fresh


def put_store(d: Deployment, path: str, body: bytes) -> bytes:
    """PUT through the proxy; what the upstream received."""
    r = httpx.put(d.url(path), content=body, timeout=10)
    assert r.status_code == 200, r.text
    return d.upstream.last(path).body


# -- the tests ---------------------------------------------------------------------------
def test_mount_and_proxy_run_from_one_file(deployment):
    d = deployment
    out = d.output()
    assert "created key e2e/hooks (HMAC_256" in out
    assert f"mount[0] running: cipher_dir={d.folder}/run/plain-cipher mount_point={d.folder}/run/plain" in out
    assert f"proxy[0] running: listen=127.0.0.1:{d.port}" in out

    plain = d.folder / "run" / "plain"
    assert fuse_mounted(plain)
    (plain / "note.txt").write_text("attack at dawn")
    assert (plain / "note.txt").read_text() == "attack at dawn"
    backing = b"".join(p.read_bytes() for p in (d.folder / "run" / "plain-cipher").rglob("*") if p.is_file())
    assert b"attack at dawn" not in backing and backing

    received = put_store(d, "/store/a", b"top secret body")
    assert received and b"top secret body" not in received

    r = httpx.post(d.url("/users/1"), json={"name": "Ann", "ssn": SSN}, timeout=10)
    assert r.status_code == 200, r.text
    sent = json.loads(d.upstream.last("/users/1").body)
    assert sent["name"] == "Ann" and sent["ssn"] != SSN and isinstance(sent["ssn"], str)

    r = httpx.post(d.url("/hooks/paid"), json={"order": 7}, timeout=10)
    assert r.status_code == 200, r.text
    headers = d.upstream.last("/hooks/paid").headers
    assert "signature" in headers and 'keyid="e2e/hooks"' in headers["signature-input"]


def test_route_added_then_removed_applies_to_the_next_request(deployment):
    d = deployment
    assert put_store(d, "/extra/1", b"plain before") == b"plain before"  # no route: passes as is

    d.write(d.text(routes=("store", "fields", "sign", "extra"), keys=("e2e/hooks:HMAC_256", "e2e/extra:AES_256")))
    d.wait_log(f"reloaded {d.config}")
    assert "created key e2e/extra (AES_256" in d.output()
    assert b"now secret" not in put_store(d, "/extra/2", b"now secret")

    d.write(d.text(routes=("fields", "sign"), keys=("e2e/hooks:HMAC_256", "e2e/extra:AES_256")), atomic=False)
    d.wait_log(f"reloaded {d.config}", 2)
    assert put_store(d, "/extra/3", b"plain again") == b"plain again"
    assert put_store(d, "/store/3", b"store is plain now") == b"store is plain now"


def test_invalid_edit_is_reported_and_the_last_good_config_keeps_running(deployment):
    d = deployment
    good = d.config.read_text()
    d.write(good.replace('action = "encrypt" }', 'action = "encrypt", kee = "x" }', 1))
    d.wait_log("reload refused, keeping the running config")
    assert f"{d.config}: proxy[0].route[0].request.kee: unknown key 'kee' (did you mean 'key'?)" in d.output()
    assert b"still secret" not in put_store(d, "/store/b", b"still secret")
    assert fuse_mounted(d.folder / "run" / "plain")

    d.write(good.replace('key = "e2e/hooks"', 'key = "e2e/nope"'))  # well-formed, but no such key
    d.wait_log("reload refused", 2)
    assert f"{d.config}: proxy[0].route[2].request.key: no key with id or alias 'e2e/nope'" in d.output()
    r = httpx.post(d.url("/hooks/x"), json={}, timeout=10)
    assert r.status_code == 200 and "signature" in d.upstream.last("/hooks/x").headers


def test_new_mount_is_mounted_and_a_removed_one_unmounted(deployment):
    d = deployment
    second = d.folder / "run" / "second"
    d.write(d.text(mounts=("plain", "second")))
    wait_for("the new mount", lambda: fuse_mounted(second))
    (second / "x.bin").write_bytes(b"\x00" * 10000)
    assert (second / "x.bin").stat().st_size == 10000

    d.write(d.text(mounts=("second",)))
    wait_for("the removed mount to go", lambda: not fuse_mounted(d.folder / "run" / "plain"))
    assert fuse_mounted(second) and (second / "x.bin").read_bytes() == b"\x00" * 10000


def test_sighup_reloads_and_a_new_listen_port_restarts_that_proxy(deployment):
    d = deployment
    old_port, d.port = d.port, free_port()
    d.config.write_text(d.text())  # written in place: the watcher may see it too
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log(f"reloaded {d.config}")
    wait_for("the new port", lambda: _answers(d.url("/store/p")))
    assert b"via new port" not in put_store(d, "/store/p", b"via new port")
    with pytest.raises(httpx.TransportError):
        httpx.put(f"http://127.0.0.1:{old_port}/store/q", content=b"x", timeout=5)


def _answers(url: str) -> bool:
    try:
        return httpx.put(url, content=b"probe", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_root_key_change_is_reported_as_needing_a_restart(deployment):
    d = deployment
    d.write(d.text().replace('home = "run/kms"', 'home = "run/other-kms"'))
    d.wait_log("need a restart")
    assert "changes to kms.home need a restart of kms up" in d.output()
    assert b"old store still" not in put_store(d, "/store/r", b"old store still")
    assert not (d.folder / "run" / "other-kms").exists()


def test_sigterm_stops_everything_and_leaves_no_mount(deployment):
    d = deployment
    plain = d.folder / "run" / "plain"
    f = (plain / "open.txt").open("w")
    f.write("written before the stop")
    f.close()
    assert d.stop() == 0
    assert not fuse_mounted(plain)
    assert "SIGTERM: stopping" in d.output()
    assert not _answers(d.url("/store/z"))
    names = [p.name for p in (d.folder / "run" / "plain-cipher").iterdir()]
    assert "open.txt" in " ".join(names) or len(names) >= 2  # the file's envelope stays on disk


def test_check_and_up_refuse_a_bad_file_with_every_error(tmp_path, fresh):
    d = fresh
    d.write(d.text().replace('request = { action = "sign", key = "e2e/hooks" }',
                             'request = { action = "sign", key = "e2e/missing" }').replace("revocation_bound = 1", "revocation_bound = \"x\""))
    for cmd in ("check", "up"):
        r = subprocess.run([KMS, cmd, str(d.config)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2
        assert r.stderr.splitlines()[-2:] == [
            f"{d.config}: kms.revocation_bound: expected a number, got a string",
            "kms: 1 problem found",
        ]
        assert "Traceback" not in r.stderr
    d.write(d.text().replace('key = "e2e/hooks"', 'key = "e2e/missing"'))
    r = subprocess.run([KMS, "check", str(d.config)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert f"{d.config}: proxy[0].route[2].request.key: no key with id or alias 'e2e/missing'" in r.stderr
    d.write(d.text())
    r = subprocess.run([KMS, "check", str(d.config)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{d.config}: OK (1 key, 1 mount, 1 proxy)"
    assert not fuse_mounted(d.folder / "run" / "plain")


def test_a_change_that_fails_half_way_is_rolled_back(deployment):
    """The new mount applies first, then the proxy cannot listen: both are put back."""
    d = deployment
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        d.write(d.text(mounts=("plain", "third"), listen=busy))
        d.wait_log("rolling back to the running config")
        assert f"cannot listen on 127.0.0.1:{busy}" in d.output()
        wait_for("the new mount to be taken back", lambda: not fuse_mounted(d.folder / "run" / "third"))
    assert fuse_mounted(d.folder / "run" / "plain")
    wait_for("the old listener to be back", lambda: _answers(d.url("/store/rb")))
    assert b"after rollback" not in put_store(d, "/store/rb", b"after rollback")


def test_an_emptied_file_stops_nothing(deployment):
    d = deployment
    d.write("", atomic=False)
    d.wait_log("the file is empty")
    assert fuse_mounted(d.folder / "run" / "plain")
    assert b"kept" not in put_store(d, "/store/e", b"kept")


def test_a_start_that_fails_stops_what_had_started(tmp_path, fresh):
    d = fresh
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        d.write(d.text(listen=busy))
        r = subprocess.run([KMS, "up", str(d.config)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-2].startswith(
        f"{d.config}: proxy: could not start: proxy 127.0.0.1:{busy}: cannot listen on 127.0.0.1:{busy}")
    assert "Traceback" not in r.stderr
    assert "mount[0] running" in r.stderr  # the mount had started, and was stopped again
    assert not fuse_mounted(d.folder / "run" / "plain")


def test_an_edited_audit_log_stops_the_start(tmp_path, fresh):
    import sqlite3

    d = fresh
    d.write(d.text(mounts=()))
    d.start()
    assert d.stop() == 0
    with sqlite3.connect(tmp_path / "run" / "kms" / "keys.db") as db:
        db.execute("UPDATE audit SET outcome = 'ok: nothing to see' WHERE seq = 1")
    r = subprocess.run([KMS, "up", str(d.config)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 9
    assert r.stderr.splitlines()[-1].startswith("kms: error: audit log check failed: record 1 (")
    assert "Traceback" not in r.stderr
    d.write(d.text(mounts=()).replace("revocation_bound = 1", "revocation_bound = 1\n[kms.audit]\nverify_on_start = false"))
    d.start()
    assert d.stop() == 0


def test_values_from_the_environment_never_reach_the_log(tmp_path, fresh):
    secret = "tok-Zq81x-not-for-logs"
    d = fresh
    d.write(d.text(mounts=()).replace("[[proxy]]\n", '[[proxy]]\nname = "${PROXY_NAME}"\n'))
    d.start(PROXY_NAME=secret)
    d.write(d.config.read_text().replace('listen = "', 'limits = { max_buffered_body = "${PROXY_NAME}" }\nlisten = "'))
    d.wait_log("reload refused")
    assert d.stop() == 0
    out = d.output()
    assert "name=${PROXY_NAME}" in out and "max_buffered_body: expected an integer, got a string" in out
    assert secret not in out


def test_ctrl_c_stops_like_sigterm(deployment):
    d = deployment
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(60) == 0
    assert "SIGINT: stopping" in d.output()
    assert not fuse_mounted(d.folder / "run" / "plain")


def test_a_configmap_style_symlink_swap_reloads(tmp_path, fresh):
    """Kubernetes mounts a ConfigMap as `deploy.toml -> ..data/deploy.toml` and updates it
    by pointing `..data` at a new folder; relative paths stay relative to the link's folder."""
    d = fresh
    (tmp_path / "..v1").mkdir()
    (tmp_path / "..v1" / "deploy.toml").write_text(d.text(mounts=()))
    (tmp_path / "..data").symlink_to("..v1")
    d.config.symlink_to("..data/deploy.toml")
    d.start()
    assert put_store(d, "/extra/1", b"plain") == b"plain"
    (tmp_path / "..v2").mkdir()
    (tmp_path / "..v2" / "deploy.toml").write_text(d.text(mounts=(), routes=("store", "extra"),
                                                          keys=("e2e/extra:AES_256",)))
    (tmp_path / "..data_tmp").symlink_to("..v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    shutil.rmtree(tmp_path / "..v1")
    d.wait_log(f"reloaded {d.config}")
    assert b"now secret" not in put_store(d, "/extra/2", b"now secret")
    assert (tmp_path / "run" / "kms" / "keys.db").exists()
    assert d.stop() == 0
