"""What a frame slot of a backing file holds: a sealed frame, a hole, or the end marker.

Sans-IO: bytes and lengths in, plaintext or verdicts out (docs/formats/fsmount.md).

* A **sealed frame** opens with the DEK at its index (non-final, or final at the end).
* A **hole** is a non-final slot whose every byte is zero: a file grown by truncate,
  by a write past its end or by fallocate leaves the frames in between unwritten, so
  the backing file stays sparse; such a slot reads as F zero bytes. A sealed frame is
  never all zeros (its 16-byte tag would have to be zero, chance 2^-128), so nothing
  the mount wrote is mistaken for a hole; but a frame an attacker overwrites with
  zeros reads as zeros too. The last frame is never a hole.
* The **end marker** is an empty final frame at index k after k full non-final frames:
  a backing file length of `H + k*(F+28) + 28` with k >= 1, which no other state of the
  format has (a file of k*F bytes otherwise ends with a full final frame). The mount
  writes it whenever a file grows past its last frame, in the same `pwritev` as the
  frames before it, so the disk always holds a whole, authenticated envelope while
  the new last frame is still in memory: a crash of the mount process loses at most
  the bytes written since the last flush or fsync, never what an fsync made durable.
"""

from __future__ import annotations

from dataclasses import dataclass

from kmscore.envelope import FRAME_OVERHEAD, FrameAuthError, FrameCipher

from fsmount.layout import Layout

__all__ = ["Ending", "ending", "is_hole", "open_slot", "open_marker"]


@dataclass(frozen=True)
class Ending:
    """How a backing file of a given length ends."""

    size: int  # plaintext bytes
    marker: int | None  # index of the end marker, or None: the last frame is final


def ending(layout: Layout, backing_length: int) -> Ending | None:
    """Size and end state for a backing length; None if no envelope has that length."""
    size = layout.plaintext_size(backing_length)
    if size is None:
        return None
    frames = backing_length - layout.header_size
    if frames > layout.stride and frames % layout.stride == FRAME_OVERHEAD:
        return Ending(size, frames // layout.stride)
    return Ending(size, None)


def is_hole(frame: bytes | memoryview) -> bool:
    """True for a slot never written: all zero bytes (checked only after a failed open)."""
    data = bytes(frame)
    return data.count(0) == len(data)


def open_slot(cipher: FrameCipher, index: int, frame: bytes | memoryview, final: bool) -> bytes:
    """Plaintext of slot `index`: a sealed frame, or F zeros for a hole (non-final only).

    Raises FrameAuthError for anything else (tampered, swapped, torn, cut short).
    """
    try:
        return cipher.open(index, frame, final)
    except FrameAuthError:
        if not final and len(frame) == cipher.frame_size + FRAME_OVERHEAD and is_hole(frame):
            return bytes(cipher.frame_size)
        raise


def open_marker(cipher: FrameCipher, index: int, frame: bytes | memoryview) -> None:
    """Authenticate the end marker at `index`; FrameAuthError if it is not one."""
    if len(frame) != FRAME_OVERHEAD or cipher.open(index, frame, True) != b"":
        raise FrameAuthError(index)
