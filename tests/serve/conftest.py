"""Fixtures for kms serve: a real `kms serve` process on 127.0.0.1 over a real key store,
and access keys issued by the real `kms access-key create`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

KMS_BIN = str(Path(sys.executable).parent / "kms")
KMS_ENV_VARS = ("KMS_HOME", "KMS_ROOT_KEY", "KMS_PASSPHRASE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS")
ALLOW_ALL = '[[allow]]\noperations = ["*"]\nkeys = ["*"]\n'


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KMS_ENV_VARS}
    env.update(extra or {})
    return env


def kms(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([KMS_BIN, "--home", str(home), "--create-home", *args],
                          capture_output=True, env=clean_env(), timeout=timeout, stdin=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    secret: str


@dataclass
class Server:
    home: Path
    url: str
    proc: subprocess.Popen
    log: Path

    def access_key(self, policy: str = ALLOW_ALL, name: str = "test") -> AccessKey:
        """Issue an access key with the real CLI (the server reads new keys at once)."""
        path = self.home.parent / f"policy-{name}-{time.monotonic_ns()}.toml"
        path.write_text(policy)
        out = kms(self.home, "access-key", "create", "--name", name, "--policy", str(path), "--json")
        assert out.returncode == 0, out.stderr.decode()
        data = json.loads(out.stdout)
        return AccessKey(data["access_key_id"], data["secret"])

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        """`with start_server(home) as s:` stops it however the block ends."""
        stop_server(self)

    def boto3(self, key: AccessKey, service: str = "kms", region: str = "eu-west-1"):
        import boto3
        from botocore.config import Config

        return boto3.client(service, endpoint_url=self.url, region_name=region,
                            aws_access_key_id=key.access_key_id, aws_secret_access_key=key.secret,
                            config=Config(retries={"max_attempts": 1}))


def start_server(home: Path, *extra: str, timeout: float = 30) -> Server:
    """`kms serve` (plain HTTP on loopback) on a fresh port of an initialised home."""
    assert kms(home, "init").returncode in (0, 1)
    return start_server_at(home, free_port(), *extra, timeout=timeout)


def stop_server(server: Server) -> None:
    stop_process(server.proc)


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM (a server flushes its audit journal on it), SIGKILL if it is not gone
    within `timeout`; nothing if it has exited already."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in KMS_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server(tmp_path):
    """A running `kms serve` (plain HTTP on loopback) on a fresh key store."""
    with start_server(tmp_path / "home") as s:
        yield s


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    """One `kms serve` for a whole test module (its tests use their own keys): starting
    one takes a second, so a module whose tests can share a key store shares this."""
    with start_server(tmp_path_factory.mktemp("serve") / "home") as s:
        yield s


# -- serve-remote: RemoteKms clients of a server --------------------------------------------


def remote_kms(server: Server, key: AccessKey | None = None, **options):
    """A kmscore.remote.RemoteKms on `server`, as `key` (default: a new allow-all key)."""
    from kmscore.remote import Credentials, RemoteKms

    key = key or server.access_key()
    return RemoteKms(server.url, Credentials(key.access_key_id, key.secret), **options)


def start_server_at(home: Path, port: int, *extra: str, timeout: float = 30) -> Server:
    """`kms serve` on a given port (e.g. the one a stopped server had: a restart)."""
    log = home.parent / f"serve-{port}-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([KMS_BIN, "--home", str(home), "serve", "--listen", f"127.0.0.1:{port}",
                                 "--plain-http", *extra], stdout=out, stderr=subprocess.STDOUT,
                                env=clean_env(), stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"kms serve exited {proc.returncode}: {log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return Server(home, f"http://127.0.0.1:{port}", proc, log)
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError(f"kms serve did not listen on {port} within {timeout}s: {log.read_text()}")


def restart_server(server: Server) -> Server:
    """Stop `server` (SIGTERM; nothing if it is stopped already) and start it again on
    the same port and key store."""
    stop_server(server)
    return start_server_at(server.home, int(server.url.rsplit(":", 1)[1]))


def write_access_key_file(path: Path, key: AccessKey) -> Path:
    """What `kms access-key create --json` printed, saved 0600 (as an operator would)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"access_key_id": key.access_key_id, "secret": key.secret}, f)
    return path
