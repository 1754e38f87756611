"""The root of trust: key file (0600), environment variable, passphrase (scrypt);
a wrong root key or a key file others can read is refused with a clear error."""

from __future__ import annotations

import base64
import os
import pickle
import stat

import pytest
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from kmscore import Kms, StoreError
from kmscore.rootkey import SCRYPT_PARAMS, RootKey


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_key_file_created_0600_and_reused(home, clock):
    with Kms(home, clock=clock) as kms:
        blob = kms.encrypt_data("fsmount/default", b"x")
        assert any("root key" in n for n in kms.notices) and any("key store" in n for n in kms.notices)
        kms.flush_audit()
        for extra in ("keys.db-wal", "keys.db-shm"):  # while open: SQLite's side files
            if (home / extra).exists():
                assert mode(home / extra) & 0o077 == 0, (extra, oct(mode(home / extra)))
    key_file = home / "root.key"
    assert mode(key_file) == 0o600
    assert mode(home) == 0o700
    assert mode(home / "keys.db") == 0o600
    assert len(base64.b64decode(key_file.read_text().strip())) == 32
    before = key_file.read_bytes()
    with Kms(home, clock=clock) as kms:
        assert kms.decrypt_data(blob) == b"x"
        assert kms.notices == []
    assert key_file.read_bytes() == before


def test_kms_init(run_kms, home):
    r = run_kms("init")
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert str(home / "root.key") in err and str(home / "keys.db") in err
    assert mode(home / "root.key") == 0o600
    r = run_kms("init")
    assert r.returncode == 0 and "already exists" in r.stderr.decode()


def test_root_key_from_environment(home, clock, monkeypatch):
    key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("KMS_ROOT_KEY", key)
    with Kms(home, clock=clock) as kms:
        blob = kms.encrypt_data("sidecar/default", b"env")
    assert not (home / "root.key").exists()
    with Kms(home, clock=clock) as kms:
        assert kms.decrypt_data(blob) == b"env"
    monkeypatch.setenv("KMS_ROOT_KEY", base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(StoreError, match=r"does not open the key store"):
        Kms(home, clock=clock)
    monkeypatch.delenv("KMS_ROOT_KEY")
    with pytest.raises(StoreError, match="does not exist"):  # no key file is invented for an existing store
        Kms(home, clock=clock)
    assert not (home / "root.key").exists()


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"short").decode(), base64.b64encode(bytes(33)).decode()])
def test_malformed_environment_root_key(home, monkeypatch, value):
    monkeypatch.setenv("KMS_ROOT_KEY", value)
    with pytest.raises(StoreError, match="32-byte key"):
        Kms(home)


def test_passphrase_through_scrypt(home, clock, monkeypatch, kh):
    monkeypatch.setenv("KMS_PASSPHRASE", "correct horse battery staple")
    with Kms(home, clock=clock) as kms:
        blob = kms.encrypt_data("fsmount/default", b"pw")
    assert not (home / "root.key").exists()
    with Kms(home, clock=clock) as kms:
        assert kms.decrypt_data(blob) == b"pw"
    # the root key is scrypt(passphrase, the store's salt): the same key given directly opens it
    (salt,) = kh.sqlite_rows(home, "SELECT value FROM meta WHERE name='kdf_salt'")[0]
    assert len(salt) >= 16
    derived = Scrypt(salt=salt, length=32, **SCRYPT_PARAMS).derive(b"correct horse battery staple")
    assert SCRYPT_PARAMS["n"] * SCRYPT_PARAMS["r"] * 128 >= 64 * 2**20  # memory-hard: >= 64 MiB
    monkeypatch.delenv("KMS_PASSPHRASE")
    monkeypatch.setenv("KMS_ROOT_KEY", base64.b64encode(derived).decode())
    with Kms(home, clock=clock) as kms:
        assert kms.decrypt_data(blob) == b"pw"
    monkeypatch.delenv("KMS_ROOT_KEY")
    monkeypatch.setenv("KMS_PASSPHRASE", "wrong passphrase")
    with pytest.raises(StoreError, match="passphrase"):
        Kms(home, clock=clock)


def test_two_stores_with_one_passphrase_have_different_keys(tmp_path, monkeypatch, kh):
    monkeypatch.setenv("KMS_PASSPHRASE", "same passphrase")
    for name in ("a", "b"):
        with Kms(tmp_path / name):
            pass
    salts = [kh.sqlite_rows(tmp_path / n, "SELECT value FROM meta WHERE name='kdf_salt'")[0][0] for n in "ab"]
    assert salts[0] != salts[1]


def test_wrong_key_file_is_a_clear_error(home, run_kms, kh):
    with Kms(home) as kms:
        kms.create_key("app/db")
    (home / "root.key").write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    with pytest.raises(StoreError, match="does not open the key store"):
        Kms(home)
    line = kh.assert_refused(run_kms("list-keys"), "root key", "does not open")
    assert str(home / "root.key") in line


@pytest.mark.parametrize("bits", [0o640, 0o604, 0o644, 0o660])
def test_key_file_readable_by_others_is_refused(home, run_kms, kh, bits):
    with Kms(home) as kms:
        kms.create_key("app/db")
    os.chmod(home / "root.key", bits)
    with pytest.raises(StoreError, match="readable by others"):
        Kms(home)
    if bits == 0o640:  # through the CLI once
        kh.assert_refused(run_kms("describe-key", "app/db"), "chmod 600")
    os.chmod(home / "root.key", 0o600)
    with Kms(home) as kms:
        assert kms.describe_key("app/db").alias == "app/db"


def test_garbage_key_file_is_refused(home, kh, run_kms):
    home.mkdir(parents=True)
    fd = os.open(home / "root.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"this is not a key\n")
    os.close(fd)
    with pytest.raises(StoreError, match="32-byte key"):
        Kms(home)
    kh.assert_refused(run_kms("list-keys"), "32-byte key")


def test_explicit_root_key_file_option(home, tmp_path, run_kms):
    key_file = tmp_path / "elsewhere.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, base64.b64encode(os.urandom(32)) + b"\n")
    os.close(fd)
    r = run_kms("--root-key-file", str(key_file), "create-key", "--alias", "app/db")
    assert r.returncode == 0, r.stderr
    assert not (home / "root.key").exists()
    assert run_kms("--root-key-file", str(key_file), "describe-key", "app/db").returncode == 0


def test_root_key_is_neither_printed_nor_pickled():
    root = RootKey(b"\x42" * 32)
    assert "42" not in repr(root) and "B" * 4 not in repr(root)
    with pytest.raises(TypeError):
        pickle.dumps(root)
