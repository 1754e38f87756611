"""The README's quick start, for real: config/example.toml under `kms up`, the shipped demo
upstream (`kms demo upstream`), the README's curl commands (real curl). Ciphertext must
arrive upstream and plaintext come back (issue 11, items 2-4).

Only the ports differ from the README (free ones, so tests can run side by side).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.kmsup import KMS, free_port, start_up, stop, unmount, up_env, wait_for, wait_log

if not os.path.exists("/dev/fuse") or not shutil.which("fusermount3") or not shutil.which("curl"):
    pytest.skip("needs FUSE (/dev/fuse, fusermount3) and curl", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
SSN = "078-05-1120"


def curl(*args: str) -> bytes:
    r = subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """config/example.toml copied as is (ports moved), `kms up` and `kms demo upstream`
    running; one deployment for the module (starting one takes seconds)."""
    tmp_path = tmp_path_factory.mktemp("quickstart")
    app, proxy = free_port(), free_port()
    folder = tmp_path / "config"
    folder.mkdir()
    text = (ROOT / "config" / "example.toml").read_text()
    assert "127.0.0.1:8081" in text and "http://127.0.0.1:8080" in text
    (folder / "example.toml").write_text(text.replace("127.0.0.1:8081", f"127.0.0.1:{proxy}")
                                         .replace("http://127.0.0.1:8080", f"http://127.0.0.1:{app}"))
    env = up_env()
    up_log, app_log = tmp_path / "up.log", tmp_path / "app.log"
    with app_log.open("wb") as out:
        demo = subprocess.Popen([KMS, "demo", "upstream", "--listen", f"127.0.0.1:{app}"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    up = start_up(Path("config/example.toml"), up_log, env=env, cwd=tmp_path)
    try:
        wait_log(up, up_log, "stop ")  # the banner's last line
        wait_for("the demo upstream", lambda: "demo upstream on" in app_log.read_text())
        yield {"folder": folder, "proxy": proxy, "app": app, "up_log": up_log, "app_log": app_log,
               "env": env, "cwd": tmp_path}
    finally:
        stop(up)
        stop(demo)
        unmount(folder / "run" / "plain")


def test_ciphertext_arrives_upstream_and_plaintext_comes_back(quickstart):
    p, a = quickstart["proxy"], quickstart["app"]
    put = json.loads(curl("-X", "PUT", "--data-binary", "card 4111", f"http://127.0.0.1:{p}/store/a"))
    assert put["stored"] == "/store/a"
    received = base64.b64decode(put["as_received"].removeprefix("base64:"))
    assert received.startswith(b"KHEV") and b"card 4111" not in received
    assert curl(f"http://127.0.0.1:{p}/store/a") == b"card 4111"  # through the proxy: decrypted
    stored = curl(f"http://127.0.0.1:{a}/store/a")  # straight from the application: ciphertext
    assert stored == received

    users = json.loads(curl("-H", "content-type: application/json", "-d", json.dumps({"name": "Ann", "ssn": SSN}),
                            f"http://127.0.0.1:{p}/users/1"))
    assert users == {"name": "Ann", "ssn": SSN}
    app_log = quickstart["app_log"].read_text()
    assert "POST /users/1" in app_log and '"ssn":"khf1.' in app_log.replace(" ", "")
    assert SSN not in app_log and "card 4111" not in app_log


def test_banner_says_what_runs_where(quickstart):
    log = quickstart["up_log"].read_text()
    folder = quickstart["folder"]
    for expected in (
        f"key store  {folder}/run/kms",
        f"kms --deployment {folder}/example.toml list-keys",
        f"export KMS_HOME={folder}/run/kms",
        f"mount      {folder}/run/plain",
        f"ciphertext in {folder}/run/cipher",
        f"http://127.0.0.1:{quickstart['proxy']} -> http://127.0.0.1:{quickstart['app']}",
        "logs       this terminal",
        "stop       Ctrl-C",
    ):
        assert expected in log, expected


def test_cli_reaches_the_deployments_store(quickstart):
    r = subprocess.run([KMS, "--deployment", "config/example.toml", "list-keys", "--json"], capture_output=True,
                       env=quickstart["env"], cwd=quickstart["cwd"], timeout=60)
    assert r.returncode == 0, r.stderr
    assert {"example/webhooks", "fsmount/default"} <= {k["alias"] for k in json.loads(r.stdout)}
    status = subprocess.run([KMS, "status", "config/example.toml", "--json"], capture_output=True,
                            env=quickstart["env"], cwd=quickstart["cwd"], timeout=60)
    report = json.loads(status.stdout)
    assert status.returncode == 0 and report["ready"], report
    assert any(c["check"].startswith("mount ") and c["ok"] for c in report["checks"])


def test_the_mount_stores_envelopes(quickstart):
    folder = quickstart["folder"]
    (folder / "run" / "plain" / "hello.txt").write_text("hello\n")
    cipher = folder / "run" / "cipher"
    assert "hello.txt" not in os.listdir(cipher)  # names are encrypted too (format 2)
    envelopes = [p for p in cipher.iterdir() if p.is_file() and p.read_bytes()[:4] == b"KHEV"]
    assert envelopes and all(b"hello" not in p.read_bytes() for p in envelopes)


def test_access_log_is_in_the_one_text_format(quickstart):
    curl("-X", "PUT", "--data-binary", "x", f"http://127.0.0.1:{quickstart['proxy']}/store/log")
    def seen():
        return [line for line in quickstart["up_log"].read_text().splitlines() if "keyhold.sidecar.access" in line]
    lines = wait_for("an access-log line", seen)
    line = next(line for line in lines if "path=/store/log" in line)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO keyhold\.sidecar\.access: proxy=api rule=store-put ", line), line
    assert "{" not in line
