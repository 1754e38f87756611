"""The audit log: every operation recorded with its outcome; `kms audit verify` detects
an edited row, a missing middle row and a cut tail (tampering done with sqlite3)."""

from __future__ import annotations

import sqlite3
import time

import pytest

from kmscore import InvalidCiphertext, KeyRuleViolation, KeyUnavailable, Kms, NotFound


def records(kms: Kms) -> list[dict]:
    return kms.audit_records()


def find(recs, operation, key_id=..., outcome=None):
    out = [r for r in recs if r["operation"] == operation and (key_id is ... or r["key_id"] == key_id)]
    if outcome is not None:
        out = [r for r in out if r["outcome"].startswith(outcome)]
    return out


def test_every_operation_is_recorded(kms, kh):
    t0 = time.time()
    aes = kms.create_key("app/aes").key_id
    ec_ = kms.create_key("app/ec", "EC_P256").key_id
    mac = kms.create_key("app/mac", "HMAC_256").key_id
    ext = kms.create_key("app/ext", origin="EXTERNAL").key_id
    blob = kms.encrypt_data("app/aes", b"x")
    kms.decrypt_data(blob)
    dk = kms.create_datakey("app/aes")
    kms.create_datakey("app/aes", with_plaintext=False)
    kms.encrypt_datakey("app/aes", b"k" * 32)
    kms.decrypt_datakey(dk.ciphertext)
    sig = kms.sign("app/ec", b"m", "ECDSA_SHA_256")
    kms.verify("app/ec", b"m", sig, "ECDSA_SHA_256")
    kms.verify("app/ec", b"other", sig, "ECDSA_SHA_256")
    kms.get_public_key("app/ec")
    kms.verify_mac("app/mac", b"m", kms.generate_mac("app/mac", b"m"))
    kms.gen_random(8)
    kh.import_material(kms, "app/ext", kh.material_for("AES_256"))
    kms.delete_imported_key_material("app/ext")
    kms.disable_key("app/aes")
    kms.enable_key("app/aes")
    kms.rotate_key("app/aes")
    kms.enable_key_rotation("app/aes", 90)
    kms.disable_key_rotation("app/aes")
    kms.update_key_alias("app/aes", "app/aes2")
    kms.update_key_description("app/aes2", "d")
    kms.schedule_key_deletion("app/aes2", 7)
    kms.cancel_key_deletion("app/aes2")
    recs = records(kms)
    expected = {
        "CreateKey": aes, "Encrypt": aes, "Decrypt": aes, "CreateDataKey": aes,
        "CreateDataKeyWithoutPlaintext": aes, "EncryptDataKey": aes, "DecryptDataKey": aes,
        "Sign": ec_, "Verify": ec_, "GetPublicKey": ec_, "GenerateMac": mac, "VerifyMac": mac,
        "GenerateRandom": None, "GetParametersForImport": ext, "ImportKeyMaterial": ext,
        "DeleteImportedKeyMaterial": ext, "DisableKey": aes, "EnableKey": aes, "RotateKey": aes,
        "EnableKeyRotation": aes, "DisableKeyRotation": aes, "UpdateKeyAlias": aes,
        "UpdateKeyDescription": aes, "ScheduleKeyDeletion": aes, "CancelKeyDeletion": aes,
    }
    for op, key_id in expected.items():
        found = find(recs, op, key_id, "ok")
        assert found, (op, [r for r in recs if r["operation"] == op])
    assert find(recs, "Verify", ec_, "invalid"), "a failed verification is recorded as such"
    for r in recs:
        assert r["caller"].startswith("api") and "pid=" in r["caller"]
        assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 - 1)) <= r["time"]
    assert kms.verify_audit().ok


def test_repeated_operations_are_counted_not_lost(kms):
    kms.create_key("app/aes")
    for _ in range(50):
        kms.encrypt_data("app/aes", b"x")
    kms.flush_audit()
    total = sum(r["count"] for r in find(records(kms), "Encrypt", outcome="ok"))
    assert total == 50


def test_refusals_are_recorded(kms):
    key = kms.create_key("app/aes").key_id
    kms.create_key("app/ec", "EC_P256")
    blob = kms.encrypt_data("app/aes", b"x")
    with pytest.raises(NotFound):
        kms.encrypt_data("no/such", b"x")
    with pytest.raises(KeyRuleViolation):
        kms.sign("app/aes", b"m", "ECDSA_SHA_256")
    with pytest.raises(InvalidCiphertext):
        kms.decrypt_data(blob, {"wrong": "context"})
    kms.default_key("sidecar")
    with pytest.raises(KeyRuleViolation):
        kms.disable_key("sidecar/default")
    kms.disable_key(key)
    with pytest.raises(KeyUnavailable):
        kms.encrypt_data(key, b"x")
    recs = records(kms)
    assert find(recs, "Encrypt", None, "denied: no key")
    assert find(recs, "Decrypt", key, "denied: ciphertext failed")
    assert find(recs, "Encrypt", key, "denied: key")
    assert find(recs, "Sign", outcome="denied")
    assert find(recs, "DisableKey", outcome="denied")
    assert kms.verify_audit().ok


def test_records_survive_a_refused_change_that_first_created_a_default_key(kms):
    key = kms.create_key("app/aes").key_id
    kms.encrypt_data("app/aes", b"x")
    with pytest.raises(NotFound):
        kms.encrypt_data("no/such", b"x")
    with pytest.raises(KeyRuleViolation):
        kms.disable_key("fsmount/default")  # first use of the default key, refused
    recs = records(kms)
    assert find(recs, "Encrypt", key, "ok"), recs
    assert find(recs, "Encrypt", None, "denied"), recs
    assert find(recs, "DisableKey", outcome="denied"), recs


def test_refusal_of_a_key_named_by_alias_names_the_key(kms):
    key = kms.create_key("app/aes").key_id
    kms.disable_key("app/aes")
    with pytest.raises(KeyUnavailable):
        kms.encrypt_data("app/aes", b"x")
    with pytest.raises(KeyRuleViolation):
        kms.sign("app/aes", b"m", "ECDSA_SHA_256")
    recs = records(kms)
    assert find(recs, "Encrypt", key, "denied"), find(recs, "Encrypt")
    assert find(recs, "Sign", key, "denied"), find(recs, "Sign")


def test_refused_decrypt_datakey_is_not_recorded_as_ok(kms):
    kms.create_key("app/aes")
    blob = kms.encrypt_data("app/aes", b"not a data key")
    with pytest.raises(InvalidCiphertext):
        kms.decrypt_datakey(blob)
    outcomes = [r["outcome"] for r in records(kms) if r["operation"] == "DecryptDataKey"]
    assert outcomes and all(o.startswith("denied") for o in outcomes), outcomes


def test_maintenance_is_recorded(kms, clock):
    key = kms.create_key("app/aes", rotation_days=30).key_id
    gone = kms.create_key("app/gone").key_id
    kms.schedule_key_deletion("app/gone", 7)
    clock.advance(days=31)
    kms.maintain()
    clock.advance(days=1)
    kms.maintain()  # destruction needs a second sighting of the deadline, a day later
    recs = records(kms)
    assert find(recs, "AutoRotateKey", key, "ok")[0]["caller"] == "kms maintenance"
    assert find(recs, "KeyDeletionDue", gone)
    assert find(recs, "DestroyKey", gone, "ok")


# -- tampering, through the CLI ------------------------------------------------------------------


@pytest.fixture
def logged(home, clock):
    """A home with a dozen audit records written by a closed Kms."""
    with Kms(home, clock=clock) as kms:
        kms.create_key("app/aes")
        kms.create_key("app/other")
        for i in range(10):
            kms.encrypt_data("app/aes", b"x")
            kms.flush_audit()  # one record each
            kms.encrypt_data("app/other", b"x")
            kms.flush_audit()
        n = len(kms.audit_records())
    assert n >= 20
    return n


def tamper(home, sql, args=()):
    db = sqlite3.connect(home / "keys.db")
    with db:
        db.execute(sql, args)
    db.close()


def verify_cli(run_kms):
    r = run_kms("audit", "verify")
    return r.returncode, r.stdout.decode() + r.stderr.decode()


def test_intact_log_verifies(logged, run_kms):
    code, out = verify_cli(run_kms)
    assert code == 0, out
    assert f"{logged} records" in out


@pytest.mark.parametrize("column,value", [("outcome", "ok: nothing to see"), ("key_id", None),
                                          ("caller", "someone else"), ("time", 1.0), ("count", 99)])
def test_edited_row_is_detected(logged, home, run_kms, column, value):
    tamper(home, f"UPDATE audit SET {column}=? WHERE seq=7", (value,))
    if column == "outcome":  # through the CLI once (each start costs ~0.5 s of CPU)
        code, out = verify_cli(run_kms)
        assert code != 0
    else:
        with Kms(home) as kms:
            report = kms.verify_audit()
        assert not report.ok
        out = report.problem
    assert "record 7" in out and "altered" in out, out


def test_deleted_middle_row_is_detected(logged, home, run_kms):
    tamper(home, "DELETE FROM audit WHERE seq=5")
    code, out = verify_cli(run_kms)
    assert code != 0 and "record 5 is missing" in out, out


def test_renumbered_rows_are_detected(logged, home, run_kms):
    tamper(home, "DELETE FROM audit WHERE seq=5")
    tamper(home, "UPDATE audit SET seq=seq-1 WHERE seq>5")
    code, out = verify_cli(run_kms)
    assert code != 0 and "record 5" in out, out


def test_cut_tail_is_detected(logged, home, run_kms):
    tamper(home, "DELETE FROM audit WHERE seq>?", (logged - 3,))
    code, out = verify_cli(run_kms)
    assert code != 0, out
    assert f"{logged - 2}..{logged}" in out and "missing" in out, out


def test_cut_tail_with_rewritten_head_is_detected(logged, home, run_kms, kh):
    keep = logged - 3
    (mac,) = kh.sqlite_rows(home, "SELECT mac FROM audit WHERE seq=?", (keep,))[0]
    tamper(home, "DELETE FROM audit WHERE seq>?", (keep,))
    tamper(home, "UPDATE meta SET value=? WHERE name='audit_head'", (keep.to_bytes(8, "big") + mac,))
    code, out = verify_cli(run_kms)
    assert code != 0, out


def test_verify_json(logged, home, run_kms):
    import json

    r = run_kms("audit", "verify", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"ok": True, "records": logged, "problem": None}
    tamper(home, "UPDATE audit SET outcome='x' WHERE seq=3")
    r = run_kms("audit", "verify", "--json")
    report = json.loads(r.stdout)
    assert r.returncode != 0 and report["ok"] is False and "record 3" in report["problem"]


def test_cli_operations_are_recorded_with_the_cli_caller(logged, run_kms):
    import json

    assert run_kms("encrypt-data", "app/aes", input=b"data").returncode == 0
    r = run_kms("audit", "list", "--json", "--limit", "5")
    recs = json.loads(r.stdout)
    assert any(x["operation"] == "Encrypt" and x["caller"].startswith("cli:encrypt-data") for x in recs), recs
    assert run_kms("audit", "verify").returncode == 0
