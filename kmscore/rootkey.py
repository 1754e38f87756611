"""The root of trust: where the root key comes from, and sealing under it.

Sources, first match wins:
  1. an explicit `RootKeySource` (config file, `--root-key-file`);
  2. `$KMS_ROOT_KEY`: 32 bytes, base64;
  3. `$KMS_PASSPHRASE`: stretched with scrypt (memory-hard, 64 MiB) and a per-store salt;
  4. the key file `<home>/root.key` (created 0600 by `kms init` or on first use).

All sealing keys are derived from the root key with HKDF, one per purpose, so the
root key itself never encrypts anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from kmscore.errors import StoreError

ROOT_KEY_ENV = "KMS_ROOT_KEY"
PASSPHRASE_ENV = "KMS_PASSPHRASE"
KEY_FILE_NAME = "root.key"
SCRYPT_PARAMS = {"n": 2**16, "r": 8, "p": 1}  # 64 MiB, ~0.2 s
MIN_PASSPHRASE = 8  # scrypt slows guessing down; it cannot save a one-character passphrase


@dataclass(frozen=True)
class RootKeySource:
    """Where to take the root key from: kind is 'file', 'env', 'passphrase' (a variable)
    or 'passphrase-file' (a file or /dev/fd/N, kept out of /proc/PID/environ)."""

    kind: str
    value: str  # a path, or the name of an environment variable

    def describe(self) -> str:
        return {"file": "key file {}", "env": "environment variable ${}", "passphrase": "passphrase in ${}",
            "passphrase-file": "passphrase from {}"}[
            self.kind
        ].format(self.value)


def default_source(home: Path) -> RootKeySource:
    if os.environ.get(ROOT_KEY_ENV):
        return RootKeySource("env", ROOT_KEY_ENV)
    if os.environ.get(PASSPHRASE_ENV):
        return RootKeySource("passphrase", PASSPHRASE_ENV)
    return RootKeySource("file", str(home / KEY_FILE_NAME))


def create_key_file(path: Path) -> None:
    """Write 32 fresh random bytes (base64) to a new file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(os.urandom(32)).decode() + "\n")


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise StoreError(f"{where} must hold a 32-byte key in base64 (e.g. from `kms init`)")
    return key


def load(source: RootKeySource, salt: bytes) -> "RootKey":
    """Materialise the root key from its source. `salt` is the store's passphrase salt."""
    if source.kind == "file":
        path = Path(source.value)
        try:
            st = path.stat()
            text = path.read_text()
        except FileNotFoundError:
            raise StoreError(
                f"root key file {path} does not exist: run `kms init`, or set ${ROOT_KEY_ENV} "
                f"or ${PASSPHRASE_ENV}"
            ) from None
        except OSError as e:
            raise StoreError(f"cannot read root key file {path}: {e.strerror}") from None
        if st.st_mode & 0o077:
            raise StoreError(
                f"root key file {path} is readable by others (mode {st.st_mode & 0o777:o}); "
                f"run `chmod 600 {path}`"
            )
        return RootKey(_decode_key(text, f"root key file {path}"))
    if source.kind == "passphrase-file":
        try:
            with open(source.value, encoding="utf-8") as f:
                value = f.read().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            raise StoreError(f"cannot read the passphrase from {source.value}: {getattr(e, 'strerror', None) or e}") from None
        return _stretch(value, salt, source.value)
    value = os.environ.get(source.value)
    if not value:
        raise StoreError(f"environment variable ${source.value} (root key source) is not set")
    if source.kind == "env":
        return RootKey(_decode_key(value, f"${source.value}"))
    if source.kind == "passphrase":
        return _stretch(value, salt, f"${source.value}")
    raise StoreError(f"unknown root key source {source.kind!r}")


def _stretch(passphrase: str, salt: bytes, where: str) -> "RootKey":
    if len(passphrase) < MIN_PASSPHRASE:
        raise StoreError(f"the passphrase from {where} is too short: use at least {MIN_PASSPHRASE} characters")
    kdf = Scrypt(salt=salt, length=32, **SCRYPT_PARAMS)
    return RootKey(kdf.derive(passphrase.encode()))


class RootKey:
    """Seals and unseals key material; derives the audit MAC and fingerprint keys."""

    __slots__ = ("_seal", "_fingerprint", "_audit", "_integrity")

    def __init__(self, key: bytes) -> None:
        def derive(purpose: bytes) -> bytes:
            return HKDF(hashes.SHA256(), 32, salt=None, info=b"keyhold/" + purpose).derive(key)

        self._seal = AESGCM(derive(b"seal"))
        self._fingerprint = derive(b"fingerprint")
        self._audit = derive(b"audit")
        self._integrity = derive(b"integrity")

    def __repr__(self) -> str:
        return "<RootKey>"

    def __reduce__(self):  # pragma: no cover - guard
        raise TypeError("the root key cannot be pickled")

    def seal(self, data: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._seal.encrypt(nonce, data, aad)

    def unseal(self, sealed: bytes, aad: bytes) -> bytes:
        try:
            return self._seal.decrypt(sealed[:12], sealed[12:], aad)
        except InvalidTag:
            raise StoreError(
                "sealed key material failed authentication: the root key is wrong or the key store was altered"
            ) from None

    def fingerprint(self, material: bytes) -> str:
        """A keyed digest of material: lets re-import compare material without storing it."""
        return hmac.new(self._fingerprint, material, hashlib.sha256).hexdigest()

    def audit_mac(self, data: bytes) -> bytes:
        return hmac.new(self._audit, data, hashlib.sha256).digest()

    def integrity_mac(self, data: bytes) -> bytes:
        """MAC of store metadata (key rows, the log head, the anchor): see kmscore.integrity."""
        return hmac.new(self._integrity, data, hashlib.sha256).digest()
