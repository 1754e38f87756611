"""Every row of the key rules table in DESIGN.md, against a real on-disk store."""

from __future__ import annotations

import uuid

import pytest

from kmscore import (
    AlreadyExists,
    InvalidCiphertext,
    InvalidRequest,
    KeyImportError,
    KeyRuleViolation,
    KeyUnavailable,
    Kms,
    NotFound,
)
from kmscore.blob import peek_key

DAY = 86400.0
ALL_SPECS = ["AES_256", "HMAC_256", "HMAC_384", "HMAC_512", "RSA_2048", "RSA_3072", "RSA_4096", "EC_P256", "EC_P384"]
EXTERNAL_SPECS = ["AES_256", "RSA_2048", "RSA_3072", "RSA_4096", "EC_P256", "EC_P384"]


def try_ops(kms: Kms, key: str) -> dict[str, object]:
    """Attempt every kind of operation; map op -> 'ok' or the exception class."""
    results: dict[str, object] = {}
    attempts = {
        "encrypt": lambda: kms.decrypt_data(kms.encrypt_data(key, b"m"), key=key) == b"m",
        "datakey": lambda: kms.create_datakey(key).plaintext is not None,
        "sign": lambda: kms.verify(key, b"m", kms.sign(key, b"m", _sig_alg(kms, key)), _sig_alg(kms, key)),
        "mac": lambda: kms.verify_mac(key, b"m", kms.generate_mac(key, b"m")),
        "public_key": lambda: kms.get_public_key(key).startswith("-----BEGIN PUBLIC KEY-----"),
    }
    for op, attempt in attempts.items():
        try:
            assert attempt() is True
            results[op] = "ok"
        except (KeyRuleViolation, KeyUnavailable) as e:
            results[op] = type(e)
    return results


def _sig_alg(kms: Kms, key: str) -> str:
    return "ECDSA_SHA_256" if kms.describe_key(key).spec.value.startswith("EC") else "RSASSA_PSS_SHA_256"


ALLOWED = {
    ("AES_256", "ENCRYPT_DECRYPT"): {"encrypt", "datakey"},
    ("HMAC_256", "GENERATE_VERIFY_MAC"): {"mac"},
    ("HMAC_384", "GENERATE_VERIFY_MAC"): {"mac"},
    ("HMAC_512", "GENERATE_VERIFY_MAC"): {"mac"},
    ("RSA_2048", "SIGN_VERIFY"): {"sign", "public_key"},
    ("RSA_3072", "SIGN_VERIFY"): {"sign", "public_key"},
    ("RSA_4096", "SIGN_VERIFY"): {"sign", "public_key"},
    ("RSA_2048", "ENCRYPT_DECRYPT"): {"encrypt", "public_key"},
    ("EC_P256", "SIGN_VERIFY"): {"sign", "public_key"},
    ("EC_P384", "SIGN_VERIFY"): {"sign", "public_key"},
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One store with a custom key of every spec (RSA generation is slow: made once)."""
    with Kms(tmp_path_factory.mktemp("rules") / "home") as kms:
        for spec, usage in ALLOWED:
            kms.create_key(f"custom/{spec}/{usage}".lower(), spec, usage)
        yield kms


# -- default keys ---------------------------------------------------------------------------


def test_default_keys_are_created_on_first_use(kms):
    assert kms.list_keys() == []
    blob = kms.encrypt_data("fsmount/default", b"secret")
    assert kms.decrypt_data(blob) == b"secret"
    meta = kms.describe_key("fsmount/default")
    assert (meta.spec.value, meta.usage.value, meta.origin.value, meta.state.value) == (
        "AES_256", "ENCRYPT_DECRYPT", "KMS", "Enabled")
    assert meta.is_default and meta.alias == "fsmount/default"
    assert kms.default_key("sidecar").alias == "sidecar/default"
    kms.encrypt_data("fsmount/default", b"again")
    assert sorted(k.alias for k in kms.list_keys()) == ["fsmount/default", "sidecar/default"]


def test_default_key_is_shared_by_two_instances(home, clock):
    with Kms(home, clock=clock) as a, Kms(home, clock=clock) as b:
        blob = a.encrypt_data("sidecar/default", b"x")
        assert b.decrypt_data(blob) == b"x"
        assert a.describe_key("sidecar/default").key_id == b.describe_key("sidecar/default").key_id
        assert len(b.list_keys()) == 1


def test_no_default_key_for_an_unknown_service(kms):
    with pytest.raises(NotFound):
        kms.encrypt_data("billing/default", b"x")
    with pytest.raises(InvalidRequest):
        kms.default_key("billing")
    assert kms.list_keys() == []


def test_default_key_allows_only_encryption_and_data_keys(kms):
    key = "fsmount/default"
    got = try_ops(kms, key)
    assert {op for op, r in got.items() if r == "ok"} == {"encrypt", "datakey"}, got
    assert got["sign"] is KeyRuleViolation and got["mac"] is KeyRuleViolation
    dk = kms.create_datakey(key, 512, with_plaintext=False)
    assert dk.plaintext is None and len(kms.decrypt_datakey(dk.ciphertext)) == 64
    wrapped = kms.encrypt_datakey(key, b"k" * 32)
    assert kms.decrypt_datakey(wrapped) == b"k" * 32


@pytest.mark.parametrize("action", ["disable", "schedule", "delete_material", "alias"])
def test_default_key_cannot_be_disabled_deleted_or_renamed(kms, action):
    key = kms.default_key("fsmount").key_id
    call = {
        "disable": lambda: kms.disable_key("fsmount/default"),
        "schedule": lambda: kms.schedule_key_deletion("fsmount/default", 7),
        "delete_material": lambda: kms.delete_imported_key_material("fsmount/default"),
        "alias": lambda: kms.update_key_alias("fsmount/default", "app/renamed"),
    }[action]
    with pytest.raises(KeyRuleViolation) as e:
        call()
    assert "fsmount/default" in str(e.value)
    meta = kms.describe_key(key)
    assert meta.state.value == "Enabled" and meta.alias == "fsmount/default" and meta.deletion_date is None
    assert kms.decrypt_data(kms.encrypt_data(key, b"still works")) == b"still works"


@pytest.mark.parametrize("alias", ["fsmount/default", "sidecar/default", "app/default", "a/b/default"])
def test_users_may_not_create_default_aliases(kms, alias):
    with pytest.raises(InvalidRequest, match="reserved"):
        kms.create_key(alias)
    other = kms.create_key("app/custom")
    with pytest.raises(InvalidRequest, match="reserved"):
        kms.update_key_alias(other.key_id, alias)
    assert [k.alias for k in kms.list_keys()] == ["app/custom"]


def test_a_user_alias_merely_containing_default_is_fine(kms):
    assert kms.create_key("default").alias == "default"
    assert kms.create_key("app/default-db").alias == "app/default-db"


# -- custom keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec,usage", sorted(ALLOWED))
def test_custom_key_operations_per_spec(shared, spec, usage):
    key = f"custom/{spec}/{usage}".lower()
    meta = shared.describe_key(key)
    assert (meta.spec.value, meta.usage.value, meta.origin.value, meta.state.value) == (spec, usage, "KMS", "Enabled")
    got = try_ops(shared, key)
    assert {op for op, r in got.items() if r == "ok"} == ALLOWED[(spec, usage)], got
    assert all(r is KeyRuleViolation for op, r in got.items() if r != "ok"), got


@pytest.mark.parametrize("spec", ["AES_256", "HMAC_256", "HMAC_384", "HMAC_512", "RSA_2048", "EC_P256", "EC_P384"])
def test_custom_key_default_usage(shared, spec):
    # the default usage is the first one the table allows (RSA: SIGN_VERIFY)
    meta = shared.create_key(None, spec)
    expected = {"AES": "ENCRYPT_DECRYPT", "HMAC": "GENERATE_VERIFY_MAC", "RSA": "SIGN_VERIFY", "EC": "SIGN_VERIFY"}
    assert meta.usage.value == expected[spec.split("_")[0]]


@pytest.mark.parametrize("spec,usage", [
    ("AES_256", "SIGN_VERIFY"), ("AES_256", "GENERATE_VERIFY_MAC"),
    ("HMAC_256", "ENCRYPT_DECRYPT"), ("HMAC_512", "SIGN_VERIFY"),
    ("EC_P256", "ENCRYPT_DECRYPT"), ("EC_P384", "GENERATE_VERIFY_MAC"),
    ("RSA_2048", "GENERATE_VERIFY_MAC"),
])
def test_forbidden_spec_usage_combinations(kms, spec, usage):
    with pytest.raises(KeyRuleViolation):
        kms.create_key("app/x", spec, usage)
    assert kms.list_keys() == []


@pytest.mark.parametrize("spec", ["BOGUS", "AES_128", "RSA_1024"])
def test_unknown_specs_are_refused(kms, spec):
    with pytest.raises(InvalidRequest, match="key spec"):
        kms.create_key("app/x", spec)


@pytest.mark.parametrize("spec,usage", [("HMAC_256", None), ("RSA_2048", "SIGN_VERIFY"), ("EC_P256", None)])
def test_only_aes_custom_keys_rotate(shared, spec, usage):
    key = f"custom/{spec}/{usage or 'GENERATE_VERIFY_MAC' if spec.startswith('HMAC') else 'SIGN_VERIFY'}".lower()
    with pytest.raises(KeyRuleViolation, match="only AES_256"):
        shared.rotate_key(key)
    with pytest.raises(KeyRuleViolation):
        shared.enable_key_rotation(key, 90)
    assert shared.describe_key(key).current_version == 1


def test_custom_key_rotation_days_at_creation_only_for_aes(kms):
    with pytest.raises(KeyRuleViolation):
        kms.create_key("app/h", "HMAC_256", rotation_days=90)
    with pytest.raises(KeyRuleViolation):
        kms.create_key("app/e", "AES_256", origin="EXTERNAL", rotation_days=90)
    meta = kms.create_key("app/a", "AES_256", rotation_days=90)
    assert meta.rotation_enabled and meta.rotation_interval_days == 90


def test_custom_key_material_cannot_be_deleted_or_given_an_expiry(kms, kh):
    kms.create_key("app/db")
    with pytest.raises(KeyRuleViolation, match="KMS-generated"):
        kms.delete_imported_key_material("app/db")
    with pytest.raises(KeyRuleViolation, match="EXTERNAL"):
        kms.get_parameters_for_import("app/db")
    meta = kms.describe_key("app/db")
    assert meta.material_expires_at is None and meta.state.value == "Enabled"


# -- external keys -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", EXTERNAL_SPECS)
def test_external_key_every_spec_pending_import_then_usable(kms, kh, spec):
    usage = "ENCRYPT_DECRYPT" if spec == "AES_256" else "SIGN_VERIFY"
    meta = kms.create_key("ext/k", spec, usage, origin="EXTERNAL", description="imported")
    assert (meta.state.value, meta.origin.value, meta.current_version) == ("PendingImport", "EXTERNAL", 0)
    before = try_ops(kms, "ext/k")
    assert set(before.values()) <= {KeyUnavailable, KeyRuleViolation}
    wanted = {"encrypt", "datakey"} if spec == "AES_256" else {"sign", "public_key"}
    assert all(before[op] is KeyUnavailable for op in wanted), before
    with pytest.raises(KeyUnavailable):
        kms.enable_key("ext/k")
    material = kh.material_for(spec)
    meta = kh.import_material(kms, "ext/k", material)
    assert meta.state.value == "Enabled" and meta.material_expires_at is None
    after = try_ops(kms, "ext/k")
    assert {op for op, r in after.items() if r == "ok"} == wanted, after
    if spec != "AES_256":
        from cryptography.hazmat.primitives import serialization

        ours = kh.private_key(spec).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        assert kms.get_public_key("ext/k") == ours


def test_external_rsa_key_for_encryption(kms, kh):
    kms.create_key("ext/rsa-enc", "RSA_2048", "ENCRYPT_DECRYPT", origin="EXTERNAL")
    kh.import_material(kms, "ext/rsa-enc", kh.material_for("RSA_2048"), algorithm="RSA_AES_KEY_WRAP_SHA_256")
    ct = kms.encrypt_data("ext/rsa-enc", b"hello", algorithm="RSAES_OAEP_SHA_256")
    assert kms.decrypt_data(ct, key="ext/rsa-enc", algorithm="RSAES_OAEP_SHA_256") == b"hello"
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    ours = kh.private_key("RSA_2048").decrypt(ct, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
    assert ours == b"hello"


@pytest.mark.parametrize("spec", ["HMAC_256", "HMAC_384", "HMAC_512"])
def test_external_hmac_keys_are_refused(kms, spec):
    with pytest.raises(KeyRuleViolation, match="external"):
        kms.create_key("ext/h", spec, origin="EXTERNAL")
    assert kms.list_keys() == []


@pytest.mark.parametrize("spec", ["RSA_2048", "EC_P256", "EC_P384"])
def test_external_asymmetric_material_is_permanent(kms, kh, clock, spec):
    kms.create_key("ext/a", spec, origin="EXTERNAL")
    with pytest.raises(KeyRuleViolation, match="permanent"):
        kh.import_material(kms, "ext/a", kh.material_for(spec), expires_at=clock() + DAY)
    assert kms.describe_key("ext/a").state.value == "PendingImport"
    kh.import_material(kms, "ext/a", kh.material_for(spec))
    with pytest.raises(KeyRuleViolation, match="permanent"):
        kms.delete_imported_key_material("ext/a")
    clock.advance(days=5000)
    kms.maintain()
    meta = kms.describe_key("ext/a")
    assert meta.state.value == "Enabled" and meta.material_expires_at is None
    assert kms.verify("ext/a", b"m", kms.sign("ext/a", b"m", _sig_alg(kms, "ext/a")), _sig_alg(kms, "ext/a"))


def test_external_aes_expiry_then_gone_metadata_kept(kms, kh, clock, home):
    meta0 = kms.create_key("ext/aes", origin="EXTERNAL", description="expiring")
    material = kh.material_for("AES_256")
    meta = kh.import_material(kms, "ext/aes", material, expires_at=clock() + 3600)
    assert meta.material_expires_at == clock() + 3600
    blob = kms.encrypt_data("ext/aes", b"before")
    clock.advance(seconds=3601)
    # never used after its expiry, even before maintenance has run
    with pytest.raises(KeyUnavailable, match="expired"):
        kms.encrypt_data("ext/aes", b"after")
    with pytest.raises(KeyUnavailable):
        kms.decrypt_data(blob)
    kms.maintain()
    meta = kms.describe_key("ext/aes")
    assert meta.state.value == "PendingImport" and meta.material_expires_at is None
    assert (meta.key_id, meta.alias, meta.description, meta.created_at) == (
        meta0.key_id, "ext/aes", "expiring", meta0.created_at)
    assert kh.sqlite_rows(home, "SELECT count(*) FROM key_versions WHERE key_id=?", (meta.key_id,)) == [(0,)]
    # the same material comes back, and old ciphertexts decrypt again
    kh.import_material(kms, "ext/aes", material)
    assert kms.decrypt_data(blob) == b"before"


def test_expiry_must_lie_in_the_future(kms, kh, clock):
    kms.create_key("ext/aes", origin="EXTERNAL")
    with pytest.raises(InvalidRequest, match="future"):
        kh.import_material(kms, "ext/aes", kh.material_for("AES_256"), expires_at=clock() - 1)


def test_external_aes_material_deleted_by_hand(kms, kh, home):
    kms.create_key("ext/aes", origin="EXTERNAL")
    material = kh.material_for("AES_256")
    kh.import_material(kms, "ext/aes", material)
    blob = kms.encrypt_data("ext/aes", b"data")
    meta = kms.delete_imported_key_material("ext/aes")
    assert meta.state.value == "PendingImport" and meta.alias == "ext/aes"
    assert kh.sqlite_rows(home, "SELECT count(*) FROM key_versions WHERE key_id=?", (meta.key_id,)) == [(0,)]
    with pytest.raises(KeyUnavailable):
        kms.decrypt_data(blob)
    with pytest.raises(KeyUnavailable):
        kms.delete_imported_key_material("ext/aes")
    # re-import: other material refused, the same accepted
    with pytest.raises(KeyImportError, match="different key material"):
        kh.import_material(kms, "ext/aes", kh.material_for("AES_256"))
    assert kms.describe_key("ext/aes").state.value == "PendingImport"
    kh.import_material(kms, "ext/aes", material)
    assert kms.decrypt_data(blob) == b"data"


def test_reimport_into_enabled_key_accepts_only_the_same_material(kms, kh):
    kms.create_key("ext/ec", "EC_P256", origin="EXTERNAL")
    kh.import_material(kms, "ext/ec", kh.material_for("EC_P256"))
    from cryptography.hazmat.primitives.asymmetric import ec

    other = kh.der(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(KeyImportError):
        kh.import_material(kms, "ext/ec", other)
    assert kh.import_material(kms, "ext/ec", kh.material_for("EC_P256")).state.value == "Enabled"


@pytest.mark.parametrize("spec,material", [
    ("AES_256", b"\x01" * 16),
    ("EC_P256", "EC_P384"),
    ("RSA_2048", "EC_P256"),
    ("EC_P384", b"not a der key"),
])
def test_material_that_does_not_fit_the_spec_is_refused(kms, kh, spec, material):
    kms.create_key("ext/k", spec, origin="EXTERNAL")
    if isinstance(material, str):
        material = kh.material_for(material)
    with pytest.raises(KeyImportError):
        kh.import_material(kms, "ext/k", material)
    assert kms.describe_key("ext/k").state.value == "PendingImport"


def test_external_keys_never_rotate(kms, kh):
    kms.create_key("ext/aes", origin="EXTERNAL")
    kh.import_material(kms, "ext/aes", kh.material_for("AES_256"))
    with pytest.raises(KeyRuleViolation, match="never rotate"):
        kms.rotate_key("ext/aes")
    with pytest.raises(KeyRuleViolation):
        kms.enable_key_rotation("ext/aes", 90)


def test_import_token_is_single_use_per_key_and_expires(kms, kh, clock):
    a = kms.create_key("ext/a", origin="EXTERNAL")
    kms.create_key("ext/b", origin="EXTERNAL")
    params = kms.get_parameters_for_import("ext/a")
    wrapped = kh.oaep_wrap(params.public_key_pem, kh.material_for("AES_256"))
    with pytest.raises(KeyImportError, match="token"):
        kms.import_key_material("ext/b", params.import_token, wrapped)
    kms.import_key_material("ext/a", params.import_token, wrapped)
    with pytest.raises(KeyImportError, match="token"):
        kms.import_key_material("ext/a", params.import_token, wrapped)
    params = kms.get_parameters_for_import("ext/b")
    assert params.expires_at == clock() + 24 * 3600
    clock.advance(seconds=24 * 3600 + 1)
    wrapped = kh.oaep_wrap(params.public_key_pem, kh.material_for("AES_256"))
    with pytest.raises(KeyImportError):
        kms.import_key_material("ext/b", params.import_token, wrapped)
    assert kms.describe_key("ext/b").state.value == "PendingImport"
    assert a.key_id != kms.describe_key("ext/b").key_id


def test_sha1_wrapping_is_accepted_with_a_warning(kms, kh):
    kms.create_key("ext/aes", origin="EXTERNAL")
    params = kms.get_parameters_for_import("ext/aes", "RSAES_OAEP_SHA_1")
    assert params.warning and "SHA-1" in params.warning
    assert kms.get_parameters_for_import("ext/aes").warning is None
    wrapped = kh.oaep_wrap(params.public_key_pem, kh.material_for("AES_256"), sha1=True)
    assert kms.import_key_material("ext/aes", params.import_token, wrapped).state.value == "Enabled"


def test_material_wrapped_with_the_wrong_hash_is_refused(kms, kh):
    kms.create_key("ext/aes", origin="EXTERNAL")
    params = kms.get_parameters_for_import("ext/aes", "RSAES_OAEP_SHA_256")
    wrapped = kh.oaep_wrap(params.public_key_pem, kh.material_for("AES_256"), sha1=True)
    with pytest.raises(KeyImportError):
        kms.import_key_material("ext/aes", params.import_token, wrapped)


# -- states and transitions ----------------------------------------------------------------------


def test_disable_and_enable(kms):
    kms.create_key("app/db")
    blob = kms.encrypt_data("app/db", b"x")
    assert kms.disable_key("app/db").state.value == "Disabled"
    with pytest.raises(KeyUnavailable, match="Disabled"):
        kms.encrypt_data("app/db", b"x")
    with pytest.raises(KeyUnavailable, match="Disabled"):
        kms.decrypt_data(blob)
    with pytest.raises(KeyUnavailable):
        kms.create_datakey("app/db")
    assert kms.enable_key("app/db").state.value == "Enabled"
    assert kms.decrypt_data(blob) == b"x"


@pytest.mark.parametrize("days", [0, 6, 1097, -7])
def test_deletion_window_out_of_range_is_refused(kms, days):
    kms.create_key("app/db")
    with pytest.raises(InvalidRequest, match="7 and 1096"):
        kms.schedule_key_deletion("app/db", days)
    assert kms.describe_key("app/db").state.value == "Enabled"


@pytest.mark.parametrize("days", [7, 1096])
def test_deletion_window_bounds_are_accepted(kms, clock, days):
    kms.create_key("app/db")
    meta = kms.schedule_key_deletion("app/db", days)
    assert meta.state.value == "PendingDeletion" and meta.deletion_date == clock() + days * DAY


def test_pending_deletion_refuses_use_and_cancel_returns_disabled(kms):
    kms.create_key("app/db")
    blob = kms.encrypt_data("app/db", b"x")
    kms.schedule_key_deletion("app/db", 7)
    with pytest.raises(KeyUnavailable, match="PendingDeletion"):
        kms.decrypt_data(blob)
    with pytest.raises(KeyUnavailable):
        kms.enable_key("app/db")
    with pytest.raises(KeyUnavailable):
        kms.schedule_key_deletion("app/db", 30)
    meta = kms.cancel_key_deletion("app/db")
    assert meta.state.value == "Disabled" and meta.deletion_date is None
    with pytest.raises(KeyUnavailable):
        kms.cancel_key_deletion("app/db")
    kms.enable_key("app/db")
    assert kms.decrypt_data(blob) == b"x"


def test_disabled_key_can_be_scheduled_and_pending_import_cancel_stays_pending_import(kms):
    kms.create_key("app/db")
    kms.disable_key("app/db")
    assert kms.schedule_key_deletion("app/db", 7).state.value == "PendingDeletion"
    kms.create_key("ext/aes", origin="EXTERNAL")
    kms.schedule_key_deletion("ext/aes", 7)
    assert kms.cancel_key_deletion("ext/aes").state.value == "PendingImport"


def test_key_and_material_destroyed_when_due(kms, clock, home, kh):
    meta = kms.create_key("app/db")
    blob = kms.encrypt_data("app/db", b"x")
    kms.schedule_key_deletion("app/db", 7)
    clock.advance(days=7, seconds=-1)
    kms.maintain()
    assert kms.describe_key("app/db").state.value == "PendingDeletion"
    clock.advance(seconds=1)
    kms.maintain()  # first sighting of the deadline: recorded, nothing destroyed yet
    assert kms.describe_key("app/db").state.value == "PendingDeletion"
    clock.advance(days=1)
    kms.maintain()  # seen due again a day later: destroyed
    with pytest.raises(NotFound):
        kms.describe_key("app/db")
    with pytest.raises(NotFound):
        kms.describe_key(meta.key_id)
    with pytest.raises(NotFound):
        kms.decrypt_data(blob)
    assert kh.sqlite_rows(home, "SELECT count(*) FROM key_versions WHERE key_id=?", (meta.key_id,)) == [(0,)]
    assert kh.sqlite_rows(home, "SELECT count(*) FROM keys WHERE key_id=?", (meta.key_id,)) == [(0,)]
    # the alias is free again, for a new key
    assert kms.create_key("app/db").key_id != meta.key_id


def test_destruction_seen_by_another_instance(home, clock):
    with Kms(home, clock=clock) as a:
        a.create_key("app/db")
        a.schedule_key_deletion("app/db", 30)
    clock.advance(days=31)
    with Kms(home, clock=clock) as b:  # maintenance runs when a Kms opens: first sighting
        assert b.list_keys()[0].state.value == "PendingDeletion"
    clock.advance(days=1)
    with Kms(home, clock=clock) as c:  # seen due again a day later, by another instance
        assert c.list_keys() == []


def test_disable_pending_import_and_pending_deletion_refused(kms):
    kms.create_key("ext/aes", origin="EXTERNAL")
    with pytest.raises(KeyUnavailable):
        kms.disable_key("ext/aes")
    kms.create_key("app/db")
    kms.schedule_key_deletion("app/db", 7)
    with pytest.raises(KeyUnavailable):
        kms.disable_key("app/db")


# -- rotation --------------------------------------------------------------------------------------


def test_manual_rotation_old_versions_decrypt_new_use_newest(kms):
    meta = kms.create_key("app/db")
    old = kms.encrypt_data("app/db", b"v1", {"a": "b"})
    assert peek_key(old) == (meta.key_id, 1)
    assert kms.rotate_key("app/db").current_version == 2
    new = kms.encrypt_data("app/db", b"v2")
    assert peek_key(new) == (meta.key_id, 2)
    assert kms.rotate_key(meta.key_id).current_version == 3
    assert peek_key(kms.create_datakey("app/db").ciphertext)[1] == 3
    assert kms.decrypt_data(old, {"a": "b"}) == b"v1"
    assert kms.decrypt_data(new) == b"v2"


def test_rotation_of_a_disabled_key_is_refused(kms):
    kms.create_key("app/db")
    kms.disable_key("app/db")
    with pytest.raises(KeyUnavailable):
        kms.rotate_key("app/db")


def test_a_default_key_rotates_manually(kms):
    blob = kms.encrypt_data("sidecar/default", b"x")
    assert kms.rotate_key("sidecar/default").current_version == 2
    assert kms.decrypt_data(blob) == b"x"


def test_automatic_rotation(kms, clock):
    meta = kms.create_key("app/db", rotation_days=30)
    assert meta.next_rotation_at == clock() + 30 * DAY
    blob = kms.encrypt_data("app/db", b"x")
    clock.advance(days=29)
    kms.maintain()
    assert kms.describe_key("app/db").current_version == 1
    clock.advance(days=1)
    kms.maintain()
    meta = kms.describe_key("app/db")
    assert meta.current_version == 2 and meta.next_rotation_at == clock() + 30 * DAY
    assert peek_key(kms.encrypt_data("app/db", b"y"))[1] == 2
    assert kms.decrypt_data(blob) == b"x"
    clock.advance(days=30)
    kms.maintain()
    assert kms.describe_key("app/db").current_version == 3


def test_enable_and_disable_rotation(kms, clock):
    kms.create_key("app/db")
    for days in (29, 366, 0):
        with pytest.raises(InvalidRequest, match="30 and 365"):
            kms.enable_key_rotation("app/db", days)
    assert kms.enable_key_rotation("app/db", 365).rotation_interval_days == 365
    meta = kms.enable_key_rotation("app/db", 30)
    assert meta.rotation_enabled and meta.next_rotation_at == clock() + 30 * DAY
    meta = kms.disable_key_rotation("app/db")
    assert not meta.rotation_enabled and meta.next_rotation_at is None
    clock.advance(days=400)
    kms.maintain()
    assert kms.describe_key("app/db").current_version == 1


def test_disabled_key_is_not_rotated_automatically(kms, clock):
    kms.create_key("app/db", rotation_days=30)
    kms.disable_key("app/db")
    clock.advance(days=31)
    kms.maintain()
    assert kms.describe_key("app/db").current_version == 1


# -- aliases, descriptions, metadata ------------------------------------------------------------------


def test_alias_and_description_updates(kms):
    meta = kms.create_key("app/db", description="first")
    kms.create_key("app/other")
    assert kms.update_key_alias("app/db", "app/db2").alias == "app/db2"
    with pytest.raises(NotFound):
        kms.describe_key("app/db")
    assert kms.describe_key("app/db2").key_id == meta.key_id
    with pytest.raises(AlreadyExists):
        kms.update_key_alias("app/db2", "app/other")
    with pytest.raises(AlreadyExists):
        kms.create_key("app/other")
    assert kms.update_key_description("app/db2", "second").description == "second"
    with pytest.raises(InvalidRequest):
        kms.update_key_description("app/db2", "x" * 8193)
    assert kms.describe_key(meta.key_id).description == "second"


@pytest.mark.parametrize("alias", ["", "has space", "/lead", "trail/", "a//b", "x" * 257, pytest.param(str(uuid.uuid4()), id="a-key-id")])
def test_invalid_aliases_are_refused(kms, alias):
    with pytest.raises(InvalidRequest):
        kms.create_key(alias)


def test_keys_without_alias_are_named_by_id(kms):
    meta = kms.create_key()
    assert meta.alias is None
    assert kms.decrypt_data(kms.encrypt_data(meta.key_id, b"x")) == b"x"


def test_metadata_fields(kms, clock, kh):
    meta = kms.create_key("app/db", description="the db", rotation_days=90)
    assert uuid.UUID(meta.key_id).version == 4
    d = meta.to_dict()
    for field in ("key_id", "alias", "description", "state", "created_at", "spec", "usage", "origin",
                  "rotation_enabled", "rotation_interval_days", "next_rotation_at", "deletion_date",
                  "material_expires_at", "current_version"):
        assert field in d, field
    assert meta.created_at == clock()
    assert d["created_at"] == "2027-01-15T08:00:00Z"
    assert (d["alias"], d["description"], d["state"], d["spec"], d["usage"], d["origin"]) == (
        "app/db", "the db", "Enabled", "AES_256", "ENCRYPT_DECRYPT", "KMS")
    assert d["rotation_interval_days"] == 90 and d["deletion_date"] is None
    meta = kms.schedule_key_deletion("app/db", 10)
    assert meta.to_dict()["deletion_date"] == "2027-01-25T08:00:00Z"
    kms.create_key("ext/aes", origin="EXTERNAL")
    meta = kh.import_material(kms, "ext/aes", kh.material_for("AES_256"), expires_at=clock() + DAY)
    assert meta.to_dict()["material_expires_at"] == "2027-01-16T08:00:00Z"
    assert sorted(k.alias for k in kms.list_keys()) == ["app/db", "ext/aes"]


def test_unknown_keys(kms):
    for name in ("nope", str(uuid.uuid4()), ""):
        with pytest.raises(NotFound):
            kms.encrypt_data(name, b"x")
        with pytest.raises(NotFound):
            kms.disable_key(name) if name else kms.describe_key(name)


def test_wrong_key_for_a_blob_is_refused(kms):
    kms.create_key("app/a")
    kms.create_key("app/b")
    blob = kms.encrypt_data("app/a", b"x")
    with pytest.raises(InvalidCiphertext):
        kms.decrypt_data(blob, key="app/b")
    assert kms.decrypt_data(blob, key="app/a") == b"x"


# -- the state the operator gave a key survives its material going and coming back ------------

@pytest.mark.parametrize("gone", ["expired", "deleted"])
def test_disabled_key_stays_disabled_across_reimport(kms, clock, kh, gone):
    """Issue 15 item 11: a Disabled key came back Enabled after its material was re-imported."""
    material = kh.material_for("AES_256")
    kms.create_key("ext/off", origin="EXTERNAL")
    kh.import_material(kms, "ext/off", material, expires_at=clock() + 3 * DAY)
    kms.disable_key("ext/off")
    if gone == "expired":
        clock.advance(days=4)
        kms.maintain()
    else:
        kms.delete_imported_key_material("ext/off")
    assert kms.describe_key("ext/off").state.value == "PendingImport"
    assert kh.import_material(kms, "ext/off", material).state.value == "Disabled"
    with pytest.raises(KeyUnavailable):
        kms.encrypt_data("ext/off", b"x")


def test_enabled_key_comes_back_enabled_and_cancelled_deletion_comes_back_disabled(kms, clock, kh):
    material = kh.material_for("AES_256")
    kms.create_key("ext/on", origin="EXTERNAL")
    kh.import_material(kms, "ext/on", material, expires_at=clock() + 3 * DAY)
    clock.advance(days=4)
    kms.maintain()
    assert kh.import_material(kms, "ext/on", material).state.value == "Enabled"
    kms.create_key("ext/cancel", origin="EXTERNAL")  # never had material
    kms.schedule_key_deletion("ext/cancel", 7)
    assert kms.cancel_key_deletion("ext/cancel").state.value == "PendingImport"
    # a cancelled deletion leaves keys Disabled (AWS semantics), material or not
    assert kh.import_material(kms, "ext/cancel", material).state.value == "Disabled"
