"""Every cryptographic operation of the facade and every refusal, checked against an
independent implementation (`cryptography` directly) where there is one."""

from __future__ import annotations

import hashlib
import hmac
import uuid

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from kmscore import (
    InvalidCiphertext,
    InvalidRequest,
    KeyRuleViolation,
    KeyUnavailable,
    Kms,
    NotFound,
)

RSA_ALGS = [f"RSASSA_{p}_SHA_{n}" for p in ("PSS", "PKCS1_V1_5") for n in (256, 384, 512)]
EC_ALGS = [f"ECDSA_SHA_{n}" for n in (256, 384, 512)]
HASHES = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}


@pytest.fixture(scope="module")
def kms(tmp_path_factory):
    with Kms(tmp_path_factory.mktemp("ops") / "home") as kms:
        kms.create_key("aes", "AES_256")
        kms.create_key("aes2", "AES_256")
        kms.create_key("rsa-sign", "RSA_2048", "SIGN_VERIFY")
        kms.create_key("rsa-enc", "RSA_2048", "ENCRYPT_DECRYPT")
        kms.create_key("ec256", "EC_P256")
        kms.create_key("ec384", "EC_P384")
        for n in (256, 384, 512):
            kms.create_key(f"hmac{n}", f"HMAC_{n}")
        yield kms


def public(kms, key):
    return serialization.load_pem_public_key(kms.get_public_key(key).encode())


# -- symmetric encrypt / decrypt -------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4096])
def test_encrypt_decrypt_round_trip(kms, size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    blob = kms.encrypt_data("aes", data)
    assert size < 16 or data not in blob
    assert len(blob) == len(data) + 49  # header 21 + nonce 12 + tag 16
    assert kms.decrypt_data(blob) == data
    assert kms.encrypt_data("aes", data) != blob  # fresh nonce every time


def test_plaintext_over_4096_bytes_is_refused(kms):
    with pytest.raises(InvalidRequest, match="4096"):
        kms.encrypt_data("aes", b"x" * 4097)


def test_encryption_context_is_bound(kms):
    ctx = {"tenant": "a", "file": "/x"}
    blob = kms.encrypt_data("aes", b"secret", ctx)
    assert kms.decrypt_data(blob, {"file": "/x", "tenant": "a"}) == b"secret"  # order does not matter
    for wrong in (None, {}, {"tenant": "b", "file": "/x"}, {"tenant": "a"}, {**ctx, "extra": ""}):
        with pytest.raises(InvalidCiphertext):
            kms.decrypt_data(blob, wrong)
    plain = kms.encrypt_data("aes", b"secret")
    with pytest.raises(InvalidCiphertext):
        kms.decrypt_data(plain, {"tenant": "a"})


@pytest.mark.parametrize("where", [0, 5, 18, 22, 40, -1])
def test_tampered_ciphertext_is_refused(kms, where):
    blob = bytearray(kms.encrypt_data("aes", b"important data"))
    blob[where] ^= 0x01
    with pytest.raises((InvalidCiphertext, NotFound)):
        kms.decrypt_data(bytes(blob))


@pytest.mark.parametrize("blob", [b"", b"\x01" * 10, b"\x02" + bytes(60)])
def test_malformed_ciphertext_is_refused(kms, blob):
    with pytest.raises(InvalidCiphertext):
        kms.decrypt_data(blob)


def test_truncated_ciphertext_is_refused(kms):
    blob = kms.encrypt_data("aes", b"important data")
    for cut in (1, 16, len(blob) - 49):
        with pytest.raises(InvalidCiphertext):
            kms.decrypt_data(blob[:-cut])


def test_ciphertext_naming_a_version_that_does_not_exist(kms):
    blob = bytearray(kms.encrypt_data("aes", b"x"))
    blob[17:21] = (99).to_bytes(4, "big")
    with pytest.raises(InvalidCiphertext, match="version"):
        kms.decrypt_data(bytes(blob))


def test_symmetric_key_refuses_rsa_algorithms(kms):
    with pytest.raises(KeyRuleViolation):
        kms.encrypt_data("aes", b"x", algorithm="RSAES_OAEP_SHA_256")
    assert kms.decrypt_data(kms.encrypt_data("aes", b"x", algorithm="SYMMETRIC_DEFAULT")) == b"x"


# -- RSA OAEP -------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg,h", [("RSAES_OAEP_SHA_256", hashes.SHA256()), ("RSAES_OAEP_SHA_1", hashes.SHA1())])
def test_rsa_oaep(kms, alg, h):
    ct = kms.encrypt_data("rsa-enc", b"hello rsa", algorithm=alg)
    assert len(ct) == 256
    assert kms.decrypt_data(ct, key="rsa-enc", algorithm=alg) == b"hello rsa"
    # made independently with the public key, decrypted by the KMS
    ours = public(kms, "rsa-enc").encrypt(b"from outside", padding.OAEP(padding.MGF1(h), h, None))
    assert kms.decrypt_data(ours, key="rsa-enc", algorithm=alg) == b"from outside"
    other = "RSAES_OAEP_SHA_1" if alg.endswith("256") else "RSAES_OAEP_SHA_256"
    with pytest.raises(InvalidCiphertext):
        kms.decrypt_data(ct, key="rsa-enc", algorithm=other)


def test_rsa_oaep_refusals(kms):
    with pytest.raises(InvalidRequest, match="at most 190"):
        kms.encrypt_data("rsa-enc", b"x" * 191)
    assert kms.decrypt_data(kms.encrypt_data("rsa-enc", b"x" * 190), key="rsa-enc") == b"x" * 190
    with pytest.raises(InvalidRequest, match="context"):
        kms.encrypt_data("rsa-enc", b"x", {"a": "b"})
    with pytest.raises(KeyRuleViolation):
        kms.encrypt_data("rsa-enc", b"x", algorithm="SYMMETRIC_DEFAULT")
    ct = bytearray(kms.encrypt_data("rsa-enc", b"x"))
    ct[100] ^= 1
    with pytest.raises(InvalidCiphertext):
        kms.decrypt_data(bytes(ct), key="rsa-enc")
    with pytest.raises(KeyRuleViolation):
        kms.create_datakey("rsa-enc")


# -- data keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [256, 512])
def test_datakeys_with_and_without_plaintext(kms, bits):
    dk = kms.create_datakey("aes", bits, {"f": "1"})
    assert len(dk.plaintext) == bits // 8 and repr(dk).count(dk.plaintext.hex()) == 0
    assert kms.decrypt_datakey(dk.ciphertext, {"f": "1"}) == dk.plaintext
    assert kms.decrypt_datakey(dk.ciphertext, {"f": "1"}, key="aes") == dk.plaintext
    with pytest.raises(InvalidCiphertext):
        kms.decrypt_datakey(dk.ciphertext)
    bare = kms.create_datakey("aes", bits, with_plaintext=False)
    assert bare.plaintext is None
    assert len(kms.decrypt_datakey(bare.ciphertext)) == bits // 8
    assert kms.decrypt_datakey(bare.ciphertext) != dk.plaintext


@pytest.mark.parametrize("bits", [0, 128, 384, 1024])
def test_datakey_sizes_other_than_256_512_are_refused(kms, bits):
    with pytest.raises(InvalidRequest):
        kms.create_datakey("aes", bits)


def test_encrypt_and_decrypt_datakey(kms):
    for n in (32, 64):
        dek = bytes(range(n))
        blob = kms.encrypt_datakey("aes", dek, {"x": "y"})
        assert kms.decrypt_datakey(blob, {"x": "y"}) == dek
        with pytest.raises(InvalidCiphertext):
            kms.decrypt_datakey(blob, {"x": "z"})
    for n in (0, 16, 33, 65):
        with pytest.raises(InvalidRequest):
            kms.encrypt_datakey("aes", b"k" * n)
    with pytest.raises(InvalidCiphertext):
        kms.decrypt_datakey(blob, {"x": "y"}, key="aes2")
    with pytest.raises(KeyRuleViolation):
        kms.encrypt_datakey("hmac256", b"k" * 32)


def test_decrypt_datakey_refuses_a_blob_that_is_not_a_datakey(kms):
    blob = kms.encrypt_data("aes", b"short")
    with pytest.raises(InvalidCiphertext):
        kms.decrypt_datakey(blob)


# -- signatures --------------------------------------------------------------------------------------


def _independent_verify(kms, key, alg, message, message_type, signature):
    pub = public(kms, key)
    h = HASHES[alg.rsplit("_", 1)[1]]
    chosen = utils.Prehashed(h) if message_type == "DIGEST" else h
    if alg.startswith("ECDSA"):
        pub.verify(signature, message, ec.ECDSA(chosen))
    elif "PSS" in alg:
        pub.verify(signature, message, padding.PSS(padding.MGF1(h), h.digest_size), chosen)
    else:
        pub.verify(signature, message, padding.PKCS1v15(), chosen)


@pytest.mark.parametrize("message_type", ["RAW", "DIGEST"])
@pytest.mark.parametrize("key,alg", [("rsa-sign", a) for a in RSA_ALGS] + [(k, a) for k in ("ec256", "ec384") for a in EC_ALGS])
def test_sign_and_verify_every_algorithm(kms, key, alg, message_type):
    message = b"the message to sign"
    if message_type == "DIGEST":
        message = hashlib.new("sha" + alg.rsplit("_", 1)[1], message).digest()
    sig = kms.sign(key, message, alg, message_type)
    assert kms.verify(key, message, sig, alg, message_type) is True
    _independent_verify(kms, key, alg, message, message_type, sig)
    if message_type == "DIGEST":  # a DIGEST signature is the RAW signature of the original message
        raw = b"the message to sign"
        assert kms.verify(key, raw, sig, alg, "RAW") is True
    bad = bytearray(sig)
    bad[len(bad) // 2] ^= 1
    assert kms.verify(key, message, bytes(bad), alg, message_type) is False
    assert kms.verify(key, message + b"!" if message_type == "RAW" else bytes(len(message)), sig, alg, message_type) is False
    with pytest.raises(InvalidSignature):
        _independent_verify(kms, key, alg, message, message_type, bytes(bad))


def test_pss_salt_length_is_the_digest_length(kms):
    sig = kms.sign("rsa-sign", b"m", "RSASSA_PSS_SHA_384")
    pub = public(kms, "rsa-sign")
    pub.verify(sig, b"m", padding.PSS(padding.MGF1(hashes.SHA384()), 48), hashes.SHA384())
    with pytest.raises(InvalidSignature):
        pub.verify(sig, b"m", padding.PSS(padding.MGF1(hashes.SHA384()), 32), hashes.SHA384())


def test_sign_refusals(kms):
    with pytest.raises(KeyRuleViolation):
        kms.sign("ec256", b"m", "RSASSA_PSS_SHA_256")
    with pytest.raises(KeyRuleViolation):
        kms.sign("rsa-sign", b"m", "ECDSA_SHA_256")
    with pytest.raises(KeyRuleViolation):
        kms.sign("rsa-enc", b"m", "RSASSA_PSS_SHA_256")
    with pytest.raises(KeyRuleViolation):
        kms.sign("aes", b"m", "ECDSA_SHA_256")
    with pytest.raises(InvalidRequest, match="digest"):
        kms.sign("ec256", b"short", "ECDSA_SHA_256", "DIGEST")
    with pytest.raises(InvalidRequest, match="DIGEST"):
        kms.sign("ec256", b"x" * 4097, "ECDSA_SHA_256")
    with pytest.raises(InvalidRequest, match="signing algorithm"):
        kms.sign("ec256", b"m", "ECDSA_SHA_1")
    with pytest.raises(InvalidRequest, match="message type"):
        kms.sign("ec256", b"m", "ECDSA_SHA_256", "HEX")
    with pytest.raises(KeyRuleViolation):
        kms.verify("rsa-enc", b"m", b"sig", "RSASSA_PSS_SHA_256")


def test_get_public_key(kms):
    for key in ("rsa-sign", "rsa-enc", "ec256", "ec384"):
        pem = kms.get_public_key(key)
        assert pem.startswith("-----BEGIN PUBLIC KEY-----") and "PRIVATE" not in pem
    assert public(kms, "ec384").curve.name == "secp384r1"
    assert public(kms, "rsa-sign").key_size == 2048
    for key in ("aes", "hmac256"):
        with pytest.raises(KeyRuleViolation):
            kms.get_public_key(key)


# -- MACs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [256, 384, 512])
def test_generate_and_verify_mac(kms, n):
    mac = kms.generate_mac(f"hmac{n}", b"message")
    assert len(mac) == n // 8
    assert kms.generate_mac(f"hmac{n}", b"message", f"HMAC_SHA_{n}") == mac
    assert kms.verify_mac(f"hmac{n}", b"message", mac) is True
    assert kms.verify_mac(f"hmac{n}", b"message", mac, f"HMAC_SHA_{n}") is True
    assert kms.verify_mac(f"hmac{n}", b"messagE", mac) is False
    assert kms.verify_mac(f"hmac{n}", b"message", mac[:-1] + bytes([mac[-1] ^ 1])) is False
    assert kms.verify_mac(f"hmac{n}", b"message", mac[:8]) is False
    other = 384 if n != 384 else 256
    with pytest.raises(KeyRuleViolation):
        kms.generate_mac(f"hmac{n}", b"message", f"HMAC_SHA_{other}")
    # the MAC is plain HMAC: the key's other MACs agree with hmac over some key of that size
    assert mac != hmac.new(b"\x00" * (n // 8), b"message", f"sha{n}").digest()


def test_mac_refusals(kms):
    with pytest.raises(InvalidRequest):
        kms.generate_mac("hmac256", b"x" * 4097)
    for key in ("aes", "rsa-sign", "ec256"):
        with pytest.raises(KeyRuleViolation):
            kms.generate_mac(key, b"m")
    with pytest.raises(KeyRuleViolation):
        kms.verify_mac("aes", b"m", b"x" * 32)


# -- random ----------------------------------------------------------------------------------------


def test_gen_random(kms):
    a, b = kms.gen_random(32), kms.gen_random(32)
    assert len(a) == 32 and a != b
    assert len(kms.gen_random(1)) == 1 and len(kms.gen_random(1024)) == 1024
    for n in (0, -1, 1025):
        with pytest.raises(InvalidRequest):
            kms.gen_random(n)


# -- refusals by key state and name -------------------------------------------------------------------


def test_every_operation_refused_on_a_disabled_key(kms):
    blob = kms.encrypt_data("aes2", b"x")
    sig = kms.sign("ec384", b"m", "ECDSA_SHA_384")
    mac = kms.generate_mac("hmac512", b"m")
    for key in ("aes2", "ec384", "hmac512"):
        kms.disable_key(key)
    try:
        calls = [
            lambda: kms.encrypt_data("aes2", b"x"),
            lambda: kms.decrypt_data(blob),
            lambda: kms.create_datakey("aes2"),
            lambda: kms.encrypt_datakey("aes2", b"k" * 32),
            lambda: kms.sign("ec384", b"m", "ECDSA_SHA_384"),
            lambda: kms.verify("ec384", b"m", sig, "ECDSA_SHA_384"),
            lambda: kms.get_public_key("ec384"),
            lambda: kms.generate_mac("hmac512", b"m"),
            lambda: kms.verify_mac("hmac512", b"m", mac),
        ]
        for call in calls:
            with pytest.raises(KeyUnavailable, match="Disabled"):
                call()
    finally:
        for key in ("aes2", "ec384", "hmac512"):
            kms.enable_key(key)
    assert kms.decrypt_data(blob) == b"x"
    assert kms.verify("ec384", b"m", sig, "ECDSA_SHA_384")


def test_unknown_key_everywhere(kms):
    missing = str(uuid.uuid4())
    for name in ("no/such", missing):
        for call in (
            lambda: kms.encrypt_data(name, b"x"),
            lambda: kms.create_datakey(name),
            lambda: kms.sign(name, b"m", "ECDSA_SHA_256"),
            lambda: kms.generate_mac(name, b"m"),
            lambda: kms.get_public_key(name),
        ):
            with pytest.raises(NotFound, match="no key"):
                call()
    blob = bytearray(kms.encrypt_data("aes", b"x"))
    blob[1:17] = uuid.UUID(missing).bytes
    with pytest.raises(NotFound):
        kms.decrypt_data(bytes(blob))


def test_repr_never_shows_material(kms):
    key = kms._cached("aes")  # the loaded handle the hot path uses
    text = repr(key) + repr(key.current) + str(key.current)
    assert key.current._material.hex() not in text and repr(key.current._material) not in text


def test_key_id_in_other_uuid_spellings(kms):
    key_id = kms.describe_key("aes").key_id
    assert kms.describe_key(key_id.upper()).key_id == key_id
    assert kms.describe_key(key_id.replace("-", "")).key_id == key_id


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plaintext=st.binary(max_size=64), flips=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 255)), min_size=1, max_size=3),
       cut=st.integers(0, 3))
def test_mutated_blobs_never_decrypt_to_anything(kms, plaintext, flips, cut):
    """Any altered or cut blob is refused with a KMS error; never wrong bytes, never a crash."""
    blob = bytearray(kms.encrypt_data("aes", plaintext, {"p": "1"}))
    for where, mask in {w % len(blob): m for w, m in flips}.items():  # distinct positions: flips never cancel
        blob[where] ^= mask
    mutated = bytes(blob[: len(blob) - cut])
    with pytest.raises((InvalidCiphertext, NotFound)):
        kms.decrypt_data(mutated, {"p": "1"})


@settings(max_examples=60, deadline=None)
@given(context=st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=6))
def test_any_context_round_trips_and_binds(kms, context):
    blob = kms.encrypt_data("aes", b"ctx", context)
    assert kms.decrypt_data(blob, dict(reversed(list(context.items())))) == b"ctx"
    with pytest.raises(InvalidCiphertext):
        kms.decrypt_data(blob, {**context, "\x00extra": "x"})
