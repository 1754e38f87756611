"""Cryptographic operations of the facade: encrypt/decrypt, data keys, sign/verify, MACs.

The hot path is: cached key lookup, one rules check, one `cryptography` call, one
audit record counted in the mapped journal (kmscore/auditjournal.py) before the result
is returned. Nothing here touches the store unless the cache is stale. Foreign
exceptions (wrong argument types, a failing store) are turned into kmscore's own in
the `except` clauses here rather than by a wrapper, which would cost a sixth of a
4 KiB encryption (empty contexts skip `encode_context` for the same reason).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from kmscore import blob as blobfmt
from kmscore import rules
from kmscore.errors import IncorrectKey, InvalidCiphertext, InvalidRequest, KeyRuleViolation, KmsError, as_kms_error
from kmscore.keyring import CachedKey, Keyring
from kmscore.metadata import DataKey
from kmscore.specs import (
    DATAKEY_BITS,
    MAX_PLAINTEXT,
    EncryptionAlgorithm,
    KeySpec,
    MacAlgorithm,
    MessageType,
    SigningAlgorithm,
    parse_enum,
)

Context = Mapping[str, str] | None
MAX_RANDOM = 1024


class OperationsMixin(Keyring):
    # -- encrypt / decrypt -----------------------------------------------------------
    def encrypt_data(
        self, key: str, plaintext: bytes, context: Context = None, algorithm: EncryptionAlgorithm | str | None = None
    ) -> bytes:
        """AES_256: a KMS ciphertext blob, context bound as AAD. RSA: raw OAEP ciphertext."""
        k = self._use(key, rules.Op.ENCRYPT, "Encrypt")
        try:
            if len(plaintext) > MAX_PLAINTEXT:
                raise InvalidRequest(
                    f"encrypt-data takes at most {MAX_PLAINTEXT} bytes, got {len(plaintext)}; "
                    "use a data key (create-datakey / encrypt-file) for more"
                )
            if k.facts.spec is KeySpec.AES_256:
                _symmetric_only(algorithm)
                out = k.current.seal(plaintext, blobfmt.encode_context(context) if context else b"")
            else:
                out = k.current.rsa_encrypt(plaintext, _rsa_algorithm(algorithm, context))
        except Exception as e:
            e = as_kms_error(e)
            self._audit.record("Encrypt", k.facts.key_id, f"denied: {e}")
            raise e from None
        self._audit.record("Encrypt", k.facts.key_id)
        return out

    def decrypt_data(
        self,
        ciphertext: bytes,
        context: Context = None,
        key: str | None = None,
        algorithm: EncryptionAlgorithm | str | None = None,
    ) -> bytes:
        """Symmetric blobs name their key (`key`, if given, must match); RSA needs `key`."""
        return self._decrypt(ciphertext, context, key, algorithm, rules.Op.DECRYPT, "Decrypt")

    def _decrypt(self, ciphertext, context, key, algorithm, op, audit_op) -> bytes:
        if key is not None:
            k = self._use(key, op, audit_op)
            if k.facts.spec.is_asymmetric:
                try:
                    if op is rules.Op.DATAKEY:
                        raise KeyRuleViolation(f"key {k.facts.name} is {k.facts.spec.value}: data keys need an AES_256 key")
                    out = k.current.rsa_decrypt(ciphertext, _rsa_algorithm(algorithm, context))
                except Exception as e:
                    e = as_kms_error(e)
                    self._audit.record(audit_op, k.facts.key_id, f"denied: {e}")
                    raise e from None
                self._audit.record(audit_op, k.facts.key_id)
                return out
        try:
            parts = blobfmt.decode(ciphertext)
        except Exception as e:
            e = as_kms_error(e)
            self._audit.record(audit_op, None, f"denied: {e}")
            raise e from None
        named = self._use(parts.key_id, op, audit_op)
        try:
            if key is not None and named.facts.key_id != k.facts.key_id:
                raise IncorrectKey(f"the ciphertext was not made with key {key}")
            if algorithm is not None:
                _symmetric_only(algorithm)
            version = named.versions.get(parts.key_version)
            if version is None:  # perhaps rotated by another process since we cached it
                named = self._reload(parts.key_id)
                version = named.versions.get(parts.key_version)
            if version is None:
                raise InvalidCiphertext(
                    f"the ciphertext names version {parts.key_version} of key {named.facts.name}, which does not exist"
                )
            out = version.open(parts, blobfmt.encode_context(context) if context else b"")
            if op is rules.Op.DATAKEY and len(out) * 8 not in DATAKEY_BITS:
                raise InvalidCiphertext("the ciphertext does not hold a data key")
        except Exception as e:
            e = as_kms_error(e)
            self._audit.record(audit_op, named.facts.key_id, f"denied: {e}")
            raise e from None
        self._audit.record(audit_op, named.facts.key_id)
        return out

    # -- data keys -----------------------------------------------------------------------
    def create_datakey(
        self, key: str, bits: int = 256, context: Context = None, with_plaintext: bool = True
    ) -> DataKey:
        """A fresh DEK and its blob under the CMK; without plaintext, only the blob."""
        audit_op = "CreateDataKey" if with_plaintext else "CreateDataKeyWithoutPlaintext"
        k = self._use(key, rules.Op.DATAKEY, audit_op)
        try:
            if bits not in DATAKEY_BITS:
                raise InvalidRequest(f"data keys are 256 or 512 bits, not {bits}")
            plaintext, blob = k.current.seal_new_secret(
                bits // 8, blobfmt.encode_context(context) if context else b""
            )
        except Exception as e:
            e = as_kms_error(e)
            self._audit.record(audit_op, k.facts.key_id, f"denied: {e}")
            raise e from None
        self._audit.record(audit_op, k.facts.key_id)
        return DataKey(k.facts.key_id, blob, plaintext if with_plaintext else None)

    def encrypt_datakey(self, key: str, plaintext: bytes, context: Context = None) -> bytes:
        k = self._use(key, rules.Op.DATAKEY, "EncryptDataKey")
        try:
            if len(plaintext) * 8 not in DATAKEY_BITS:
                raise InvalidRequest(f"a data key is 32 or 64 bytes, got {len(plaintext)}")
            out = k.current.seal(plaintext, blobfmt.encode_context(context) if context else b"")
        except Exception as e:
            e = as_kms_error(e)
            self._audit.record("EncryptDataKey", k.facts.key_id, f"denied: {e}")
            raise e from None
        self._audit.record("EncryptDataKey", k.facts.key_id)
        return out

    def decrypt_datakey(self, ciphertext: bytes, context: Context = None, key: str | None = None) -> bytes:
        return self._decrypt(ciphertext, context, key, None, rules.Op.DATAKEY, "DecryptDataKey")

    # -- signatures ------------------------------------------------------------------------
    def sign(
        self, key: str, message: bytes, algorithm: SigningAlgorithm | str, message_type: MessageType | str = MessageType.RAW
    ) -> bytes:
        k = self._use(key, rules.Op.SIGN, "Sign")
        return self._guarded(
            "Sign",
            k,
            lambda: k.current.sign(
                message,
                parse_enum(SigningAlgorithm, algorithm, "signing algorithm"),
                parse_enum(MessageType, message_type, "message type"),
            ),
        )

    def verify(
        self,
        key: str,
        message: bytes,
        signature: bytes,
        algorithm: SigningAlgorithm | str,
        message_type: MessageType | str = MessageType.RAW,
    ) -> bool:
        k = self._use(key, rules.Op.VERIFY, "Verify")
        return self._guarded(
            "Verify",
            k,
            lambda: k.current.verify(
                message,
                signature,
                parse_enum(SigningAlgorithm, algorithm, "signing algorithm"),
                parse_enum(MessageType, message_type, "message type"),
            ),
        )

    def get_public_key(self, key: str) -> str:
        """The public key of an RSA or EC key, PEM (SubjectPublicKeyInfo)."""
        k = self._use(key, rules.Op.GET_PUBLIC_KEY, "GetPublicKey")
        return self._guarded("GetPublicKey", k, k.current.public_pem)

    def generate_mac(self, key: str, message: bytes, algorithm: MacAlgorithm | str | None = None) -> bytes:
        k = self._use(key, rules.Op.GENERATE_MAC, "GenerateMac")
        try:  # _guarded, inlined: this is a hot path (a closure and a call cost 5%)
            out = k.current.mac(_limit(message), None if algorithm is None else _mac_algorithm(algorithm))
        except Exception as e:
            e = as_kms_error(e)
            self._audit.record("GenerateMac", k.facts.key_id, f"denied: {e}")
            raise e from None
        self._audit.record("GenerateMac", k.facts.key_id)
        return out

    def verify_mac(
        self, key: str, message: bytes, mac: bytes, algorithm: MacAlgorithm | str | None = None
    ) -> bool:
        k = self._use(key, rules.Op.VERIFY_MAC, "VerifyMac")
        return self._guarded("VerifyMac", k, lambda: k.current.verify_mac(_limit(message), mac, _mac_algorithm(algorithm)))

    def key_usable(self, key: str, op: rules.Op | str = rules.Op.DECRYPT) -> float | None:
        """Raise KeyUnavailable/KeyRuleViolation if `key` cannot serve `op` now; else return
        when its material expires (a wall-clock time, None if never), so a cache of data
        keys never trusts an answer past that moment.

        Cheap (no store access while the cache is fresh) and not audited: front ends
        call it on every block or request to stop serving cached data keys of a CMK
        that was disabled, scheduled for deletion or whose material expired.
        """
        try:
            key_ = self._cached(key)
            rules.check_use(key_.facts, rules.Op(op), self.clock())
        except Exception as e:
            raise as_kms_error(e) from None
        return key_.facts.material_expires_at

    def gen_random(self, length: int) -> bytes:
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= MAX_RANDOM:
            raise InvalidRequest(f"gen-random gives 1 to {MAX_RANDOM} bytes, not {length!r}")
        out = os.urandom(length)
        self._audit.record("GenerateRandom", None)
        return out

    def _guarded(self, audit_op: str, k: CachedKey, call):
        """Run a key operation; audit it with its outcome (False results are 'invalid')."""
        try:
            out = call()
        except Exception as e:
            e = as_kms_error(e)
            self._audit.record(audit_op, k.facts.key_id, f"denied: {e}")
            raise e from None
        self._audit.record(audit_op, k.facts.key_id, "invalid" if out is False else "ok")
        return out


def _mac_algorithm(algorithm) -> MacAlgorithm | None:
    return None if algorithm is None else parse_enum(MacAlgorithm, algorithm, "MAC algorithm")  # type: ignore[return-value]


def _limit(message: bytes) -> bytes:
    if len(message) > MAX_PLAINTEXT:
        raise InvalidRequest(f"messages are limited to {MAX_PLAINTEXT} bytes")
    return message


def _symmetric_only(algorithm) -> None:
    if algorithm is not None and parse_enum(EncryptionAlgorithm, algorithm, "encryption algorithm") is not EncryptionAlgorithm.SYMMETRIC_DEFAULT:
        raise KeyRuleViolation(f"{algorithm} is for RSA keys; AES_256 keys use SYMMETRIC_DEFAULT")


def _rsa_algorithm(algorithm, context) -> EncryptionAlgorithm:
    if context:
        raise InvalidRequest("RSA encryption takes no encryption context")
    chosen = parse_enum(EncryptionAlgorithm, algorithm or "RSAES_OAEP_SHA_256", "encryption algorithm")
    if chosen is EncryptionAlgorithm.SYMMETRIC_DEFAULT:
        raise KeyRuleViolation("RSA keys encrypt with RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1")
    return chosen  # type: ignore[return-value]
