"""Pure offset math of a backing file: where frames live and which ones a call touches.

A backing file is one envelope (see docs/formats/fsmount.md): a header of `header_size`
bytes, then frames of `frame_size` plaintext bytes, each stored as
nonce(12) || ciphertext || tag(16). Every file has at least one frame; only the last
one may be short, and it is sealed as final. Nothing here touches a file.
"""

from __future__ import annotations

from dataclasses import dataclass

FRAME_OVERHEAD = 12 + 16  # nonce + GCM tag


@dataclass(frozen=True)
class Layout:
    header_size: int
    frame_size: int

    @property
    def stride(self) -> int:
        """Bytes one full frame takes on disk."""
        return self.frame_size + FRAME_OVERHEAD

    def frame_count(self, size: int) -> int:
        """Frames of a file with `size` plaintext bytes (an empty file has one empty frame)."""
        return max(1, -(-size // self.frame_size))

    def last_index(self, size: int) -> int:
        return self.frame_count(size) - 1

    def frame_offset(self, index: int) -> int:
        """Where frame `index` starts in the backing file."""
        return self.header_size + index * self.stride

    def frame_start(self, index: int) -> int:
        """Plaintext offset of the first byte of frame `index`."""
        return index * self.frame_size

    def backing_length(self, size: int) -> int:
        """Backing file length of a file with `size` plaintext bytes."""
        return self.header_size + size + self.frame_count(size) * FRAME_OVERHEAD

    def plaintext_size(self, backing_length: int) -> int | None:
        """Plaintext size for a backing length, or None if no envelope has that length."""
        body = backing_length - self.header_size
        if body < FRAME_OVERHEAD:
            return None
        full, rest = divmod(body, self.stride)
        if rest == 0:
            return full * self.frame_size
        if rest < FRAME_OVERHEAD:
            return None
        return full * self.frame_size + rest - FRAME_OVERHEAD

    def frames(self, offset: int, length: int) -> range:
        """The frames holding plaintext bytes [offset, offset + length)."""
        if length <= 0:
            return range(offset // self.frame_size, offset // self.frame_size)
        return range(offset // self.frame_size, (offset + length - 1) // self.frame_size + 1)

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
