"""Fixtures for the kmscore tests: a real on-disk home, a Kms with a fake clock, the real
`kms` console script as a subprocess, and helpers to wrap key material for import."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from kmscore import Kms

KMS_BIN = str(Path(sys.executable).parent / "kms")
KMS_ENV_VARS = ("KMS_HOME", "KMS_ROOT_KEY", "KMS_PASSPHRASE")
START = 1_800_000_000.0  # 2027-01-15, a fixed "now" for the fake clock
DAY = 86400.0


class FakeClock:
    """A wall clock the test moves by hand (pass as Kms(home, clock=...))."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, days: float = 0.0, seconds: float = 0.0) -> None:
        self.now += days * DAY + seconds


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No root key, passphrase or home from the developer's shell leaks into a test."""
    for name in KMS_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def kms(home, clock):
    with Kms(home, clock=clock) as k:
        yield k


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KMS_ENV_VARS}
    env.update(extra or {})
    return env


def kms_cli(home: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real console script: `kms --home HOME --create-home ARGS...` (stdout/stderr
    as bytes). --create-home: a named home is otherwise only made by `kms init`."""
    return subprocess.run(
        [KMS_BIN, "--home", str(home), "--create-home", *args],
        input=input if input is not None else b"",
        capture_output=True,
        env=clean_env(env),
        timeout=timeout,
    )


@pytest.fixture
def run_kms(home):
    """`run_kms(*args, input=b"...")`: the real console script on this test's home."""
    def run(*args: str, input: bytes | None = None, env: dict[str, str] | None = None):
        return kms_cli(home, *args, input=input, env=env)

    return run


def traced_kms(tmp_path: Path, home: Path, calls: str, *args: str) -> list[str]:
    """The system calls `calls` (strace's -e trace= list) of a real `kms ARGS` run, with
    paths of file descriptors (-y), one call per line (`strace_lines`)."""
    trace = tmp_path / "trace"
    out = subprocess.run(
        ["strace", "-f", "-y", "-qq", "-e", f"trace={calls}", "-o", str(trace), KMS_BIN, "--home", str(home),
         "--create-home", *args],
        capture_output=True, env=clean_env(), timeout=120,
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    return strace_lines(trace)


def strace_lines(trace: Path) -> list[str]:
    """The lines of an `strace -f -o FILE` log, each system call on one line. A call that
    another thread's output interrupted is split in two (`PID call(args <unfinished ...>`,
    later `PID <... call resumed>rest`); it is joined here, where it finished: on a busy
    machine that split is common, and a test parsing lines would miss the call."""
    started: dict[str, str] = {}
    lines = []
    for line in trace.read_text().splitlines():
        pid, _, rest = line.partition(" ")
        rest = rest.lstrip()
        if rest.endswith("<unfinished ...>"):
            started[pid] = rest[: -len("<unfinished ...>")].rstrip()
            continue
        if rest.startswith("<... ") and " resumed>" in rest and pid in started:
            tail = re.sub(r"^([^=]*?)\s+= ", r"\1 = ", rest.split(" resumed>", 1)[1])  # strace pads the result
            line = f"{pid}  {started.pop(pid)}{tail}"
        lines.append(line)
    return lines


def error_lines(stderr: bytes) -> list[str]:
    """The `kms: error:` lines of a CLI run (front-end warnings and notices ignored)."""
    return [l for l in stderr.decode().splitlines() if l.startswith("kms: error:")]


def assert_refused(result: subprocess.CompletedProcess, *needles: str) -> str:
    """A CLI refusal: non-zero exit, exactly one `kms: error:` line, no traceback."""
    err = result.stderr.decode()
    assert result.returncode != 0, (result.stdout, err)
    assert "Traceback" not in err and "internal error" not in err, err
    lines = error_lines(result.stderr)
    assert len(lines) == 1, err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


# -- key material the tests hold ---------------------------------------------------------

_PRIVATE_CACHE: dict[str, object] = {}


def private_key(spec: str):
    """One private key per spec for the whole session (RSA generation is slow)."""
    if spec not in _PRIVATE_CACHE:
        if spec.startswith("RSA"):
            _PRIVATE_CACHE[spec] = rsa.generate_private_key(65537, int(spec.split("_")[1]))
        else:
            curve = {"EC_P256": ec.SECP256R1(), "EC_P384": ec.SECP384R1()}[spec]
            _PRIVATE_CACHE[spec] = ec.generate_private_key(curve)
    return _PRIVATE_CACHE[spec]


def der(private) -> bytes:
    return private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def oaep_wrap(public_pem: str, material: bytes, sha1: bool = False) -> bytes:
    h = hashes.SHA1() if sha1 else hashes.SHA256()
    public = serialization.load_pem_public_key(public_pem.encode())
    return public.encrypt(material, padding.OAEP(padding.MGF1(h), h, None))


def import_material(kms: Kms, key: str, material: bytes, expires_at: float | None = None,
                    algorithm: str | None = None):
    """The whole import flow through the facade, wrapping with `cryptography`.

    Without an algorithm: plain OAEP for material that fits (AES, EC), else (RSA private
    keys) RSA_AES_KEY_WRAP_SHA_256."""
    from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

    if algorithm is None:
        algorithm = "RSAES_OAEP_SHA_256" if len(material) <= 190 else "RSA_AES_KEY_WRAP_SHA_256"
    params = kms.get_parameters_for_import(key, algorithm, "RSA_2048")
    sha1 = algorithm.endswith("SHA_1")
    if algorithm.startswith("RSA_AES_KEY_WRAP"):
        aes = os.urandom(32)
        wrapped = oaep_wrap(params.public_key_pem, aes, sha1) + aes_key_wrap_with_padding(aes, material)
    else:
        wrapped = oaep_wrap(params.public_key_pem, material, sha1)
    return kms.import_key_material(key, params.import_token, wrapped, expires_at)


def material_for(spec: str) -> bytes:
    """Importable material for a spec: 32 random bytes for AES, a DER private key else."""
    if spec == "AES_256":
        return os.urandom(32)
    return der(private_key(spec))


def sqlite_rows(home: Path, sql: str, args: tuple = ()) -> list[tuple]:
    import sqlite3

    db = sqlite3.connect(home / "keys.db", timeout=30)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


@pytest.fixture(scope="session")
def kh():
    """These helpers, as a fixture (two conftest modules cannot both be imported by name)."""
    return _THIS


_THIS = sys.modules[__name__]  # taken at import: later conftest modules reuse the name
