"""`[serve]` in the deployment file: validated like the rest (`kms check`, with the key
path of each problem), started by `kms up` (banner, status), reloaded on an edit (a new
port), an invalid edit keeps the running server, SIGTERM stops it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from kmscore.config import ConfigError, load_config
from tests.serve.conftest import ALLOW_ALL, KMS_BIN, AccessKey, clean_env, free_port

WAIT = 30.0


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "deploy.toml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as e:
        return [f"{p.path}: {p.message}" for p in e.problems]
    return []


@pytest.mark.parametrize("text, problem", [
    ('[serve]\nlisten = "nope"\n', "serve.listen: expected HOST:PORT, got 'nope'"),
    ('[serve]\nlisten = "0.0.0.0:8443"\nplain_http = true\n', "plain_http is only allowed on loopback, not on 0.0.0.0"),
    ('[serve]\ncert = "c.pem"\n', "serve: cert and key go together"),
    ('[serve]\nplain_http = true\ncert = "c.pem"\nkey = "k.pem"\n', "plain_http = true serves no certificate"),
    ('[serve]\nlisten = "127.0.0.1:8443"\nport = 1\n', "serve.port"),
    ('[[serve]]\nlisten = "127.0.0.1:8443"\n', "serve: expected a table ([serve])"),
    ('[serve]\nrequest_timeout = 0\n', "serve.request_timeout"),
])
def test_bad_serve_tables_are_refused_at_their_key_path(tmp_path, text, problem):
    found = problems_of(tmp_path, text)
    assert any(problem in p for p in found), found


def test_a_good_serve_table_is_one_entry_with_paths_next_to_the_file(tmp_path):
    path = tmp_path / "deploy.toml"
    path.write_text('[serve]\nlisten = "[::1]:9443"\ncert = "tls/c.pem"\nkey = "tls/k.pem"\n')
    (entry,) = load_config(path).entries("serve")
    assert entry.listen == "[::1]:9443" and entry.cert == str(tmp_path / "tls" / "c.pem")
    path.write_text('[[keys]]\nalias = "a/b"\n')
    assert load_config(path).entries("serve") == ()


def kms_cmd(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([KMS_BIN, *args], capture_output=True, env=clean_env(), timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=cwd)


def test_kms_check_loads_the_certificate(tmp_path):
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    path = tmp_path / "deploy.toml"
    path.write_text('[kms]\nhome = "home"\n[serve]\ncert = "c.pem"\nkey = "k.pem"\n')
    out = kms_cmd("check", str(path))
    err = out.stderr.decode()
    assert out.returncode == 2 and f"{path}: serve.cert: cannot use the TLS certificate" in err, err
    path.write_text('[kms]\nhome = "home"\n[serve]\nlisten = "127.0.0.1:1"\nplain_http = true\n')
    out = kms_cmd("check", str(path))
    assert out.returncode == 0 and b"1 serve" in out.stdout, out.stderr


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(what: str, predicate, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"kms up exited {proc.returncode} while waiting for {what}: {log.read_text()}")
        assert time.monotonic() < deadline, f"{what} did not happen within {WAIT}s: {log.read_text()}"
        time.sleep(0.05)


def test_kms_up_serves_reloads_and_stops(tmp_path):
    port, other = free_port(), free_port()
    config = tmp_path / "deploy.toml"
    body = '[kms]\nhome = "home"\n[serve]\nlisten = "127.0.0.1:{port}"\nplain_http = true\n'
    config.write_text(body.format(port=port))
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([KMS_BIN, "up", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                env=clean_env(), stdin=subprocess.DEVNULL, cwd=tmp_path)
    try:
        wait_for("the banner", lambda: b"  stop " in log.read_bytes(), proc, log)
        assert f"serve      http://127.0.0.1:{port} (plain HTTP, loopback only)" in log.read_text()
        policy = tmp_path / "all.toml"
        policy.write_text(ALLOW_ALL)
        made = kms_cmd("--deployment", str(config), "access-key", "create", "--name", "up", "--policy", str(policy), "--json")
        assert made.returncode == 0, made.stderr
        import json

        data = json.loads(made.stdout)
        key = AccessKey(data["access_key_id"], data["secret"])
        assert generate(port, key) == 8
        status = kms_cmd("status", str(config))
        assert status.returncode == 0 and f"serve 127.0.0.1:{port}" in status.stdout.decode()

        config.write_text(body.format(port=other))  # an edit: the listener moves
        wait_for("the new port", lambda: listening(other) and not listening(port), proc, log)
        assert generate(other, key) == 8

        config.write_text(body.format(port=other).replace("plain_http = true", "plain_http = 3"))
        wait_for("the refusal", lambda: b"reload refused" in log.read_bytes(), proc, log)
        assert generate(other, key) == 8  # still serving the last good config

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0
        assert not listening(other) and "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def generate(port: int, key: AccessKey) -> int:
    import boto3
    from botocore.config import Config

    client = boto3.client("kms", endpoint_url=f"http://127.0.0.1:{port}", region_name="eu-west-1",
                          aws_access_key_id=key.access_key_id, aws_secret_access_key=key.secret,
                          config=Config(retries={"max_attempts": 1}))
    return len(client.generate_random(NumberOfBytes=8)["Plaintext"])


def test_a_taken_port_fails_kms_up_at_serve(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        config = tmp_path / "deploy.toml"
        config.write_text(f'[kms]\nhome = "home"\n[serve]\nlisten = "127.0.0.1:{busy.getsockname()[1]}"\n')
        out = kms_cmd("up", str(config), cwd=tmp_path)
    finally:
        busy.close()
    err = out.stderr.decode()
    assert out.returncode == 2 and "serve: could not start: cannot listen on" in err and "Traceback" not in err, err
    assert os.path.exists(tmp_path / "home")


def test_kms_serve_with_deployment_runs_its_serve_table(tmp_path):
    port = free_port()
    config = tmp_path / "deploy.toml"
    config.write_text(f'[kms]\nhome = "home"\n[serve]\nlisten = "127.0.0.1:{port}"\nplain_http = true\n')
    assert kms_cmd("--home", str(tmp_path / "home"), "init").returncode == 0
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([KMS_BIN, "--deployment", str(config), "serve"], stdout=out, stderr=subprocess.STDOUT,
                                env=clean_env(), stdin=subprocess.DEVNULL)
    try:
        wait_for("the listener", lambda: b"listening on" in log.read_bytes(), proc, log)
        assert f"http://127.0.0.1:{port} (plain HTTP" in log.read_text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = kms_cmd("--deployment", str(config), "serve", "--print-fingerprint")
    assert out.returncode == 1 and b"with plain HTTP there is no certificate" in out.stderr
