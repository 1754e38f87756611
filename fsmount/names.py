"""Encrypted names of cipher directory format v2: the sans-IO codec (no file is touched).

What is encrypted, and how (docs/formats/fsmount.md, "Format version 2"):

* a **file or directory name** `n` (1..255 bytes) in a backing directory whose
  per-directory value is `iv` (16 bytes; all zero for deterministic names):
  `base64url(AES-SIV(K, pad16(n), AD = [NAME_AD, iv]))`, no `=` padding. AES-SIV
  (RFC 5297, `cryptography`'s AESSIV, 512-bit key) is deterministic, which a name must
  be (a lookup encrypts the name it is asked for and opens that backing name), and
  misuse-resistant: equal names in one directory give equal ciphertexts and nothing
  else leaks; its 16-byte synthetic IV authenticates the name, so a changed backing
  name is refused rather than decrypted to garbage. The per-directory value in the
  associated data makes equal names in different directories differ and binds a name
  to its directory (a backing entry moved to another directory does not decrypt).
  PKCS#7 padding to 16 bytes hides a name's exact length, as gocryptfs's EME does;
* an encoded name longer than 255 bytes is stored as the **long name**
  `keyhold.longname.` + base64url(SHA-256(encoded name)), next to a side file of that
  name + `.name` holding the encoded name (gocryptfs's `gocryptfs.longname.*`);
* a **symlink target** `t`: `base64url(N || AES-SIV(K, t, AD = [LINK_AD, N]))` with a
  random 16-byte `N` (zero for deterministic names), so equal targets differ; one too
  long for a symlink (targets over 3039 bytes) is kept in a file of the tree's
  `keyhold.longlinks/` directory named by its hash, and the symlink points at
  `keyhold.longlink.<hash>` (`long_target`);
* a **`user.*` xattr name** `user.r`: `user.` + `base64url(AES-SIV(K, pad16(r),
  AD = [XATTR_AD]))`: deterministic (a get asks for it by name), per file system.

Names starting with `keyhold.` never come out of `encrypt` (base64url has no `.`),
so the directory's own files (diriv, long names, config) cannot clash with a user's.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

__all__ = [
    "BadName", "Encoded", "NameCipher", "DIRIV_NAME", "DIRIV_LEN", "ZERO_IV", "LONG_PREFIX", "LONG_SUFFIX",
    "NAME_MAX", "KEY_LEN", "TMP_SUFFIX", "RMDIR_TMP", "MKDIR_TMP", "RMDIR_DIR_TMP", "is_long", "check_long", "long_name", "long_target", "is_long_target", "side_name", "b64encode", "b64decode", "pad", "unpad",
]

KEY_LEN = 64  # AES-SIV with AES-256: two 256-bit keys
DIRIV_NAME = "keyhold.diriv"  # the per-directory value's file in every backing directory
DIRIV_LEN = 16
ZERO_IV = bytes(DIRIV_LEN)  # deterministic names: every directory's value
LONG_PREFIX = "keyhold.longname."
LONG_SUFFIX = ".name"
TMP_SUFFIX = ".tmp"  # a side file or long target being written (renamed into place when whole)
RMDIR_TMP = DIRIV_NAME + ".rmdir."  # a value moved out of a directory being removed (older keyhold)
MKDIR_TMP = "keyhold.mkdir."  # a directory being made, before it has its name
RMDIR_DIR_TMP = "keyhold.rmdir."  # a directory being removed, after its name went
_HASH_LEN = 43  # base64url of a SHA-256, without padding
LONG_LINK_PREFIX = "keyhold.longlink."  # the stored target of a symlink whose target is long
LONG_LINK_DIR = "keyhold.longlinks"  # at the top: one file per long target, named by its hash
NAME_MAX = 255  # bytes of one name, plaintext and backing
LINK_MAX = 4095  # bytes of a symlink target the kernel stores (PATH_MAX - 1)
NAME_AD = b"keyhold-fsmount name v2"
LINK_AD = b"keyhold-fsmount symlink v2"
XATTR_AD = b"keyhold-fsmount xattr v2"
XATTR_PREFIX = "user."
_NONCE = 16
_SIV = 16


class BadName(ValueError):
    """A backing name, target or xattr name that does not decrypt (tampered, moved, foreign)."""


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    if not text or "=" in text or len(text) % 4 == 1:
        raise BadName("not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise BadName("not base64url") from None
    if b64encode(raw) != text:  # one encoding per value: no second spelling of a name
        raise BadName("not canonical base64url")
    return raw


def pad(data: bytes) -> bytes:
    """PKCS#7 to a multiple of 16 bytes (1..16 bytes added)."""
    n = 16 - len(data) % 16
    return data + bytes([n]) * n


def unpad(data: bytes) -> bytes:
    n = data[-1] if data else 0
    if not 1 <= n <= 16 or len(data) % 16 or data[-n:] != bytes([n]) * n:
        raise BadName("bad padding")
    return data[:-n]


def is_long(backing_name: str) -> bool:
    """True for a long-name entry: the prefix and a hash, nothing else (not its side
    file, nor a temporary of one a crash left)."""
    digest = backing_name[len(LONG_PREFIX):]
    return backing_name.startswith(LONG_PREFIX) and len(digest) == _HASH_LEN and "." not in digest


def long_name(encoded: str) -> str:
    """The backing name of an encoded name too long to be one: a hash of it."""
    return LONG_PREFIX + b64encode(hashlib.sha256(encoded.encode("ascii")).digest())


def long_target(stored: str) -> str:
    """What a symlink holds when its encrypted target `stored` is too long for one."""
    return LONG_LINK_PREFIX + b64encode(hashlib.sha256(stored.encode("ascii")).digest())


def check_long(backing_name: str, encoded: str) -> str:
    """`encoded`, read from long-name entry `backing_name`'s side file, if it belongs
    there: its hash is the entry's name, and it is too long to be stored as itself (the
    mount never makes a long entry for a name that fits: one would be a second spelling
    of a name, listed twice). BadName otherwise."""
    if long_name(encoded) != backing_name:
        raise BadName("long-name side file does not match its entry")
    if len(encoded) <= NAME_MAX:
        raise BadName("not a long name")
    return encoded


def is_long_target(link: str) -> bool:
    return link.startswith(LONG_LINK_PREFIX)


def side_name(backing_name: str) -> str:
    """The side file that holds a long name's encoded name."""
    return backing_name + LONG_SUFFIX


def _fs_bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _fs_str(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Encoded:
    """A plaintext name's backing form: `backing` is what the directory holds; `full` is
    the encoded name (equal to `backing` unless it is a long name)."""

    backing: str
    full: str

    @property
    def long(self) -> bool:
        return self.backing != self.full


class NameCipher:
    """Name, symlink target and xattr name encryption under one tree's name key."""

    def __init__(self, key: bytes, deterministic: bool = False) -> None:
        if len(key) != KEY_LEN:
            raise ValueError(f"a name key is {KEY_LEN} bytes")
        self._siv = AESSIV(key)
        self.deterministic = deterministic

    # -- names ---------------------------------------------------------------------------
    def encrypt(self, iv: bytes, name: str) -> Encoded:
        raw = _fs_bytes(name)
        if not raw or len(raw) > NAME_MAX or b"/" in raw or b"\0" in raw or raw in (b".", b".."):
            raise BadName("not a file name")
        full = b64encode(self._siv.encrypt(pad(raw), [NAME_AD, iv]))
        return Encoded(full if len(full) <= NAME_MAX else long_name(full), full)

    def decrypt(self, iv: bytes, encoded: str) -> str:
        """The plaintext of an encoded name (a long name's side file content, not its hash)."""
        data = b64decode(encoded)
        if len(data) < _SIV + 16:
            raise BadName("too short")
        try:
            raw = unpad(self._siv.decrypt(data, [NAME_AD, iv]))
        except InvalidTag:
            raise BadName("does not authenticate in this directory") from None
        if not raw or len(raw) > NAME_MAX or b"/" in raw or b"\0" in raw or raw in (b".", b".."):
            raise BadName("not a file name")
        return _fs_str(raw)

    # -- symlink targets -----------------------------------------------------------------
    def encrypt_target(self, target: str, nonce: bytes | None = None) -> str:
        """The stored form of a symlink target; a random nonce unless deterministic.
        (Longer than LINK_MAX for targets over 3039 bytes: see `long_target`.)"""
        raw = _fs_bytes(target)
        if not raw:
            raise BadName("an empty symlink target")
        if nonce is None:
            nonce = bytes(_NONCE) if self.deterministic else os.urandom(_NONCE)
        return b64encode(nonce + self._siv.encrypt(raw, [LINK_AD, nonce]))

    def decrypt_target(self, stored: str) -> str:
        data = b64decode(stored)
        if len(data) < _NONCE + _SIV + 1:
            raise BadName("too short")
        nonce = data[:_NONCE]
        try:
            return _fs_str(self._siv.decrypt(data[_NONCE:], [LINK_AD, nonce]))
        except InvalidTag:
            raise BadName("symlink target does not authenticate") from None

    # -- extended attribute names ----------------------------------------------------------
    def encrypt_xattr(self, name: str) -> str:
        """`user.<rest>` to `user.<encrypted rest>`; BadName if it would not fit 255 bytes."""
        if not name.startswith(XATTR_PREFIX) or len(name) == len(XATTR_PREFIX):
            raise BadName("not a user.* attribute name")
        stored = XATTR_PREFIX + b64encode(self._siv.encrypt(pad(_fs_bytes(name[len(XATTR_PREFIX):])), [XATTR_AD]))
        if len(stored) > NAME_MAX:
            raise BadName("attribute name too long once encrypted")
        return stored

    def decrypt_xattr(self, stored: str) -> str:
        if not stored.startswith(XATTR_PREFIX):
            raise BadName("not a user.* attribute name")
        data = b64decode(stored[len(XATTR_PREFIX):])
        if len(data) < _SIV + 16:
            raise BadName("too short")
        try:
            return XATTR_PREFIX + _fs_str(unpad(self._siv.decrypt(data, [XATTR_AD])))
        except InvalidTag:
            raise BadName("attribute name does not authenticate") from None
