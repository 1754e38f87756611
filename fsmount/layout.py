"""Pure offset math of a backing file: where frames live and which ones a call touches.

A backing file is one envelope (docs/formats/fsmount.md): a header of `header_size`
bytes, then frames of `frame_size` plaintext bytes. The envelope's own layout functions
do the arithmetic; this adds what a file system asks: which frames hold a byte range,
where the tail begins. Nothing here touches a file.
"""

from __future__ import annotations

from dataclasses import dataclass

from kmscore import envelope
from kmscore.envelope import FRAME_OVERHEAD, Truncated

__all__ = ["Layout", "splice", "FRAME_OVERHEAD"]


@dataclass(frozen=True)
class Layout:
    header_size: int
    frame_size: int

    @property
    def stride(self) -> int:
        """Bytes one full frame takes on disk."""
        return envelope.frame_span(self.frame_size)

    def frame_count(self, size: int) -> int:
        """Frames of a file with `size` plaintext bytes (an empty file has one empty frame)."""
        return envelope.frame_count(size, self.frame_size)

    def last_index(self, size: int) -> int:
        return self.frame_count(size) - 1

    def frame_offset(self, index: int) -> int:
        """Where frame `index` starts in the backing file."""
        return envelope.frame_offset(self.header_size, self.frame_size, index)

    def frame_start(self, index: int) -> int:
        """Plaintext offset of the first byte of frame `index`."""
        return index * self.frame_size

    def backing_length(self, size: int) -> int:
        """Backing file length of a file with `size` plaintext bytes."""
        return self.header_size + envelope.ciphertext_length(size, self.frame_size)

    def plaintext_size(self, backing_length: int) -> int | None:
        """Plaintext size for a backing length, or None if no envelope has that length."""
        if backing_length < self.header_size:
            return None
        try:
            return envelope.plaintext_length(backing_length - self.header_size, self.frame_size)
        except Truncated:
            return None

    def frames(self, offset: int, length: int) -> range:
        """The frames holding plaintext bytes [offset, offset + length)."""
        first = offset // self.frame_size
        if length <= 0:
            return range(first, first)
        return range(first, (offset + length - 1) // self.frame_size + 1)

    def covers(self, index: int, offset: int, end: int) -> bool:
        """True if plaintext [offset, end) covers the whole of full frame `index`."""
        start = index * self.frame_size
        return offset <= start and start + self.frame_size <= end


def splice(base: bytes | bytearray, at: int, data: bytes | memoryview) -> bytearray:
    """`base` with `data` written at `at`, zero-filled between the old end and `at`."""
    out = bytearray(base)
    if at > len(out):
        out.extend(bytes(at - len(out)))
    out[at : at + len(data)] = data
    return out
