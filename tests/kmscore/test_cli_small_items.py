"""Issue 11, item 11: the small things a first hour runs into (real `kms` processes)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

KMS = str(Path(sys.executable).with_name("kms"))
SAMPLE = Path(__file__).resolve().parents[1] / "fsmount" / "data" / "v1"


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KMS_")}


def kms(home: Path, *args: str, input: bytes = b"", cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([KMS, "--home", str(home), *args], input=input, capture_output=True, env=env(),
                          cwd=cwd, timeout=60)


@pytest.fixture
def sample(tmp_path):
    """The frozen fsmount sample (a home and a cipher dir), copied so it can be used."""
    shutil.copytree(SAMPLE, tmp_path / "v1")
    (tmp_path / "v1" / "home" / "root.key").chmod(0o600)
    (tmp_path / "v1" / "home").chmod(0o700)
    return tmp_path / "v1"


def test_fs_decrypt_to_dash_writes_stdout_and_no_file(sample, tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    r = kms(sample / "home", "fs", "decrypt", str(sample / "cipher" / "hello.txt"), "-", cwd=work)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello, keyhold\n"
    assert list(work.iterdir()) == []  # no file named "-"


def test_fs_decrypt_output_file_is_private(sample, tmp_path):
    out = tmp_path / "recovered.txt"
    old = os.umask(0o022)
    try:
        r = kms(sample / "home", "fs", "decrypt", str(sample / "cipher" / "frames.bin"), str(out))
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == bytes(i % 251 for i in range(100000))
    assert out.stat().st_mode & 0o777 == 0o600


def test_fs_decrypt_to_dash_of_a_damaged_file_prints_nothing(sample):
    p = sample / "cipher" / "frames.bin"
    raw = bytearray(p.read_bytes())
    raw[-100] ^= 1  # the last frame: a one-pass decrypt would already have printed the others
    p.write_bytes(bytes(raw))
    r = kms(sample / "home", "fs", "decrypt", str(p), "-")
    assert r.returncode != 0 and r.stdout == b"" and b"failed authentication" in r.stderr


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "h"
    assert kms(h, "init").returncode == 0
    assert kms(h, "create-key", "--alias", "small/aes").returncode == 0
    return h


def test_decrypt_data_base64_flag_is_honoured(home):
    blob = kms(home, "encrypt-data", "small/aes", input=b"\x00\x01binary\xff").stdout
    r = kms(home, "decrypt-data", "--base64", input=blob)
    assert r.returncode == 0, r.stderr
    assert base64.b64decode(r.stdout.strip()) == b"\x00\x01binary\xff"
    raw = kms(home, "decrypt-data", input=blob)  # without the flag: as it was put in
    assert raw.stdout == b"\x00\x01binary\xff"


def test_import_token_goes_only_to_token_out(home, tmp_path):
    assert kms(home, "create-key", "--alias", "small/ext", "--origin", "EXTERNAL").returncode == 0
    token = tmp_path / "token"
    r = kms(home, "get-parameters-for-import", "small/ext", "--public-key-out", str(tmp_path / "wrap.pem"),
            "--token-out", str(token), "--json")
    assert r.returncode == 0, r.stderr
    secret = token.read_text().strip()
    assert secret and secret.encode() not in r.stdout + r.stderr
    assert json.loads(r.stdout)["import_token_file"] == str(token)
    assert token.stat().st_mode & 0o777 == 0o600
