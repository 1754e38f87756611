"""Edges of the input rules: aliases (full match, no control characters), descriptions
(no terminal escapes, never printed raw), import expiry (NaN, infinity, overflow),
expired material (never served from the data-key cache; swept without any other process),
non-UTF-8 arguments, duplicate context keys, and a Python API that raises only
kmscore's own errors. Real `kms` processes on real stores; the Python API for the rest."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time

import pytest

from kmscore import InvalidRequest, KeyUnavailable, Kms, KmsError
from kmscore.dkcache import DataKeyCache

DAY = 86400.0


# -- aliases and descriptions ----------------------------------------------------------------
@pytest.mark.parametrize("alias", ["fsmount/default\n", "c/AES_256\n", "app/db\r", "app\t/db", "app/\x1b[2Jdb", "app/db\u2028"])
def test_aliases_must_match_in_full(home, run_kms, kh, alias):
    kh.kms_cli(home, "create-key", "--alias", "c/AES_256")
    r = run_kms("create-key", "--alias", alias)
    kh.assert_refused(r, "invalid alias")
    with Kms(home) as kms:
        assert [k.alias for k in kms.list_keys()] == ["c/AES_256"]
        kms.create_key("app/x")
        for bad in (alias, alias.replace("\n", "\x00"), "app/db\x00"):
            with pytest.raises(InvalidRequest):
                kms.update_key_alias("app/x", bad)
            with pytest.raises(InvalidRequest):
                kms.create_key(bad)


@pytest.mark.parametrize("description", ["\x1b]0;pwned\x07", "two\nlines", "bell\x07", "rtl \u202e override", "c1 \x9b"])
def test_descriptions_hold_no_control_characters(home, run_kms, kh, description):
    kh.assert_refused(run_kms("create-key", "--alias", "app/a", "--description", description), "control character")
    with Kms(home) as kms:
        kms.create_key("app/b")
        with pytest.raises(InvalidRequest, match="control character"):
            kms.update_key_description("app/b", description)
        assert kms.describe_key("app/b").description == ""


def test_escapes_already_in_a_store_are_never_printed_raw(home, run_kms, kh):
    with Kms(home) as kms:
        key = kms.create_key("app/a").key_id
        # as a store from before input validation holds it: the row is MAC'd (a row edited
        # with sqlite3 behind keyhold's back is refused outright, see test_store_tamper)
        with kms._store.write():
            kms._store.update_key(key, description="\x1b[31mred\x1b[0m\nforged: line")
    for args in (["describe-key", "app/a"], ["list-keys"], ["audit", "list"]):
        r = run_kms(*args)
        assert r.returncode == 0, r.stderr
        assert b"\x1b" not in r.stdout and b"\nforged" not in r.stdout, (args, r.stdout)
    assert b"\\x1b[31mred" in run_kms("describe-key", "app/a").stdout


# -- import expiry -----------------------------------------------------------------------------
def _import_files(tmp_path, home, kh):
    """An external key, wrapping parameters and wrapped material, all through the CLI."""
    assert kh.kms_cli(home, "create-key", "--alias", "app/ext", "--origin", "EXTERNAL").returncode == 0
    pub, tok = tmp_path / "wrap.pem", tmp_path / "token"
    r = kh.kms_cli(home, "get-parameters-for-import", "app/ext", "--public-key-out", str(pub), "--token-out", str(tok))
    assert r.returncode == 0, r.stderr
    mat = tmp_path / "material.bin"
    mat.write_bytes(kh.oaep_wrap(pub.read_text(), os.urandom(32)))
    return tok, mat


@pytest.mark.parametrize("expires", ["+nan", "+inf", "+1e400", "+-3", "99999-01-01"])  # +NaN, +infinity, +0: same paths
def test_an_impossible_expiry_is_refused_and_the_store_stays_whole(tmp_path, home, kh, expires):
    tok, mat = _import_files(tmp_path, home, kh)
    r = kh.kms_cli(home, "import-key-material", "app/ext", "--import-token", str(tok), "--material", str(mat),
                   "--expires", expires)
    kh.assert_refused(r, "expiry")
    r = kh.kms_cli(home, "list-keys")
    assert r.returncode == 0 and b"PendingImport" in r.stdout, r.stderr
    r = kh.kms_cli(home, "import-key-material", "app/ext", "--import-token", str(tok), "--material", str(mat),
                   "--expires", "+30")
    assert r.returncode == 0, r.stderr  # the token was not used up by the refusal
    assert kh.kms_cli(home, "list-keys").returncode == 0


@pytest.mark.parametrize("expires_at", [float("nan"), float("inf"), float("-inf"), 1e400, 1e300, "2030", True])
def test_the_api_refuses_an_impossible_expiry(kms, kh, expires_at):
    kms.create_key("app/ext", origin="EXTERNAL")
    with pytest.raises(InvalidRequest, match="expiry"):
        kh.import_material(kms, "app/ext", os.urandom(32), expires_at)
    assert kms.describe_key("app/ext").state.value == "PendingImport"
    assert all(k.to_dict() for k in kms.list_keys())


def test_expired_material_is_never_served_from_the_data_key_cache(home, clock, kh):
    """The cache's own clock does not move at all: only the material's expiry passes."""
    with Kms(home, clock=clock) as kms:
        kms.create_key("app/ext", origin="EXTERNAL")
        kh.import_material(kms, "app/ext", os.urandom(32), clock.now + 100)
        frozen = time.monotonic()
        cache = DataKeyCache(kms, revocation_bound=3600, clock=lambda: frozen)
        dk = kms.create_datakey("app/ext")
        assert cache.unwrap(dk.ciphertext) == dk.plaintext
        clock.advance(seconds=99)
        assert cache.unwrap(dk.ciphertext) == dk.plaintext
        clock.advance(seconds=1)  # now == expiry
        with pytest.raises(KeyUnavailable, match="expired"):
            cache.unwrap(dk.ciphertext)


def test_expired_material_is_swept_by_kms_maintain_alone(home, kh):
    """No process opens the store but the timer's `kms maintain`."""
    behind = time.time() - 2 * DAY
    with Kms(home, clock=lambda: behind) as kms:
        key = kms.create_key("app/ext", origin="EXTERNAL").key_id
        kh.import_material(kms, "app/ext", os.urandom(32), time.time() - DAY)
    assert kh.sqlite_rows(home, "SELECT count(*) FROM key_versions WHERE key_id = ?", (key,)) == [(1,)]
    r = kh.kms_cli(home, "maintain")
    assert r.returncode == 0, r.stderr
    assert kh.sqlite_rows(home, "SELECT count(*) FROM key_versions WHERE key_id = ?", (key,)) == [(0,)]
    assert kh.sqlite_rows(home, "SELECT state FROM keys WHERE key_id = ?", (key,)) == [("PendingImport",)]


# -- non-UTF-8 arguments, duplicate context keys ------------------------------------------
def _cli_bytes(kh, home, *args: bytes | str, input: bytes = b"") -> subprocess.CompletedProcess:
    argv = [os.fsencode(kh.KMS_BIN), b"--home", os.fsencode(home), *[a if isinstance(a, bytes) else a.encode() for a in args]]
    return subprocess.run(argv, input=input, capture_output=True, env=kh.clean_env(), timeout=60)


@pytest.mark.parametrize(
    "args",
    [
        [b"create-key", b"--alias", b"app/\xff"],
        [b"create-key", b"--description", b"caf\xe9"],
        [b"describe-key", b"app/\xff"],
        [b"encrypt-data", b"app/aes", b"--context", b"user=\xff"],
        [b"encrypt-data", b"app/\xc3"],
        [b"update-key-description", b"app/aes", b"\xfe\xff"],
    ],
)
def test_non_utf8_arguments_get_a_clear_error(home, kh, args):
    with Kms(home) as kms:
        kms.create_key("app/aes")
    r = _cli_bytes(kh, home, *args, input=b"data")
    kh.assert_refused(r)
    assert b"UnicodeEncodeError" not in r.stderr


def test_duplicate_context_keys_are_refused(run_kms, kh):
    run_kms("create-key", "--alias", "app/aes")
    r = run_kms("encrypt-data", "app/aes", "--context", "tenant=a", "--context", "tenant=b", input=b"x")
    kh.assert_refused(r, "twice")
    assert r.stdout == b""


# -- the Python API raises kmscore's errors only ------------------------------------------
def test_the_python_api_raises_only_kmscore_errors(home, tmp_path):
    kms = Kms(home)
    kms.create_key("app/aes")
    kms.create_key("app/ec", "EC_P256")
    blob = kms.encrypt_data("app/aes", b"x")
    calls = [
        lambda: kms.encrypt_data("app/aes", "text, not bytes"),
        lambda: kms.encrypt_data("app/aes", b"x", {"k": 1}),
        lambda: kms.encrypt_data("app/aes", b"x", ["not", "a", "mapping"]),
        lambda: kms.encrypt_data(42, b"x"),
        lambda: kms.decrypt_data(12345),
        lambda: kms.decrypt_data(blob, {"k\udcff": "v"}),
        lambda: kms.create_datakey("app/aes", "256"),
        lambda: kms.sign("app/ec", "text", "ECDSA_SHA_256"),
        lambda: kms.verify("app/ec", b"m", 5, "ECDSA_SHA_256"),
        lambda: kms.generate_mac("app/aes", None),
        lambda: kms.gen_random(3.5),
        lambda: kms.gen_random("8"),
        lambda: kms.create_key(alias=5),
        lambda: kms.create_key("app/x", description=b"bytes"),
        lambda: kms.create_key("app/y", rotation_days="90"),
        lambda: kms.describe_key("app/\udcff"),
        lambda: kms.schedule_key_deletion("app/aes", "7"),
        lambda: kms.enable_key_rotation("app/aes", 1e400),
        lambda: kms.get_parameters_for_import(["app/aes"]),
        lambda: kms.import_key_material("app/aes", None, b""),
        lambda: kms.key_usable("app/aes", "no such op"),
        lambda: kms.audit_records("ten"),
        lambda: Kms(12345),
        lambda: Kms(home, refresh_interval="soon"),
    ]
    for i, call in enumerate(calls):
        try:
            call()
        except KmsError:
            pass
        except Exception as e:  # noqa: BLE001 - exactly what must not happen
            pytest.fail(f"call {i} raised {type(e).__name__}: {e}")
    kms.close()
    for call in (lambda: kms.list_keys(), lambda: kms.describe_key("app/aes"), lambda: kms.rotate_key("app/aes")):
        with pytest.raises(KmsError):
            call()  # the store connection is closed: StoreError, not sqlite3.ProgrammingError
