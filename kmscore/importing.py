"""Unwrapping imported key material (the crypto half of import; the facade keeps state).

RSAES_OAEP_*: the material itself is OAEP-encrypted under the wrapping public key, as
`openssl pkeyutl -encrypt -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256` does.
RSA_AES_KEY_WRAP_*: the first modulus-size bytes are a 32-byte AES key, OAEP-encrypted;
the rest is the material wrapped with that key by AES key wrap with padding (RFC 5649,
`openssl enc -id-aes256-wrap-pad`). Needed for RSA private keys, too long for OAEP.

The `Kms` class is built on `ImportMixin`, so this module loads with every facade;
cryptography's RSA and serialization modules (~60 ms: serialization pulls in ssh,
dataclasses, inspect) are imported only when a key is imported (issue 14).
"""

from __future__ import annotations

import os
from typing import Any

from kmscore import material as _material
from kmscore import rules
from kmscore.errors import ExpiredImportToken, IncorrectKeyMaterial, InvalidImportToken, KeyImportError, KmsError
from kmscore.keyring import Keyring, facts_of, metadata_of
from kmscore.lifecycle import changes
from kmscore.metadata import ImportParameters, KeyMetadata, iso
from kmscore.specs import KeySpec, KeyState, WrappingAlgorithm, WrappingKeySpec, parse_enum

TOKEN_LIFETIME = 24 * 3600
SHA1_WARNING = "RSAES_OAEP_SHA_1 uses SHA-1, which is no longer considered secure; prefer RSAES_OAEP_SHA_256"


def new_wrapping_key(spec: WrappingKeySpec) -> tuple[bytes, str]:
    """A fresh RSA key pair: (private PKCS#8 DER, public PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(65537, int(spec.value.split("_")[1]))
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der, pem.decode()


def unwrap(private_der: bytes, algorithm: WrappingAlgorithm, wrapped: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

    private = serialization.load_der_private_key(private_der, password=None)
    h = hashes.SHA1() if algorithm.uses_sha1 else hashes.SHA256()
    oaep = padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)
    size = private.key_size // 8  # type: ignore[union-attr]
    hint = (
        f"it must be wrapped with {algorithm.value} under the public key of this import token"
    )
    try:
        if algorithm.value.startswith("RSAES_OAEP"):
            if len(wrapped) != size:
                raise KeyImportError(
                    f"wrapped material is {len(wrapped)} bytes, expected {size}: {hint}"
                )
            return private.decrypt(wrapped, oaep)  # type: ignore[union-attr]
        if len(wrapped) <= size:
            raise KeyImportError(f"wrapped material is too short for {algorithm.value}: {hint}")
        aes_key = private.decrypt(wrapped[:size], oaep)  # type: ignore[union-attr]
        return aes_key_unwrap_with_padding(aes_key, wrapped[size:])
    except (ValueError, InvalidUnwrap):
        raise KeyImportError(f"wrapped material could not be unwrapped: {hint}") from None


# -- the facade's import operations ------------------------------------------------------

def _token_aad(token: str, key_id: str, algorithm: str, expires_at: float) -> bytes:
    """The sealed wrapping key of a token is bound to the token's key, algorithm and
    expiry, so a store writer cannot extend a token or point it at another key."""
    return f"keyhold/import/2/{token}/{key_id}/{algorithm}/{expires_at!r}".encode()



class ImportMixin(Keyring):
    def get_parameters_for_import(
        self,
        key: str,
        wrapping_algorithm: WrappingAlgorithm | str = WrappingAlgorithm.RSAES_OAEP_SHA_256,
        wrapping_key_spec: WrappingKeySpec | str = WrappingKeySpec.RSA_2048,
    ) -> ImportParameters:
        """A fresh RSA wrapping public key and a one-time import token valid 24 h.

        The RSA key pair is generated before the write transaction (RSA_4096 takes
        seconds; no other process waits for it)."""
        try:
            algorithm = parse_enum(WrappingAlgorithm, wrapping_algorithm, "wrapping algorithm")
            spec = parse_enum(WrappingKeySpec, wrapping_key_spec, "wrapping key spec")
            rules.check_import(facts_of(self._row(key)), None, self.clock())
        except KmsError as e:
            self._audit.record("GetParametersForImport", self._known_id(key), f"denied: {e}")
            raise
        private_der, public_pem = new_wrapping_key(spec)  # type: ignore[arg-type]
        with self._change("GetParametersForImport", key):
            row = self._row(key)
            rules.check_import(facts_of(row), None, self.clock())
            token = "kh1." + os.urandom(24).hex()  # never starts with "-" (it is a CLI argument)
            expires = self.clock() + TOKEN_LIFETIME
            sealed = self._root.seal(private_der, _token_aad(token, row["key_id"], algorithm.value, expires))
            self._store.add_token(token, row["key_id"], algorithm.value, sealed, expires)
            self._audit.append_now("GetParametersForImport", row["key_id"], f"ok: {algorithm.value} {spec.value}")
        return ImportParameters(
            row["key_id"], token, public_pem, algorithm.value, spec.value, expires,
            SHA1_WARNING if algorithm.uses_sha1 else None,  # type: ignore[union-attr]
        )

    def import_key_material(
        self, key: str, import_token: str, encrypted_material: bytes, expires_at: float | None = None
    ) -> KeyMetadata:
        """Import wrapped material. AES_256 material may expire; RSA/EC material is permanent.
        A key that held material before accepts only that same material again."""
        with self._change("ImportKeyMaterial", key):
            row = self._row(key)
            now = self.clock()
            expires_at = rules.check_expiry(expires_at, now)
            rules.check_import(facts_of(row), expires_at, now)
            found = self._store.token(import_token)
            if found is None or found[0] != row["key_id"]:
                raise InvalidImportToken(
                    f"import token is unknown, already used, or not for key {row['key_id']}: "
                    "get new parameters with `kms get-parameters-for-import`"
                )
            _, algorithm, sealed, token_expires = found
            if token_expires <= now:
                raise ExpiredImportToken(f"import token expired at {iso(token_expires)}: get new parameters")
            try:
                private_der = self._root.unseal(sealed, _token_aad(import_token, row["key_id"], algorithm, token_expires))
            except KmsError:
                raise InvalidImportToken(
                    "import token failed authentication (its key, algorithm or expiry was changed "
                    "in the key store): get new parameters with `kms get-parameters-for-import`"
                ) from None
            raw = unwrap(private_der, WrappingAlgorithm(algorithm), encrypted_material)
            spec = KeySpec(row["spec"])
            material = _material.normalize_import(spec, raw)
            fingerprint = self._root.fingerprint(material)
            if row["material_fingerprint"] and row["material_fingerprint"] != fingerprint:
                raise IncorrectKeyMaterial(
                    f"key {key} held different key material before: a key only ever takes back "
                    "the material it was first given"
                )
            self._store.delete_versions(row["key_id"])
            self._store.add_version(row["key_id"], 1, self._seal(row["key_id"], 1, material), now)
            fields: dict[str, Any] = {
                "material_fingerprint": fingerprint,
                "material_expires_at": expires_at,
                "current_version": 1,
            }
            fields["state"] = rules.state_after_import(KeyState(row["state"]), row["resume_state"]).value
            fields["resume_state"] = None
            self._store.update_key(row["key_id"], **fields)
            self._store.delete_tokens(token=import_token)
            self._audit.append_now("ImportKeyMaterial", row["key_id"], f"ok: {algorithm}; " + changes(row, fields))
        return metadata_of(self._store.key_by_id(row["key_id"]))  # type: ignore[arg-type]

    def delete_imported_key_material(self, key: str) -> KeyMetadata:
        """AES_256 external keys only: the key and its metadata stay, state PendingImport."""
        with self._change("DeleteImportedKeyMaterial", key):
            row = self._row(key)
            rules.check_delete_material(facts_of(row))
            self._store.delete_versions(row["key_id"])
            fields = {"material_expires_at": None, "current_version": 0, **rules.material_gone(facts_of(row))}
            self._store.update_key(row["key_id"], **fields)
            self._audit.append_now("DeleteImportedKeyMaterial", row["key_id"], "ok: " + changes(row, fields))
        return metadata_of(self._store.key_by_id(row["key_id"]))  # type: ignore[arg-type]
