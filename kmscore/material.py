"""Key material: generation, parsing and the raw cryptographic operations per spec.

`LoadedKey` wraps one key version's material as ready-to-use `cryptography`
objects (built once, reused for every call). Its repr never shows material.

cryptography's RSA, EC and serialization modules are imported where an RSA or EC key
is used, not with this module: they cost ~40 ms of start-up, which every `kms` command
(an `encrypt-file` under an AES key) would pay otherwise (issue 14).
"""

from __future__ import annotations

import hmac as _hmac
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kmscore import blob as blobfmt
from kmscore.errors import IncorrectKeyMaterial, InvalidCiphertext, InvalidRequest, KeyRuleViolation
from kmscore.nonces import NonceBudget
from kmscore.specs import (
    HMAC_SPEC_ALGORITHM,
    EncryptionAlgorithm,
    KeySpec,
    MacAlgorithm,
    MessageType,
    SigningAlgorithm,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import padding

_HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
_RSA_BITS = {KeySpec.RSA_2048: 2048, KeySpec.RSA_3072: 3072, KeySpec.RSA_4096: 4096}
_CURVES = {KeySpec.EC_P256: "SECP256R1", KeySpec.EC_P384: "SECP384R1"}  # names in asymmetric.ec
_HMAC_BYTES = {KeySpec.HMAC_256: 32, KeySpec.HMAC_384: 48, KeySpec.HMAC_512: 64}
MAX_RAW_MESSAGE = 4096


def hash_for(name: str) -> hashes.HashAlgorithm:
    return _HASHES[name]()


def generate(spec: KeySpec) -> bytes:
    """Fresh material for a spec, as the bytes we seal: raw for AES/HMAC, PKCS#8 DER else."""
    if spec is KeySpec.AES_256:
        return os.urandom(32)
    if spec in _HMAC_BYTES:
        return os.urandom(_HMAC_BYTES[spec])
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if spec in _RSA_BITS:
        private = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[spec])
    else:
        private = ec.generate_private_key(getattr(ec, _CURVES[spec])())
    return private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def normalize_import(spec: KeySpec, material: bytes) -> bytes:
    """Check imported material fits the key's spec; return it in our sealed form."""
    if spec is KeySpec.AES_256:
        if len(material) != 32:
            raise IncorrectKeyMaterial(f"AES_256 material must be 32 bytes, got {len(material)}")
        return material
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        private = serialization.load_der_private_key(material, password=None)
    except (ValueError, TypeError):
        raise IncorrectKeyMaterial(
            f"{spec.value} material must be a DER-encoded private key (PKCS#8 or traditional)"
        ) from None
    if spec in _RSA_BITS:
        ok = isinstance(private, rsa.RSAPrivateKey) and private.key_size == _RSA_BITS[spec]
    else:
        ok = isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, getattr(ec, _CURVES[spec]))
    if not ok:
        raise IncorrectKeyMaterial(f"the imported private key is not a {spec.value} key")
    return private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(eq=False)
class LoadedKey:
    """One key version, loaded. Never printed, never pickled."""

    key_id: str
    version: int
    spec: KeySpec
    _material: bytes = field(repr=False)
    _aead: AESGCM | None = field(default=None, repr=False)
    _private: object = field(default=None, repr=False)
    _prefix: bytes = field(default=b"", repr=False)
    budget: NonceBudget | None = field(default=None, repr=False)  # random nonces are counted

    def __post_init__(self) -> None:
        if self.spec is KeySpec.AES_256:
            self._aead = AESGCM(self._material)
            self._prefix = blobfmt.header(self.key_id, self.version)
        elif self.spec.is_asymmetric:
            from cryptography.hazmat.primitives import serialization

            self._private = serialization.load_der_private_key(self._material, password=None)

    def __repr__(self) -> str:
        return f"<LoadedKey {self.key_id} v{self.version} {self.spec.value}>"

    def __reduce__(self):  # pragma: no cover - guard
        raise TypeError("key handles cannot be pickled")

    # -- symmetric -------------------------------------------------------------
    def seal(self, plaintext: bytes, context: bytes, nonce: bytes | None = None) -> bytes:
        """A KMS blob; `nonce` (12 random bytes) may come from the caller's own urandom call."""
        budget = self.budget
        if budget is not None:  # NonceBudget.take(), inlined
            ticket = next(budget.tickets)
            if ticket >= budget.allowed:
                budget.refill(ticket)
        prefix = self._prefix
        if nonce is None:
            nonce = os.urandom(blobfmt.NONCE_SIZE)
        return prefix + nonce + self._aead.encrypt(nonce, plaintext, prefix + context)  # type: ignore[union-attr]

    def seal_new_secret(self, size: int, context: bytes) -> tuple[bytes, bytes]:
        """(fresh random secret, its blob): one urandom call gives both secret and nonce."""
        raw = os.urandom(size + blobfmt.NONCE_SIZE)
        secret = raw[:size]
        return secret, self.seal(secret, context, raw[size:])

    def open(self, parts: blobfmt.BlobParts, context: bytes) -> bytes:
        try:
            return self._aead.decrypt(parts.nonce, parts.ciphertext, parts.aad_prefix + context)  # type: ignore[union-attr]
        except InvalidTag:
            raise InvalidCiphertext(
                "ciphertext failed authentication: it was altered, or the encryption context differs"
            ) from None

    # -- RSA OAEP --------------------------------------------------------------
    def _oaep(self, algorithm: EncryptionAlgorithm) -> padding.OAEP:
        from cryptography.hazmat.primitives.asymmetric import padding

        h = hashes.SHA1() if algorithm is EncryptionAlgorithm.RSAES_OAEP_SHA_1 else hashes.SHA256()
        return padding.OAEP(mgf=padding.MGF1(algorithm=h), algorithm=h, label=None)

    def rsa_encrypt(self, plaintext: bytes, algorithm: EncryptionAlgorithm) -> bytes:
        public = self._private.public_key()  # type: ignore[union-attr]
        limit = public.key_size // 8 - 2 * self._oaep(algorithm).algorithm.digest_size - 2
        if len(plaintext) > limit:
            raise InvalidRequest(
                f"{self.spec.value} with {algorithm.value} encrypts at most {limit} bytes, "
                f"got {len(plaintext)}"
            )
        return public.encrypt(plaintext, self._oaep(algorithm))

    def rsa_decrypt(self, ciphertext: bytes, algorithm: EncryptionAlgorithm) -> bytes:
        try:
            return self._private.decrypt(ciphertext, self._oaep(algorithm))  # type: ignore[union-attr]
        except ValueError:
            raise InvalidCiphertext(
                f"RSA ciphertext could not be decrypted with {algorithm.value}"
            ) from None

    # -- signatures ------------------------------------------------------------
    def _sig_args(self, algorithm: SigningAlgorithm, message_type: MessageType, message: bytes):
        from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

        if algorithm.family != self.spec.family:
            raise KeyRuleViolation(
                f"key {self.key_id} is {self.spec.value}: {algorithm.value} needs an "
                f"{algorithm.family} key"
            )
        h = hash_for(algorithm.hash_name)
        if message_type is MessageType.DIGEST:
            if len(message) != h.digest_size:
                raise InvalidRequest(
                    f"a {algorithm.hash_name.upper()} digest is {h.digest_size} bytes, got {len(message)}"
                )
            chosen = utils.Prehashed(h)
        else:
            if len(message) > MAX_RAW_MESSAGE:
                raise InvalidRequest(
                    f"RAW messages are limited to {MAX_RAW_MESSAGE} bytes; sign a DIGEST instead"
                )
            chosen = h
        if algorithm.family == "EC":
            return (ec.ECDSA(chosen),)
        if "PSS" in algorithm.value:
            pad = padding.PSS(mgf=padding.MGF1(hash_for(algorithm.hash_name)), salt_length=h.digest_size)
        else:
            pad = padding.PKCS1v15()
        return (pad, chosen)

    def sign(self, message: bytes, algorithm: SigningAlgorithm, message_type: MessageType) -> bytes:
        args = self._sig_args(algorithm, message_type, message)
        return self._private.sign(message, *args)  # type: ignore[union-attr]

    def verify(
        self, message: bytes, signature: bytes, algorithm: SigningAlgorithm, message_type: MessageType
    ) -> bool:
        args = self._sig_args(algorithm, message_type, message)
        try:
            self._private.public_key().verify(signature, message, *args)  # type: ignore[union-attr]
            return True
        except InvalidSignature:
            return False

    def public_pem(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return (
            self._private.public_key()  # type: ignore[union-attr]
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    # -- MAC -------------------------------------------------------------------
    def mac(self, message: bytes, algorithm: MacAlgorithm | None) -> bytes:
        expected = HMAC_SPEC_ALGORITHM[self.spec]
        if algorithm is not None and algorithm is not expected:
            raise KeyRuleViolation(
                f"key {self.key_id} is {self.spec.value}: its MAC algorithm is {expected.value}"
            )
        return _hmac.digest(self._material, message, "sha" + expected.value.rsplit("_", 1)[1])

    def verify_mac(self, message: bytes, tag: bytes, algorithm: MacAlgorithm | None) -> bool:
        return _hmac.compare_digest(self.mac(message, algorithm), tag)
