"""`kms proxy` as an operator runs it: a real process, curl as the client, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port

from sidecar import tokens

BIN = Path(sys.executable).parent


def start_proxy(kms, *args):
    env = {**os.environ, "KMS_HOME": str(kms.home)}
    proc = subprocess.Popen([str(BIN / "kms"), "proxy", *args], env=env, stderr=subprocess.PIPE, text=True)
    line = ""
    while "listening on" not in line and "error" not in line:
        line = proc.stderr.readline()  # "listening on ..." (or an error); skips warnings
        if not line:
            break
    return proc, line


def stop(proc) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        rest = proc.stderr.read()
        return proc.wait(timeout=30), rest
    finally:
        if proc.poll() is None:
            proc.kill()


def test_quick_flags_with_curl(kms, upstream):
    listen = f"127.0.0.1:{free_port()}"
    proc, line = start_proxy(kms, "--listen", listen, "--upstream", upstream.url,
                             "--encrypt-requests", "app/data", "--decrypt-responses", "--fields", "user.ssn")
    try:
        assert "listening on" in line, line
        upstream.clear()
        out = subprocess.run(
            ["curl", "-sS", "-X", "POST", "-H", "content-type: application/json",
             "--data-binary", '{"user":{"ssn":"078-05-1120","name":"Ada"}}', f"http://{listen}/echo"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
        assert json.loads(out) == {"user": {"ssn": "078-05-1120", "name": "Ada"}}
        seen = json.loads(upstream.last().body)
        assert tokens.is_token(seen["user"]["ssn"]) and seen["user"]["name"] == "Ada"
        # fail closed, seen through curl: not JSON
        upstream.clear()
        r = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", "--data-binary", "not json", f"http://{listen}/echo"],
                           capture_output=True, text=True, timeout=30)
        body, code = r.stdout.rsplit("\n", 1)
        assert code == "422" and json.loads(body)["error"]["reason"] == "bad_body"
        assert upstream.received == []
    finally:
        code, _ = stop(proc)
    assert code == 0


def test_sigterm_lets_in_flight_requests_finish(kms, upstream):
    listen = f"127.0.0.1:{free_port()}"
    proc, line = start_proxy(kms, "--listen", listen, "--upstream", upstream.url)
    result = {}
    try:
        assert "listening on" in line, line

        def slow():
            result["r"] = httpx.post(f"http://{listen}/slow", content=b"x", timeout=30)

        t = threading.Thread(target=slow)
        t.start()
        deadline = time.monotonic() + 10
        while not any(r.path == "/slow" for r in upstream.received) and time.monotonic() < deadline:
            time.sleep(0.01)  # wait until the request is at the upstream (in flight)
        proc.send_signal(signal.SIGTERM)
        t.join(30)
    finally:
        code, err = stop(proc)
    assert result["r"].status_code == 200 and result["r"].content == b"x"
    assert code == 0 and "stopping" in err


@pytest.mark.parametrize("args, message", [
    (["--upstream", "ftp://x"], "upstream must be an http"),
    ([], "give --upstream"),
    (["--upstream", "http://127.0.0.1:9", "--encrypt-requests", "app/mac"], "needs an AES_256 key"),
    (["--upstream", "http://127.0.0.1:9", "--sign-requests", "no/such"], "no/such"),
    (["--config", "/nonexistent.toml"], "/nonexistent.toml: no such file"),
])
def test_bad_input_is_one_clear_line(kms, args, message):
    env = {**os.environ, "KMS_HOME": str(kms.home)}
    r = subprocess.run([str(BIN / "kms-proxy"), "--listen", f"127.0.0.1:{free_port()}", *args],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_port_in_use_is_a_clear_error(kms, upstream):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {**os.environ, "KMS_HOME": str(kms.home)}
        r = subprocess.run([str(BIN / "kms-proxy"), "--listen", f"127.0.0.1:{port}", "--upstream", upstream.url],
                           env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "cannot listen" in r.stderr and "Traceback" not in r.stderr


def test_upstream_tls_is_verified_by_default(kms):
    from upstream import start_upstream, stop_upstream

    up, server = start_upstream(tls=True)
    try:
        for extra, expected in (([], 502), (["--upstream-ca", str(up.cert)], 200)):
            listen = f"127.0.0.1:{free_port()}"
            proc, line = start_proxy(kms, "--listen", listen, "--upstream", up.url, *extra)
            try:
                assert "listening on" in line, line
                r = httpx.post(f"http://{listen}/echo", content=b"hello", timeout=30)
                assert r.status_code == expected, (extra, r.text)
                if expected == 502:
                    assert up.received == []
                else:
                    assert up.last().body == b"hello"
            finally:
                stop(proc)
    finally:
        stop_upstream(up, server)


def test_config_file_problems_are_placed(kms, tmp_path):
    cfg = tmp_path / "deploy.toml"
    cfg.write_text('''
[[proxy]]
upstream = "http://127.0.0.1:9"

[[proxy.route]]
request = { action = "sign", key = "app/data" }
''')
    env = {**os.environ, "KMS_HOME": str(kms.home)}
    r = subprocess.run([str(BIN / "kms-proxy"), "--config", str(cfg)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{cfg}: proxy[0].route[0].request.key: sign needs an HMAC, RSA or EC key" in r.stderr


def test_access_log_file_and_metrics_endpoint(kms, upstream, tmp_path):
    listen, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    log = tmp_path / "access.log"
    proc, line = start_proxy(kms, "--listen", listen, "--upstream", upstream.url, "--encrypt-requests", "app/data",
                             "--fields", "ssn", "--access-log", str(log), "--metrics", metrics)
    try:
        assert "listening on" in line, line
        assert httpx.post(f"http://{listen}/x", json={"ssn": "secret-123"}).status_code == 200
        scraped = httpx.get(f"http://{metrics}/metrics").text
        assert 'keyhold_sidecar_requests_total{action="encrypt-fields",outcome="ok"' in scraped
    finally:
        stop(proc)
    [rec] = [json.loads(x) for x in log.read_text().splitlines()]
    assert rec["rule"] == "cli" and rec["outcome"] == "ok" and "secret-123" not in log.read_text()
