"""The vendor table itself (sans-IO): it covers every operation the issue lists, each row
names a facade operation a policy can name, each row's path is one the vendor SDK calls,
and each refusal of kmscore's rules gets the vendor's code (the classification reads
kmscore.rules' messages, so a reworded rule fails here, not silently in production)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmscore import errors as kms_errors
from kmscore import rules
from kmscore.rules import KeyFacts
from kmscore.specs import KeySpec, KeyState, KeyUsage, Origin
from kmsserve import errors
from kmsserve.apis import vendor, vendorfields
from kmsserve.operations import FACADE_OPERATIONS

LISTED = set("""create-key describe-key list-keys enable-key disable-key schedule-key-deletion cancel-key-deletion
update-key-alias update-key-description encrypt-data decrypt-data create-datakey create-datakey-without-plaintext
encrypt-datakey decrypt-datakey gen-random sign verify get-publickey enable-key-rotation disable-key-rotation
update-key-rotation-interval get-key-rotation-status rotate-on-demand get-parameters-for-import import-key-material
delete-imported-key-material generate-mac verify-mac""".split())


def test_the_table_has_every_listed_operation_and_policies_can_name_each():
    assert set(vendor.OPERATIONS) == LISTED
    assert {op.action for op in vendor.OPERATIONS.values()} <= FACADE_OPERATIONS


def test_every_row_is_a_path_the_vendor_sdk_calls():
    kmsclient = pytest.importorskip("huaweicloudsdkkms.v2.kms_client")
    paths = set(re.findall(r'"POST",\s*"resource_path": "/v1\.0/\{project_id\}/kms/([a-z-]+)"',
                           Path(kmsclient.__file__).read_text()))
    assert LISTED <= paths


def facts(state=KeyState.ENABLED, spec=KeySpec.AES_256, origin=Origin.KMS, alias="app/is-Disabled"):
    usage = KeyUsage.SIGN_VERIFY if spec.is_asymmetric else KeyUsage.ENCRYPT_DECRYPT
    return KeyFacts("0d0466b0-e727-4d9c-b35d-f84bb474a37f", alias, spec, usage, origin, state)


CASES = [
    (lambda: rules.check_use(facts(KeyState.DISABLED), rules.Op.ENCRYPT, 0), "KMS.0209"),
    (lambda: rules.check_use(facts(KeyState.PENDING_DELETION), rules.Op.ENCRYPT, 0), "KMS.0210"),
    (lambda: rules.check_use(facts(KeyState.PENDING_IMPORT), rules.Op.ENCRYPT, 0), "KMS.1301"),
    (lambda: rules.next_state_enable(facts(KeyState.PENDING_DELETION)), "KMS.0210"),
    (lambda: rules.next_state_disable(facts(KeyState.PENDING_IMPORT)), "KMS.1301"),
    (lambda: rules.next_state_schedule_deletion(facts(KeyState.PENDING_DELETION)), "KMS.1402"),
    (lambda: rules.next_state_cancel_deletion(facts(), True), "KMS.1501"),
    (lambda: rules.next_state_disable(facts(alias="sidecar/default")), "KMS.0211"),
    (lambda: rules.check_rotation(facts(origin=Origin.EXTERNAL)), "KMS.0312"),
    (lambda: rules.check_rotation(facts(spec=KeySpec.RSA_2048)), "KMS.0324"),
    (lambda: rules.check_import(facts(), None, 0), "KMS.0309"),
    (lambda: rules.check_delete_material(facts(KeyState.PENDING_IMPORT, origin=Origin.EXTERNAL)), "KMS.2701"),
    (lambda: rules.check_use(facts(spec=KeySpec.RSA_2048), rules.Op.DATAKEY, 0), "KMS.0308"),
    (lambda: rules.check_expiry(1.0, 100.0), "KMS.2602"),
]


@pytest.mark.parametrize("refusal, code", CASES)
def test_each_rule_refusal_gets_the_vendors_code(refusal, code):
    with pytest.raises(kms_errors.KmsError) as e:
        refusal()
    assert vendor.error_code(e.value)[0] == code


def test_import_refusals_and_everything_else():
    from kmscore.material import normalize_import

    with pytest.raises(kms_errors.KeyImportError) as e:
        normalize_import(KeySpec.AES_256, b"short")
    assert vendor.error_code(e.value) == ("KMS.2604", 400)
    assert vendor.error_code(kms_errors.KeyImportError("import token expired at 2026-12-02T00:00:00Z")) == ("KMS.2601", 400)
    assert vendor.error_code(kms_errors.KeyImportError("key k held different key material before")) == ("KMS.2606", 400)
    assert vendor.error_code(kms_errors.StoreError("the key store failed: disk I/O error")) == ("KMS.0101", 500)
    assert vendor.error_code(RuntimeError("a bug")) == ("KMS.0101", 500)
    assert vendor.error_code(errors.Replayed("x")) == ("APIGW.0301", 401)
    assert vendor.error_code(errors.AccessDenied("x")) == ("KMS.0306", 403)


def test_a_digest_of_the_wrong_length_is_the_vendors_code():
    from kmscore.material import LoadedKey, generate
    from kmscore.specs import MessageType, SigningAlgorithm

    key = LoadedKey("0d0466b0-e727-4d9c-b35d-f84bb474a37f", 1, KeySpec.EC_P256, generate(KeySpec.EC_P256))
    with pytest.raises(kms_errors.InvalidRequest) as e:
        key.sign(b"not a digest", SigningAlgorithm.ECDSA_SHA_256, MessageType.DIGEST)
    assert vendor.error_code(e.value) == ("KMS.0329", 400)


def test_internal_errors_say_nothing():
    out = vendor.API.fail(kms_errors.StoreError("the key store /var/lib/keyhold/keys.db failed"), "rid")
    assert out.status == 500 and b"keys.db" not in out.body and b"KMS.0101" in out.body
    out = vendor.API.fail(errors.AuthFailed("the credential scope is wrong for key KHAK123"), "rid")
    assert b"KHAK123" not in out.body and b"scope" not in out.body


@pytest.mark.parametrize("value, ok", [("7", 7), (7, 7), ("1096", 1096), ("6", None), ("1097", None), (True, None),
                                       (7.0, None), ("7.0", None), ("-7", None), ("²", None), ("9" * 5000, None), ("", "missing"), (None, "missing")])
def test_numbers_come_as_strings_or_numbers_within_the_vendors_range(value, ok):
    f = {"pending_days": value}
    if isinstance(ok, int):
        assert vendorfields.number(f, "pending_days", 7, 1096, "KMS.1401") == ok
    else:
        with pytest.raises(vendorfields.VendorError) as e:
            vendorfields.number(f, "pending_days", 7, 1096, "KMS.1401")
        assert e.value.code == ("KMS.0204" if ok == "missing" else "KMS.1401")


def test_the_encryption_context_is_never_ignored():
    assert vendorfields.context({"additional_authenticated_data": "x"}) == {"additional_authenticated_data": "x"}
    assert vendorfields.context({"encryption_context": {"a": "b"}}) == {"a": "b"}
    assert vendorfields.context({}) is None
    for bad in ({"encryption_context": {"a": 1}}, {"encryption_context": "a=b"},
                {"additional_authenticated_data": "x", "encryption_context": {"a": "b"}}):
        with pytest.raises(vendorfields.VendorError) as e:
            vendorfields.context(bad)
        assert e.value.code == "KMS.0208"
    with pytest.raises(vendorfields.VendorError):
        vendorfields.context({"additional_authenticated_data": 5})


def test_encrypt_datakey_plain_text_is_the_dek_and_its_digest():
    import hashlib

    dek = bytes(range(32))
    good = (dek + hashlib.sha256(dek).digest()).hex()
    assert vendorfields.dek_with_digest({"plain_text": good, "datakey_plain_length": "32"}) == dek
    assert vendorfields.dek_with_digest({"plain_text": good}) == dek  # the length follows from the text
    for fields, code in (({"plain_text": good, "datakey_plain_length": "64"}, "KMS.2104"),
                         ({"plain_text": (dek + bytes(32)).hex()}, "KMS.2103"),
                         ({"plain_text": "zz"}, "KMS.2101")):
        with pytest.raises(vendorfields.VendorError) as e:
            vendorfields.dek_with_digest(fields)
        assert e.value.code == code


FIELDS = sorted({"key_id", "key_alias", "key_spec", "key_usage", "key_description", "origin", "pending_days",
                 "plain_text", "cipher_text", "encryption_algorithm", "additional_authenticated_data",
                 "encryption_context", "datakey_length", "datakey_plain_length", "datakey_cipher_length",
                 "random_data_length", "message", "signature", "signing_algorithm", "message_type", "mac",
                 "mac_algorithm", "rotation_interval", "wrapping_algorithm", "import_token",
                 "encrypted_key_material", "encrypted_privatekey", "expiration_time", "limit", "marker",
                 "key_state", "sequence"})
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
                    | st.sampled_from(["7", "256", "AES_256", "kms", "external", "RSA_2048", "aGk=", "00ff",
                                     "²", "9" * 5000, 10**40, "\ud800"]),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(LISTED)), fields=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=8))
def test_any_request_body_gives_a_clear_error_never_a_crash(name, fields):
    """Whatever the body holds, reading it is either arguments or one of the errors the
    API maps to its codes (anything else would be a 500 with a traceback in the log)."""
    op = vendor.OPERATIONS[name]
    try:
        args = op.args(fields)
        op.keys(args)
    except (errors.ServeError, kms_errors.KmsError) as e:
        code, status = vendor.error_code(e)
        assert status == 400 and code.startswith("KMS.")


def test_the_sdk_tests_run_every_listed_operation():
    """Each listed operation's SDK method is called in test_vendor_sdk.py (the table and
    the proof cannot drift apart)."""
    kmsclient = pytest.importorskip("huaweicloudsdkkms.v2.kms_client")
    source = Path(kmsclient.__file__).read_text()
    method_of = {op: m for m, op in re.findall(
        r'def _(\w+)_http_info\(cls, request\):\s*http_info = \{\s*"method": "POST",\s*'
        r'"resource_path": "/v1\.0/\{project_id\}/kms/([a-z-]+)"', source)}
    tests = (Path(__file__).parent / "test_vendor_sdk.py").read_text()
    assert not [op for op in LISTED if f"kms.{method_of[op]}(" not in tests]
