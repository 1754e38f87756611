"""The KMS ciphertext blob: self-describing output of symmetric encrypt_data.

    offset size field
    0      1    format version (1)
    1      16   key id (UUID, 16 raw bytes)
    17     4    key version (u32, big endian)
    21     12   nonce
    33     n    AES-256-GCM ciphertext
    33+n   16   GCM tag

AAD = bytes 0..20 (version, key id, key version) || encode_context(context).
Sans-IO: bytes in, bytes out. See docs/FORMAT.md.
"""

from __future__ import annotations

import functools
import struct
import uuid
from collections.abc import Mapping
from typing import NamedTuple

from kmscore.errors import InvalidCiphertext, InvalidRequest

VERSION = 1
HEADER = struct.Struct(">B16sI")
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = HEADER.size + NONCE_SIZE + TAG_SIZE
MAX_CONTEXT_ITEMS = 64
MAX_CONTEXT_FIELD = 1024


class BlobParts(NamedTuple):
    """A decoded blob. A named tuple, not a frozen dataclass: it is built once per
    decryption, and a frozen dataclass's __init__ costs a tenth of a 4 KiB decrypt."""

    key_id: str
    key_version: int
    nonce: bytes
    ciphertext: bytes  # GCM ciphertext with the tag appended
    aad_prefix: bytes  # bytes 0..20, part of the AAD


def encode_context(context: Mapping[str, str] | None) -> bytes:
    """Canonical bytes of an encryption context: sorted pairs, each length-prefixed.

    u16 count, then per pair (sorted by key's UTF-8 bytes): u16 len, key, u16 len, value.
    An absent or empty context encodes as b"".
    """
    if not context:
        return b""
    if len(context) > MAX_CONTEXT_ITEMS:
        raise InvalidRequest(f"encryption context has more than {MAX_CONTEXT_ITEMS} entries")
    items = []
    for k, v in context.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidRequest("encryption context keys and values must be strings")
        kb, vb = k.encode(), v.encode()
        if len(kb) > MAX_CONTEXT_FIELD or len(vb) > MAX_CONTEXT_FIELD:
            raise InvalidRequest(f"encryption context entries are limited to {MAX_CONTEXT_FIELD} bytes")
        items.append((kb, vb))
    out = [struct.pack(">H", len(items))]
    for kb, vb in sorted(items):
        out += [struct.pack(">H", len(kb)), kb, struct.pack(">H", len(vb)), vb]
    return b"".join(out)


def header(key_id: str, key_version: int) -> bytes:
    return HEADER.pack(VERSION, uuid.UUID(key_id).bytes, key_version)


def encode(aad_prefix: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
    return aad_prefix + nonce + ciphertext


def decode(blob: bytes) -> BlobParts:
    """Split a blob; raise InvalidCiphertext if it cannot be one."""
    if len(blob) < OVERHEAD:
        raise InvalidCiphertext("ciphertext is too short to be a KMS ciphertext blob")
    version, kid, kver = HEADER.unpack_from(blob)
    if version != VERSION:
        raise InvalidCiphertext(f"unsupported KMS ciphertext version {version}")
    prefix = blob[: HEADER.size]
    nonce = blob[HEADER.size : HEADER.size + NONCE_SIZE]
    return BlobParts(_key_id(kid), kver, nonce, blob[HEADER.size + NONCE_SIZE :], prefix)


@functools.lru_cache(maxsize=4096)
def _key_id(raw: bytes) -> str:
    """Key ids as text; cached because a UUID parse costs more than decrypting 4 KiB."""
    return str(uuid.UUID(bytes=raw))


def peek_key(blob: bytes) -> tuple[str, int]:
    """The key id and version a blob names, without decrypting it."""
    parts = decode(blob)
    return parts.key_id, parts.key_version
