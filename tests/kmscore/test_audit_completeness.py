"""The audit log is complete and true: reads are recorded, changes say what changed, a
typo is not recorded as a failed check, a refused change leaves no record of a key that
never came to exist. Through the real `kms` command and the facade, on real stores."""

from __future__ import annotations

import base64

from kmscore import Kms


def ops(home, operation=None):
    with Kms(home) as kms:
        return [r for r in kms.audit_records() if operation is None or r["operation"] == operation]


def test_describe_and_list_are_recorded(home, kms):
    key = kms.create_key("app/aes").key_id
    kms.describe_key("app/aes")
    kms.list_keys()
    try:
        kms.describe_key("app/nope")
    except Exception:
        pass
    recs = kms.audit_records()
    assert [r["outcome"] for r in recs if r["operation"] == "DescribeKey" and r["key_id"] == key] == ["ok"]
    assert any(r["operation"] == "DescribeKey" and r["outcome"].startswith("denied") for r in recs)
    assert [r["operation"] for r in recs if r["operation"] == "ListKeys"] == ["ListKeys"]


def test_lifecycle_records_say_what_changed(kms):
    kms.create_key("app/a", description="first")
    kms.disable_key("app/a")
    kms.enable_key("app/a")
    kms.update_key_alias("app/a", "app/b")
    kms.update_key_description("app/b", "second")
    kms.enable_key_rotation("app/b", 90)
    kms.rotate_key("app/b")
    kms.schedule_key_deletion("app/b", 7)
    kms.cancel_key_deletion("app/b")
    said = {r["operation"]: r["outcome"] for r in kms.audit_records()}
    assert "AES_256" in said["CreateKey"] and "alias app/a" in said["CreateKey"]
    assert "state Enabled -> Disabled" in said["DisableKey"]
    assert "state Disabled -> Enabled" in said["EnableKey"]
    assert "alias app/a -> app/b" in said["UpdateKeyAlias"]
    assert "description changed" in said["UpdateKeyDescription"] and "second" not in said["UpdateKeyDescription"]
    assert "rotation_interval_days - -> 90" in said["EnableKeyRotation"]
    assert "current_version 1 -> 2" in said["RotateKey"]
    assert "state Enabled -> PendingDeletion" in said["ScheduleKeyDeletion"] and "deletion_date - -> 20" in said["ScheduleKeyDeletion"]
    assert "state PendingDeletion -> Disabled" in said["CancelKeyDeletion"]


def test_a_mistyped_signature_or_mac_path_is_no_failed_check(tmp_path, home, run_kms, kh):
    with Kms(home) as kms:
        kms.create_key("app/ec", "EC_P256")
        kms.create_key("app/mac", "HMAC_256")
        good_sig = kms.sign("app/ec", b"msg", "ECDSA_SHA_256")
        good_mac = kms.generate_mac("app/mac", b"msg")
    (tmp_path / "sig.bin").write_bytes(good_sig)
    (tmp_path / "mac.bin").write_bytes(good_mac)
    for typo in ("sig.bni", str(tmp_path / "sgi.bin"), str(tmp_path / "signature")):
        r = run_kms("verify", "app/ec", "--algorithm", "ECDSA_SHA_256", "--signature", typo, input=b"msg")
        kh.assert_refused(r, "no file")
    for typo in ("mac.bni", str(tmp_path / "amc.bin")):
        r = run_kms("verify-mac", "app/mac", "--mac", typo, input=b"msg")
        kh.assert_refused(r, "no file")
    assert ops(home, "Verify") == [] and ops(home, "VerifyMac") == [], "no check happened, none is recorded"
    # the real thing still works, from a file and as base64 text
    r = run_kms("verify", "app/ec", "--algorithm", "ECDSA_SHA_256", "--signature", str(tmp_path / "sig.bin"), input=b"msg")
    assert r.returncode == 0, r.stderr
    r = run_kms("verify-mac", "app/mac", "--mac", base64.b64encode(good_mac).decode(), input=b"msg")
    assert r.returncode == 0, r.stderr
    r = run_kms("verify-mac", "app/mac", "--mac", base64.b64encode(b"\0" * 32).decode(), input=b"msg")
    assert r.returncode == 1
    assert [r["outcome"] for r in ops(home, "VerifyMac")] == ["ok", "invalid"]


def test_a_refused_change_of_a_default_key_records_no_phantom_key(home, run_kms, kh):
    for _ in range(2):
        r = run_kms("disable-key", "fsmount/default")
        kh.assert_refused(r, "default")
        assert b"created default key" not in r.stderr
    with Kms(home) as kms:
        assert kms._store.key_by_alias("fsmount/default") is None  # noqa: SLF001 - the store itself
        recs = kms.audit_records()
    assert [r for r in recs if r["operation"] == "CreateKey"] == []
    denied = [r for r in recs if r["operation"] == "DisableKey"]
    assert len(denied) == 2 and all(r["outcome"].startswith("denied") and r["key_id"] is None for r in denied)
    assert all(r["key_id"] is None for r in recs), "no record names a key that does not exist"
