"""An attacker who can write keys.db but lacks the root key: real `sqlite3` CLI edits,
then the real `kms` CLI must refuse the key (or the store) and `kms store verify` must
report it. Also a wiped audit log, a store replaced by an older copy, a deleted or
edited anchor, and the upgrade of a store made before row MACs (schema 1)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kmscore import Kms

SQLITE = shutil.which("sqlite3")
pytestmark = pytest.mark.skipif(SQLITE is None, reason="the sqlite3 CLI is needed (setup.sh installs it)")
VECTORS = Path(__file__).parent / "vectors"


def sql(home: Path, *statements: str) -> None:
    """Edit the store with the real sqlite3 shell, as an attacker would."""
    out = subprocess.run([SQLITE, str(home / "keys.db"), ";\n".join(statements)], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()


@pytest.fixture
def made(home, kh):
    """A home with keys of every kind the edits below target; returns blobs to decrypt."""
    with Kms(home) as kms:
        kms.create_key("t/aes")
        kms.rotate_key("t/aes")
        kms.create_key("t/off")
        off_blob = kms.encrypt_data("t/off", b"secret of t/off")
        kms.disable_key("t/off")
        kms.create_key("t/rsa", "RSA_2048", "ENCRYPT_DECRYPT")
        kms.create_key("t/ext", origin="EXTERNAL")
        kh.import_material(kms, "t/ext", kh.material_for("AES_256"), expires_at=kms.clock() + 86400 * 30)
        kms.create_key("t/del")
        kms.schedule_key_deletion("t/del", 30)
        kms.create_key("t/rot", rotation_days=90)
        kms.create_key("t/re")
        kms.encrypt_data("t/aes", b"x")
    (home / "off.blob").write_bytes(off_blob)
    return {"off_blob": home / "off.blob"}


def key_of(alias: str) -> str:
    return f"(SELECT key_id FROM keys WHERE alias='{alias}')"


EDITS = {
    "re-enable a disabled key": ("t/off", ["UPDATE keys SET state='Enabled' WHERE alias='t/off'"]),
    "RSA key given the other usage": ("t/rsa", ["UPDATE keys SET usage='SIGN_VERIFY' WHERE alias='t/rsa'"]),
    "KMS key made EXTERNAL": ("t/aes", ["UPDATE keys SET origin='EXTERNAL' WHERE alias='t/aes'"]),
    "spec changed": ("t/aes", ["UPDATE keys SET spec='HMAC_256', usage='GENERATE_VERIFY_MAC' WHERE alias='t/aes'"]),
    "import fingerprint cleared": ("t/ext", ["UPDATE keys SET material_fingerprint=NULL WHERE alias='t/ext'"]),
    "material un-expired": ("t/ext", ["UPDATE keys SET material_expires_at=NULL WHERE alias='t/ext'"]),
    "rotation undone": ("t/aes", [
        f"DELETE FROM key_versions WHERE version=2 AND key_id={key_of('t/aes')}",
        "UPDATE keys SET current_version=1 WHERE alias='t/aes'",
    ]),
    "a version row deleted": ("t/aes", [f"DELETE FROM key_versions WHERE version=1 AND key_id={key_of('t/aes')}"]),
    "deletion date moved": ("t/del", ["UPDATE keys SET deletion_date=deletion_date-29*86400 WHERE alias='t/del'"]),
    "deletion cancelled by hand": ("t/del", ["UPDATE keys SET state='Enabled', deletion_date=NULL WHERE alias='t/del'"]),
    "rotation disabled": ("t/rot", ["UPDATE keys SET rotation_interval_days=NULL WHERE alias='t/rot'"]),
    "nonce count reset": ("t/aes", ["UPDATE keys SET nonce_uses='{}' WHERE alias='t/aes'"]),
    "description changed": ("t/aes", ["UPDATE keys SET description='harmless?' WHERE alias='t/aes'"]),
    "row MAC copied from another row": ("t/off", [
        "UPDATE keys SET row_mac=(SELECT row_mac FROM keys WHERE alias='t/aes') WHERE alias='t/off'"]),
    "row MAC removed": ("t/off", ["UPDATE keys SET row_mac=NULL WHERE alias='t/off'"]),
    "aliases swapped": ("t/off", [
        "UPDATE keys SET alias='t/tmp' WHERE alias='t/aes'",
        "UPDATE keys SET alias='t/aes' WHERE alias='t/off'",
        "UPDATE keys SET alias='t/off' WHERE alias='t/tmp'",
    ]),
}


@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
def test_edited_key_row_is_refused_and_reported(made, home, run_kms, kh, edit):
    alias, statements = EDITS[edit]
    sql(home, *statements)
    kh.assert_refused(run_kms("describe-key", alias), "outside keyhold")
    kh.assert_refused(run_kms("list-keys"), "outside keyhold")
    report = run_kms("store", "verify")
    assert report.returncode == 1 and b"key store BROKEN" in report.stdout, report


def test_re_enabled_key_does_not_decrypt(made, home, run_kms, kh):
    sql(home, "UPDATE keys SET state='Enabled' WHERE alias='t/off'")
    out = run_kms("decrypt-data", "--in", str(made["off_blob"]))
    kh.assert_refused(out, "fails authentication")
    assert b"secret of t/off" not in out.stdout


def test_key_row_replaced_by_its_older_copy_is_refused(made, home, run_kms, kh):
    """An older row has a valid MAC (it was once true): the head's digest of all rows catches it."""
    shutil.copy(home / "keys.db", home / "old.db")
    with Kms(home) as kms:
        kms.disable_key("t/re")
    sql(home, f"ATTACH '{home / 'old.db'}' AS old",
        "DELETE FROM keys WHERE alias='t/re'",
        "INSERT INTO keys SELECT * FROM old.keys WHERE alias='t/re'")
    kh.assert_refused(run_kms("encrypt-data", "t/re", input=b"x"), "outside keyhold")
    report = run_kms("store", "verify")
    assert report.returncode == 1 and b"do not match the log head" in report.stdout, report


@pytest.mark.parametrize("statement", [
    "DELETE FROM keys WHERE alias='t/del'",
    "INSERT INTO keys(key_id, alias, spec, usage, origin, state, created_at, current_version) "
    "VALUES('5b1e1a3e-3a8b-4d0a-9f43-1f6f4b8e9c11', 't/new', 'AES_256', 'ENCRYPT_DECRYPT', 'KMS', 'Enabled', 0, 0)",
], ids=["row deleted", "row inserted"])
def test_key_rows_added_or_removed_are_detected(made, home, run_kms, kh, statement):
    sql(home, statement)
    kh.assert_refused(run_kms("describe-key", "t/aes"), "outside keyhold")
    assert run_kms("store", "verify").returncode == 1


# -- the audit log: wipe, cut, rollback ---------------------------------------------------

def test_audit_wipe_is_detected(made, home, run_kms, kh):
    """The issue's exact attack: `audit verify` printed "audit log OK: 0 records"."""
    sql(home, "delete from audit", "delete from meta where name='audit_head'")
    out = run_kms("audit", "verify")
    assert out.returncode == 1 and b"audit log OK" not in out.stdout, out
    assert b"rolled back or its audit log wiped" in out.stdout
    kh.assert_refused(run_kms("encrypt-data", "t/aes", input=b"x"), "log head is missing")


def test_audit_wipe_with_keys_gone_too_is_detected(made, home, run_kms, kh):
    """Everything but the anchor wiped: only the anchor knows there was a log."""
    sql(home, "delete from audit", "delete from meta where name='audit_head'", "delete from keys",
        "delete from key_versions")
    out = run_kms("audit", "verify")
    assert out.returncode == 1 and b"rolled back or its audit log wiped" in out.stdout, out


def test_store_replaced_by_older_copy_is_detected_then_accepted(made, home, run_kms, kh):
    shutil.copy(home / "keys.db", home / "old.db")
    with Kms(home) as kms:
        kms.disable_key("t/re")  # revoked ...
    shutil.copy(home / "old.db", home / "keys.db")  # ... and brought back by an old copy
    kh.assert_refused(run_kms("encrypt-data", "t/re", input=b"x"), "rolled back")
    report = run_kms("store", "verify")
    assert report.returncode == 1 and b"rolled back" in report.stdout, report
    # the operator restored that copy on purpose: accept it, recorded in the log
    out = run_kms("store", "reanchor", "--accept-rollback")
    assert out.returncode == 0, out
    assert run_kms("store", "verify").returncode == 0
    assert run_kms("encrypt-data", "t/re", input=b"x").returncode == 0
    records = json.loads(run_kms("audit", "list", "--json").stdout)
    assert any(r["operation"] == "StoreReanchored" for r in records)


def test_reanchor_never_accepts_a_forged_row(made, home, run_kms, kh):
    sql(home, "UPDATE keys SET state='Enabled' WHERE alias='t/off'")
    kh.assert_refused(run_kms("store", "reanchor", "--accept-rollback"), "cannot be accepted")
    kh.assert_refused(run_kms("describe-key", "t/off"), "fails authentication")


def test_anchor_deleted_or_edited_is_refused(made, home, run_kms, kh):
    anchor = home / "keys.anchor"
    saved = anchor.read_bytes()
    anchor.unlink()
    kh.assert_refused(run_kms("list-keys"), "anchor file")
    data = json.loads(saved)
    data["seq"] = 1
    anchor.write_text(json.dumps(data))
    kh.assert_refused(run_kms("list-keys"), "was altered")
    anchor.write_bytes(saved)
    assert run_kms("list-keys").returncode == 0


def test_store_deleted_while_anchor_remains_is_refused(made, home, run_kms, kh):
    (home / "keys.db").unlink()
    kh.assert_refused(run_kms("list-keys"), "missing but its anchor")
    assert not (home / "keys.db").exists()


# -- stores made before row MACs ------------------------------------------------------------

@pytest.fixture
def legacy(tmp_path) -> Path:
    home = tmp_path / "legacy"
    shutil.copytree(VECTORS / "store-v1", home)
    (home / "root.key").chmod(0o600)
    return home


def test_schema_1_store_is_upgraded_on_first_open(legacy, kh):
    expected = json.loads((legacy / "expected.json").read_text())
    (legacy / "blob").write_bytes(bytes.fromhex(expected["blob"]))
    out = kh.kms_cli(legacy, "decrypt-data", "--in", str(legacy / "blob"), "--context", "k=v")
    assert out.returncode == 0 and out.stdout == b"legacy plaintext", out
    assert b"upgraded key store" in out.stderr
    assert (legacy / "keys.anchor").exists()
    assert kh.kms_cli(legacy, "store", "verify").returncode == 0
    (legacy / "off").write_bytes(bytes.fromhex(expected["off_blob"]))
    kh.assert_refused(kh.kms_cli(legacy, "decrypt-data", "--in", str(legacy / "off")), "Disabled")
    audit = kh.kms_cli(legacy, "audit", "verify")
    assert audit.returncode == 0 and b"audit log OK" in audit.stdout, audit
    # from now on the rows are bound: the same edit as above is refused
    sql(legacy, "UPDATE keys SET state='Enabled' WHERE alias='legacy/off'")
    kh.assert_refused(kh.kms_cli(legacy, "decrypt-data", "--in", str(legacy / "off")), "fails authentication")


def test_upgraded_store_cannot_be_downgraded_back_to_schema_1(legacy, tmp_path, kh):
    shutil.copy(legacy / "keys.db", tmp_path / "v1.db")
    assert kh.kms_cli(legacy, "list-keys").returncode == 0  # upgraded and anchored
    shutil.copy(tmp_path / "v1.db", legacy / "keys.db")  # an old, unauthenticated copy back
    kh.assert_refused(kh.kms_cli(legacy, "list-keys"), "older copy")


def test_running_process_refuses_edits_at_its_next_refresh(made, home, kh):
    """A long-running process (a mount, a proxy) holds keys in its cache: an edited row is
    refused as soon as the process reloads it, and a row deleted or replayed stops every
    operation at the next refresh, not only at the next open."""
    from kmscore import KeyUnavailable, StoreError

    kms = Kms(home, refresh_interval=0)
    try:
        assert kms.decrypt_data(kms.encrypt_data("t/aes", b"ok")) == b"ok"
        with pytest.raises(KeyUnavailable):
            kms.encrypt_data("t/off", b"x")
        sql(home, "UPDATE keys SET state='Enabled' WHERE alias='t/off'",
            "UPDATE meta SET value = value + 1 WHERE name='generation'")  # make it reload
        with pytest.raises(StoreError, match="fails authentication"):
            kms.encrypt_data("t/off", b"x")
        assert kms.encrypt_data("t/aes", b"other keys still work")
        sql(home, "DELETE FROM keys WHERE alias='t/del'")
        with pytest.raises(StoreError, match="outside keyhold"):
            kms.encrypt_data("t/aes", b"cached key, tampered store")
    finally:
        with pytest.raises(StoreError):  # its last records are not written over a tampered store
            kms.close()


@pytest.mark.parametrize("statement", [
    "UPDATE import_tokens SET expires_at = expires_at + 86400 * 365",
    "UPDATE import_tokens SET algorithm = 'RSAES_OAEP_SHA_1'",
], ids=["token extended", "token algorithm changed"])
def test_edited_import_token_is_refused(home, kh, statement):
    from kmscore import KeyImportError

    material = kh.material_for("AES_256")
    with Kms(home) as kms:
        kms.create_key("ext/t", origin="EXTERNAL")
        params = kms.get_parameters_for_import("ext/t")
    sql(home, statement)
    with Kms(home) as kms, pytest.raises(KeyImportError, match="failed authentication"):
        kms.import_key_material("ext/t", params.import_token, kh.oaep_wrap(params.public_key_pem, material))
