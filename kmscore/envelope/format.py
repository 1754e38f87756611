"""The envelope header and the frame layout math. Sans-IO: bytes in, values out.

Header, version 1 (big-endian; see docs/FORMAT.md):

    off size field
    0   4    magic b"KHEV"
    4   1    format version (1 or 2)
    5   1    flags (bit 0: shared DEK; other bits refused)
    6   2    reserved, 0
    8   4    frame size F: plaintext bytes per full frame (1 KiB .. 16 MiB)
    12  16   message id (random)
    28  2    length W of the wrapped DEK
    30  W    wrapped DEK: a KMS ciphertext blob (kmscore/blob.py)

Version 2 adds authenticated metadata (the original Content-Type and Content-Encoding
of a sidecar body) between the message id and the wrapped DEK:

    28  2    length M of the metadata (0 .. 4096)
    30  M    metadata: string pairs, encoded like an encryption context (sorted pairs)
    30+M 2   length W of the wrapped DEK
    32+M W   wrapped DEK

The *bound header* is part of every frame's AAD: bytes 0..27 in version 1, bytes
0..29+M (the metadata included) in version 2. The wrapped DEK is not, so a re-wrap
replaces it without touching frames, in both versions.

Frames follow: nonce (12) || AES-256-GCM ciphertext (<= F) || tag (16). Every frame but
the last holds exactly F plaintext bytes; the last holds 0..F and is marked final in
its AAD; an empty message is one empty final frame.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from kmscore.envelope.errors import BadMagic, EnvelopeError, Truncated, UnsupportedVersion

MAGIC = b"KHEV"
VERSION = 1
"""The version without metadata: fsmount files and `kms encrypt-file` envelopes."""
VERSION_METADATA = 2
"""The version that carries authenticated metadata (sidecar bodies)."""
VERSIONS = (VERSION, VERSION_METADATA)
MAX_METADATA = 4096
MAX_METADATA_FIELD = 1024
FLAG_SHARED_DEK = 0x01  # the DEK is wrapped under a context shared by many messages
KNOWN_FLAGS = FLAG_SHARED_DEK
MIN_FRAME = 1024
MAX_FRAME = 16 * 1024 * 1024
MAX_WRAPPED = 4096  # a wrapped 32-byte DEK is 81 bytes; anything near this is garbage
NONCE_SIZE = 12
TAG_SIZE = 16
FRAME_OVERHEAD = NONCE_SIZE + TAG_SIZE
MESSAGE_ID_SIZE = 16

_FIXED = struct.Struct(">4sBBHI16s")  # magic, version, flags, reserved, frame size, message id
FIXED_SIZE = _FIXED.size  # 28
_WLEN = struct.Struct(">H")
PREFIX_SIZE = FIXED_SIZE + _WLEN.size  # 30: enough bytes to know a v1 header's length
_LEN = _WLEN


@dataclass(frozen=True)
class Header:
    """A decoded envelope header. `encode()` and `decode()` are exact inverses."""

    version: int
    flags: int
    frame_size: int
    message_id: bytes
    wrapped_dek: bytes
    metadata: Mapping[str, str] = field(default_factory=dict)
    """Authenticated string pairs (version 2 only), e.g. {"content-type": "image/png"}."""

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise UnsupportedVersion(self.version)
        object.__setattr__(self, "metadata", dict(self.metadata))
        if self.metadata and self.version == VERSION:
            raise EnvelopeError("a version-1 envelope has no metadata: use version 2")
        if len(self.metadata_bytes) > MAX_METADATA:
            raise EnvelopeError(f"envelope metadata is limited to {MAX_METADATA} bytes")
        if self.flags & ~KNOWN_FLAGS:
            raise EnvelopeError(f"envelope flags {self.flags:#04x} name features this keyhold does not know")
        if not MIN_FRAME <= self.frame_size <= MAX_FRAME:
            raise EnvelopeError(f"envelope frame size {self.frame_size} is outside {MIN_FRAME}..{MAX_FRAME} bytes")
        if len(self.message_id) != MESSAGE_ID_SIZE:
            raise EnvelopeError(f"an envelope message id is {MESSAGE_ID_SIZE} bytes, not {len(self.message_id)}")
        if not 1 <= len(self.wrapped_dek) <= MAX_WRAPPED:
            raise EnvelopeError(f"the wrapped data key is {len(self.wrapped_dek)} bytes, not 1..{MAX_WRAPPED}")

    @property
    def fixed(self) -> bytes:
        """The first 28 bytes (magic .. message id)."""
        return _FIXED.pack(MAGIC, self.version, self.flags, 0, self.frame_size, self.message_id)

    @property
    def metadata_bytes(self) -> bytes:
        return encode_metadata(self.metadata)

    @property
    def bound(self) -> bytes:
        """What every frame's AAD starts with: the fixed header, and in version 2 the
        metadata with its length (so metadata cannot change without failing every frame)."""
        if self.version == VERSION:
            return self.fixed
        meta = self.metadata_bytes
        return self.fixed + _LEN.pack(len(meta)) + meta

    @property
    def size(self) -> int:
        return len(self.bound) + _WLEN.size + len(self.wrapped_dek)

    @property
    def shared_dek(self) -> bool:
        return bool(self.flags & FLAG_SHARED_DEK)

    def encode(self) -> bytes:
        return self.bound + _WLEN.pack(len(self.wrapped_dek)) + self.wrapped_dek

    def with_wrapped_dek(self, blob: bytes) -> Header:
        """The same header with another wrapped DEK (re-wrap); the fixed part is unchanged."""
        return replace(self, wrapped_dek=bytes(blob))

    @classmethod
    def decode(cls, buf: bytes) -> Header:
        """Decode the header at the start of `buf` (trailing bytes, e.g. frames, are ignored)."""
        need = header_length(buf)
        if need is None or len(buf) < need:
            raise Truncated(f"the envelope header is cut short ({len(buf)} bytes)")
        magic, version, flags, reserved, frame_size, message_id = _FIXED.unpack_from(buf)
        if reserved != 0:
            raise EnvelopeError("the envelope header's reserved bytes are not zero")
        metadata: dict[str, str] = {}
        wrapped_at = PREFIX_SIZE
        if version == VERSION_METADATA:
            (mlen,) = _LEN.unpack_from(buf, FIXED_SIZE)
            metadata = decode_metadata(bytes(buf[PREFIX_SIZE : PREFIX_SIZE + mlen]))
            wrapped_at = PREFIX_SIZE + mlen + _WLEN.size
        return cls(version, flags, frame_size, bytes(message_id), bytes(buf[wrapped_at:need]), metadata)


def header_length(buf_prefix: bytes) -> int | None:
    """Total header length from its first bytes; None while too few bytes are known
    (30 for version 1; 32 + the metadata length for version 2).

    Raises BadMagic / UnsupportedVersion as soon as the bytes seen rule a header out,
    so a stream reader fails on the first chunk of garbage.
    """
    need = header_need(buf_prefix)
    return need if need <= len(buf_prefix) or _length_known(buf_prefix) else None


def header_need(buf_prefix: bytes) -> int:
    """How many bytes the header needs: its total length once that is known, else the
    bytes needed to learn more of it. A reader reads up to this, then asks again."""
    seen = bytes(buf_prefix[: len(MAGIC)])
    if seen != MAGIC[: len(seen)]:
        raise BadMagic()
    if len(buf_prefix) <= 4:
        return PREFIX_SIZE
    version = buf_prefix[4]
    if version not in VERSIONS:
        raise UnsupportedVersion(version)
    if len(buf_prefix) < PREFIX_SIZE:
        return PREFIX_SIZE
    at = FIXED_SIZE
    if version == VERSION_METADATA:
        (mlen,) = _LEN.unpack_from(buf_prefix, FIXED_SIZE)
        if mlen > MAX_METADATA:
            raise EnvelopeError(f"the envelope metadata length {mlen} is over {MAX_METADATA}")
        at = PREFIX_SIZE + mlen
        if len(buf_prefix) < at + _WLEN.size:
            return at + _WLEN.size
    (wlen,) = _WLEN.unpack_from(buf_prefix, at)
    if not 1 <= wlen <= MAX_WRAPPED:
        raise EnvelopeError(f"the wrapped data key length {wlen} is outside 1..{MAX_WRAPPED}")
    return at + _WLEN.size + wlen


def _length_known(buf_prefix: bytes) -> bool:
    if len(buf_prefix) < PREFIX_SIZE:
        return False
    if buf_prefix[4] == VERSION:
        return True
    (mlen,) = _LEN.unpack_from(buf_prefix, FIXED_SIZE)
    return len(buf_prefix) >= PREFIX_SIZE + mlen + _WLEN.size


# -- metadata (version 2) ---------------------------------------------------------------
def encode_metadata(metadata: Mapping[str, str]) -> bytes:
    """Canonical bytes of the metadata: u16 count, then per pair sorted by the key's UTF-8
    bytes, u16 length + key, u16 length + value (the encryption-context encoding).
    Empty metadata is zero bytes."""
    if not metadata:
        return b""
    items = []
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k:
            raise EnvelopeError("envelope metadata keys and values are strings (keys not empty)")
        kb, vb = k.encode(), v.encode()
        if len(kb) > MAX_METADATA_FIELD or len(vb) > MAX_METADATA_FIELD:
            raise EnvelopeError(f"envelope metadata entries are limited to {MAX_METADATA_FIELD} bytes")
        items.append((kb, vb))
    out = [_LEN.pack(len(items))]
    for kb, vb in sorted(items):
        out += [_LEN.pack(len(kb)), kb, _LEN.pack(len(vb)), vb]
    return b"".join(out)


def decode_metadata(data: bytes) -> dict[str, str]:
    """The inverse of encode_metadata; refuses anything encode_metadata would not write
    (unsorted or repeated keys, bad UTF-8, trailing bytes), so the encoding is canonical."""
    if not data:
        return {}
    bad = EnvelopeError("the envelope metadata is malformed")
    if len(data) < 2:
        raise bad
    (count,) = _LEN.unpack_from(data)
    pos, out, last = 2, {}, None
    try:
        for _ in range(count):
            pair = []
            for _ in range(2):
                (n,) = _LEN.unpack_from(data, pos)
                if n > MAX_METADATA_FIELD or pos + 2 + n > len(data):
                    raise bad
                pair.append(data[pos + 2 : pos + 2 + n])
                pos += 2 + n
            kb, vb = pair
            if not kb or (last is not None and kb <= last):
                raise bad
            last = kb
            out[kb.decode()] = vb.decode()
    except (struct.error, UnicodeDecodeError):
        raise bad from None
    if pos != len(data) or count == 0:
        raise bad
    return out


# -- layout math (pure) ----------------------------------------------------------------
def frame_span(frame_size: int) -> int:
    """Bytes of one full frame on the wire."""
    return frame_size + FRAME_OVERHEAD


def frame_offset(header_size: int, frame_size: int, index: int) -> int:
    """Where frame `index` starts, counted from the start of the envelope."""
    return header_size + index * frame_span(frame_size)


def frame_count(plaintext_length: int, frame_size: int) -> int:
    """Frames that hold `plaintext_length` bytes (at least one)."""
    return max(1, -(-plaintext_length // frame_size))


def ciphertext_length(plaintext_length: int, frame_size: int) -> int:
    """Length of the frames (everything after the header) for a plaintext length."""
    if plaintext_length < 0:
        raise ValueError("plaintext length is negative")
    return plaintext_length + FRAME_OVERHEAD * frame_count(plaintext_length, frame_size)


def plaintext_length(ciphertext_length: int, frame_size: int) -> int:
    """Plaintext length for the length of the frames; raises Truncated if none has it.

    n = ceil(L / (F+28)) frames, n >= 1; the last chunk must hold at least a nonce and
    a tag (28 bytes), else the envelope was cut inside a frame.
    """
    span = frame_span(frame_size)
    n = max(1, -(-ciphertext_length // span))
    last = ciphertext_length - (n - 1) * span
    if last < FRAME_OVERHEAD:
        raise Truncated(f"the envelope is cut short ({ciphertext_length} bytes of frames fit no whole frame)")
    return ciphertext_length - FRAME_OVERHEAD * n
