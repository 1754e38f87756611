"""/healthz, /readyz and /metrics of `kms up` (`[kms] metrics`), and of a proxy's own
metrics listener: real processes, a real FUSE mount, real HTTP (issue 11, item 9)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import httpx
import pytest

from tests.e2e.kmsup import KMS, free_port, start_up, stop, unmount, up_env, wait_for, wait_log

if not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"):
    pytest.skip("FUSE (/dev/fuse, fusermount3) is not available", allow_module_level=True)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("health")
    health, metrics, proxy = free_port(), free_port(), free_port()
    (folder / "deploy.toml").write_text(f"""
[kms]
home = "run/kms"
revocation_bound = 0.5
metrics = "127.0.0.1:{health}"

[[keys]]
alias = "health/app"

[[mount]]
cipher_dir = "run/cipher"
mount_point = "run/plain"

[[proxy]]
listen = "127.0.0.1:{proxy}"
upstream = "http://127.0.0.1:9"
metrics = "127.0.0.1:{metrics}"

[[proxy.route]]
name = "enc"
match = {{ path = "/x/*" }}
request = {{ action = "encrypt", key = "health/app" }}
""")
    env = up_env()
    log = folder / "up.log"
    up = start_up(folder / "deploy.toml", log, env=env, cwd=None)
    try:
        wait_log(up, log, "stop ")  # the banner's last line
        yield {"folder": folder, "health": health, "metrics": metrics, "env": env, "log": log}
    finally:
        stop(up)
        unmount(folder / "run" / "plain")


def get(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)


def test_healthz_and_readyz(deployment):
    assert get(deployment["health"], "/healthz").status_code == 200
    r = get(deployment["health"], "/readyz")
    assert r.status_code == 200, r.text
    checks = {c["check"]: c["ok"] for c in r.json()["checks"]}
    assert checks["key store"] and checks["key health/app"] and checks["key fsmount/default"]
    assert any(name.startswith("mount ") and ok for name, ok in checks.items())
    assert any(name.startswith("proxy ") and ok for name, ok in checks.items())


def test_unknown_paths_are_404_on_both_listeners(deployment):
    for port in (deployment["health"], deployment["metrics"]):
        for path in ("/", "/metricsx", "/favicon.ico", "/metrics/../etc"):
            assert get(port, path).status_code == 404, (port, path)
        assert get(port, "/metrics").status_code == 200
        assert get(port, "/healthz").status_code == 200


def test_metrics_count_kms_operations_and_mounts(deployment):
    folder = deployment["folder"]
    (folder / "run" / "plain" / "f.txt").write_text("data")  # the mount's own process
    r = get(deployment["health"], "/metrics")
    assert "keyhold_mount_up{" in r.text and "keyhold_ready 1.0" in r.text
    assert 'keyhold_kms_operations_total{operation="CreateKey",outcome="ok"} 1.0' in r.text


def test_readyz_fails_when_a_named_key_is_disabled(deployment):
    home = deployment["folder"] / "run" / "kms"
    cli = lambda *a: subprocess.run([KMS, "--home", str(home), *a], capture_output=True,  # noqa: E731
                                    env=deployment["env"], timeout=60)
    assert cli("disable-key", "health/app").returncode == 0
    try:
        r = wait_for("readyz 503", lambda: (resp := get(deployment["health"], "/readyz")).status_code == 503 and resp)
        failed = [c for c in r.json()["checks"] if not c["ok"]]
        assert [c["check"] for c in failed] == ["key health/app"]
        assert "keyhold_ready 0.0" in get(deployment["health"], "/metrics").text
    finally:
        assert cli("enable-key", "health/app").returncode == 0
    wait_for("readyz 200 again", lambda: get(deployment["health"], "/readyz").status_code == 200)


def test_forward_mode_banner_names_the_ca_clients_must_trust(tmp_path):
    proxy = free_port()
    (tmp_path / "fwd.toml").write_text(f'[kms]\nhome = "run/kms"\n\n[[proxy]]\nmode = "forward"\n'
                                       f'listen = "127.0.0.1:{proxy}"\n')
    log = tmp_path / "up.log"
    up = start_up(tmp_path / "fwd.toml", log, cwd=None)
    try:
        wait_log(up, log, "stop ")
        ca = tmp_path / "run" / "kms" / "sidecar" / "mitmproxy-ca-cert.pem"
        assert f"HTTPS clients must trust {ca}" in log.read_text()
        assert ca.is_file()
    finally:
        stop(up)


def test_mount_status_as_json(tmp_path):
    env = up_env()
    home, c, p = tmp_path / "h", tmp_path / "c", tmp_path / "p"
    c.mkdir()
    p.mkdir()
    run = lambda *a: subprocess.run([KMS, "--home", str(home), *a], capture_output=True, env=env, timeout=60)  # noqa: E731
    assert run("init").returncode == 0
    r = run("mount", str(c), str(p), "--background", "--json", "--log", str(tmp_path / "m.log"))
    try:
        assert r.returncode == 0, r.stderr
        status = json.loads(r.stdout)
        assert status["mounted"] and status["mount_point"] == str(p) and status["cipher_dir"] == str(c)
        assert isinstance(status["pid"], int) and os.path.ismount(p)
    finally:
        run("unmount", str(p))
    assert not os.path.ismount(p)
