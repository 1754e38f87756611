"""One conformance suite of the Kms facade, run against both implementations: the
embedded `kmscore.Kms` on a local store and `kmscore.remote.RemoteKms` against a real
`kms serve` process. Same results, same exception classes, same messages: a front end
cannot tell them apart.

Each test makes its own keys (unique aliases), so the two sides share one server and
one embedded store per module."""

from __future__ import annotations

import re
import time
import uuid

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

import kmscore
from kmscore import DataKey, ImportParameters, KeyMetadata, KeySpec, KeyState, KeyUsage, Kms, Origin
from tests.serve.conftest import remote_kms

SIDES = ["embedded", "remote"]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    with Kms(tmp_path_factory.mktemp("embedded") / "home") as kms:
        yield kms


@pytest.fixture(scope="module")
def remote(module_server):
    with remote_kms(module_server) as kms:
        yield kms


@pytest.fixture(params=SIDES)
def kms(request):
    return request.getfixturevalue(request.param)


def alias(prefix: str = "conf") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


def oaep_wrap(public_pem: str, material: bytes) -> bytes:
    public = serialization.load_pem_public_key(public_pem.encode())
    return public.encrypt(material, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))


# -- lifecycle ---------------------------------------------------------------------------------
def test_lifecycle(kms):
    name = alias()
    meta = kms.create_key(name, description="conformance")
    assert isinstance(meta, KeyMetadata)
    assert (meta.alias, meta.state, meta.spec, meta.usage, meta.origin) == (
        name, KeyState.ENABLED, KeySpec.AES_256, KeyUsage.ENCRYPT_DECRYPT, Origin.KMS)
    assert kms.describe_key(meta.key_id) == kms.describe_key(name) == meta
    assert meta.key_id in {m.key_id for m in kms.list_keys()}
    assert kms.disable_key(name).state is KeyState.DISABLED
    assert kms.enable_key(name).state is KeyState.ENABLED
    pending = kms.schedule_key_deletion(name, 7)
    assert pending.state is KeyState.PENDING_DELETION and pending.deletion_date > time.time() + 6 * 86400
    assert kms.cancel_key_deletion(name).state is KeyState.DISABLED
    renamed = alias()
    assert kms.update_key_alias(name, renamed).alias == renamed
    assert kms.update_key_description(renamed, "now this").description == "now this"
    rot = kms.enable_key_rotation(renamed, 90)
    assert rot.rotation_enabled and rot.rotation_interval_days == 90
    assert not kms.disable_key_rotation(renamed).rotation_enabled
    kms.enable_key(renamed)
    assert kms.rotate_key(renamed).current_version == 2
    assert kms.default_key("sidecar").is_default


# -- encrypt / decrypt, data keys ------------------------------------------------------------------
def test_encrypt_decrypt_with_context(kms):
    name = alias()
    kms.create_key(name)
    ctx = {"tenant": "a", "purpose": "conformance"}
    blob = kms.encrypt_data(name, b"attack at dawn", ctx)
    assert kms.decrypt_data(blob, ctx) == b"attack at dawn"
    assert kms.decrypt_data(blob, dict(reversed(ctx.items())), key=name) == b"attack at dawn"
    with pytest.raises(kmscore.InvalidCiphertext):
        kms.decrypt_data(blob, {"tenant": "b", "purpose": "conformance"})
    with pytest.raises(kmscore.InvalidCiphertext):
        kms.decrypt_data(blob)
    kms.rotate_key(name)
    assert kms.decrypt_data(blob, ctx) == b"attack at dawn"  # old versions keep decrypting


def test_rsa_encryption(kms):
    name = alias()
    kms.create_key(name, spec="RSA_2048", usage="ENCRYPT_DECRYPT")
    out = kms.encrypt_data(name, b"small secret", algorithm="RSAES_OAEP_SHA_256")
    assert kms.decrypt_data(out, key=name, algorithm="RSAES_OAEP_SHA_256") == b"small secret"


def test_data_keys(kms):
    name = alias()
    kms.create_key(name)
    ctx = {"file": "x"}
    dk = kms.create_datakey(name, 256, ctx)
    assert isinstance(dk, DataKey) and len(dk.plaintext) == 32
    assert kms.decrypt_datakey(dk.ciphertext, ctx) == dk.plaintext
    bare = kms.create_datakey(name, 512, with_plaintext=False)
    assert bare.plaintext is None and len(kms.decrypt_datakey(bare.ciphertext)) == 64
    wrapped = kms.encrypt_datakey(name, b"k" * 32, ctx)
    assert kms.decrypt_datakey(wrapped, ctx, key=name) == b"k" * 32
    assert kms.key_usable(name) is None
    assert kms.key_usable(name, "data keys") is None


def test_gen_random(kms):
    assert len(kms.gen_random(48)) == 48


# -- signatures, MACs ---------------------------------------------------------------------------
def test_sign_verify_and_public_key(kms):
    name = alias()
    kms.create_key(name, spec="EC_P256")
    sig = kms.sign(name, b"message", "ECDSA_SHA_256")
    assert kms.verify(name, b"message", sig, "ECDSA_SHA_256") is True
    assert kms.verify(name, b"other", sig, "ECDSA_SHA_256") is False
    public = serialization.load_pem_public_key(kms.get_public_key(name).encode())
    public.verify(sig, b"message", ec.ECDSA(hashes.SHA256()))  # an outside verifier agrees
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"message")
    assert kms.verify(name, digest.finalize(), sig, "ECDSA_SHA_256", "DIGEST") is True


def test_mac(kms):
    name = alias()
    kms.create_key(name, spec="HMAC_256")
    mac = kms.generate_mac(name, b"payload")
    assert kms.verify_mac(name, b"payload", mac) is True
    assert kms.verify_mac(name, b"payload", mac, "HMAC_SHA_256") is True
    assert kms.verify_mac(name, b"tampered", mac) is False


# -- import -----------------------------------------------------------------------------------
def test_import_key_material(kms):
    name = alias()
    meta = kms.create_key(name, origin="EXTERNAL")
    assert meta.state is KeyState.PENDING_IMPORT and meta.current_version == 0
    params = kms.get_parameters_for_import(name)
    assert isinstance(params, ImportParameters) and params.warning is None
    assert params.wrapping_algorithm == "RSAES_OAEP_SHA_256"
    material = bytes(range(32))
    expires = time.time() + 3600
    imported = kms.import_key_material(name, params.import_token, oaep_wrap(params.public_key_pem, material), expires)
    assert imported.state is KeyState.ENABLED and imported.material_expires_at == pytest.approx(expires)
    blob = kms.encrypt_data(name, b"under imported material")
    assert kms.decrypt_data(blob) == b"under imported material"
    gone = kms.delete_imported_key_material(name)
    assert gone.state is KeyState.PENDING_IMPORT
    sha1 = kms.get_parameters_for_import(name, "RSAES_OAEP_SHA_1", "RSA_3072")
    assert sha1.warning and "SHA-1" in sha1.warning and sha1.wrapping_key_spec == "RSA_3072"


# -- errors: the same class and the same message on both sides --------------------------------------
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def failures(kms) -> list[tuple[str, str]]:
    """Run calls that must fail; (exception class, message with key ids and the aliases
    made here replaced): what a front end sees."""
    tag = uuid.uuid4().hex[:8]
    names = {f"e{tag}/aes": "<aes>", f"e{tag}/ec": "<ec>", f"e{tag}/hmac": "<hmac>", f"e{tag}/ext": "<ext>"}
    aes, ec_, hmac_, ext = names
    kms.create_key(aes)
    kms.create_key(ec_, spec="EC_P256")
    kms.create_key(hmac_, spec="HMAC_256")
    kms.create_key(ext, origin="EXTERNAL")
    blob = kms.encrypt_data(aes, b"x", {"a": "1"})
    calls = [
        lambda: kms.describe_key("no/such-key"),
        lambda: kms.describe_key("00000000-0000-4000-8000-000000000000"),
        lambda: kms.create_key(aes),  # alias taken
        lambda: kms.create_key("fsmount/default"),  # reserved
        lambda: kms.create_key(alias(), spec="NOPE"),
        lambda: kms.create_key(alias(), spec="HMAC_256", rotation_days=30),
        lambda: kms.encrypt_data(aes, b"x" * 5000),
        lambda: kms.encrypt_data(ec_, b"x"),
        lambda: kms.encrypt_data(aes, b"x", algorithm="RSAES_OAEP_SHA_1"),
        lambda: kms.decrypt_data(blob, {"a": "2"}),
        lambda: kms.decrypt_data(b"short"),
        lambda: kms.decrypt_data(blob, {"a": "1"}, key=hmac_),
        lambda: kms.create_datakey(aes, 128),
        lambda: kms.encrypt_datakey(aes, b"short"),
        lambda: kms.decrypt_datakey(blob, {"a": "1"}),  # not a data key
        lambda: kms.sign(aes, b"m", "ECDSA_SHA_256"),
        lambda: kms.sign(ec_, b"m", "RSASSA_PSS_SHA_256"),
        lambda: kms.sign(ec_, b"m", "NOT_AN_ALGORITHM"),
        lambda: kms.generate_mac(hmac_, b"m", "HMAC_SHA_512"),
        lambda: kms.gen_random(0),
        lambda: kms.gen_random(5000),
        lambda: kms.schedule_key_deletion(aes, 3),
        lambda: kms.encrypt_data(ext, b"x"),  # PendingImport
        lambda: kms.import_key_material(ext, "kh1.bogus", b"\0" * 256),
        lambda: kms.delete_imported_key_material(aes),
        lambda: kms.enable_key_rotation(ec_),
        lambda: kms.disable_key("sidecar/default"),
        lambda: (kms.disable_key(aes), kms.encrypt_data(aes, b"x")),
        lambda: kms.key_usable(aes),
        lambda: kms.decrypt_data(blob, {"a": "1"}),  # disabled
        lambda: kms.update_key_alias(aes, "bad alias with spaces"),
    ]
    out = []
    for call in calls:
        try:
            call()
        except kmscore.KmsError as e:
            message = _ID.sub("<id>", str(e))
            for name, placeholder in names.items():
                message = message.replace(name, placeholder)
            out.append((type(e).__name__, message))
        else:
            out.append(("no error", ""))
    return out


def test_errors_cross_with_their_class_and_message(embedded, remote):
    here, there = failures(embedded), failures(remote)
    assert ("no error", "") not in here
    assert there == here
    # every family of kmscore's errors is among them (a subclass counts for its family)
    kinds = {base.__name__ for k, _ in here for base in getattr(kmscore.errors, k).__mro__}
    assert {"NotFound", "AlreadyExists", "InvalidRequest", "KeyRuleViolation", "KeyUnavailable",
            "InvalidCiphertext", "KeyImportError"} <= kinds
