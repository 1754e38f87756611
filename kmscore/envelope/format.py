"""The envelope header and the frame layout math. Sans-IO: bytes in, values out.

Header, version 1 (big-endian; see docs/FORMAT.md):

    off size field
    0   4    magic b"KHEV"
    4   1    format version (1)
    5   1    flags (bit 0: shared DEK; other bits refused)
    6   2    reserved, 0
    8   4    frame size F: plaintext bytes per full frame (1 KiB .. 16 MiB)
    12  16   message id (random)
    28  2    length W of the wrapped DEK
    30  W    wrapped DEK: a KMS ciphertext blob (kmscore/blob.py)

Bytes 0..27 are the *fixed header*, part of every frame's AAD. The wrapped DEK is not,
so a re-wrap replaces it without touching frames.

Frames follow: nonce (12) || AES-256-GCM ciphertext (<= F) || tag (16). Every frame but
the last holds exactly F plaintext bytes; the last holds 0..F and is marked final in
its AAD; an empty message is one empty final frame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from kmscore.envelope.errors import BadMagic, EnvelopeError, Truncated, UnsupportedVersion

MAGIC = b"KHEV"
VERSION = 1
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
PREFIX_SIZE = FIXED_SIZE + _WLEN.size  # 30: enough bytes to know the header's length


@dataclass(frozen=True)
class Header:
    """A decoded envelope header. `encode()` and `decode()` are exact inverses."""

    version: int
    flags: int
    frame_size: int
    message_id: bytes
    wrapped_dek: bytes

    def __post_init__(self) -> None:
        if self.version != VERSION:
            raise UnsupportedVersion(self.version)
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
        """The first 28 bytes: what every frame's AAD starts with."""
        return _FIXED.pack(MAGIC, self.version, self.flags, 0, self.frame_size, self.message_id)

    @property
    def size(self) -> int:
        return PREFIX_SIZE + len(self.wrapped_dek)

    @property
    def shared_dek(self) -> bool:
        return bool(self.flags & FLAG_SHARED_DEK)

    def encode(self) -> bytes:
        return self.fixed + _WLEN.pack(len(self.wrapped_dek)) + self.wrapped_dek

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
        return cls(version, flags, frame_size, bytes(message_id), bytes(buf[PREFIX_SIZE:need]))


def header_length(buf_prefix: bytes) -> int | None:
    """Total header length from its first bytes; None while fewer than 30 bytes are known.

    Raises BadMagic / UnsupportedVersion as soon as the bytes seen rule a header out,
    so a stream reader fails on the first chunk of garbage.
    """
    seen = bytes(buf_prefix[: len(MAGIC)])
    if seen != MAGIC[: len(seen)]:
        raise BadMagic()
    if len(buf_prefix) > 4 and buf_prefix[4] != VERSION:
        raise UnsupportedVersion(buf_prefix[4])
    if len(buf_prefix) < PREFIX_SIZE:
        return None
    (wlen,) = _WLEN.unpack_from(buf_prefix, FIXED_SIZE)
    if not 1 <= wlen <= MAX_WRAPPED:
        raise EnvelopeError(f"the wrapped data key length {wlen} is outside 1..{MAX_WRAPPED}")
    return PREFIX_SIZE + wlen


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
