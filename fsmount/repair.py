"""`kms fs fsck --repair`: give a file whose end a crash broke a valid end again.

The mount never leaves a broken end by itself (the end marker, see `slots`); a broken
end comes from a cipher directory written by keyhold before the end marker (kill -9
while a file grew), from a write torn by the crash inside one syscall, or from
someone cutting the backing file. The repair cannot tell these apart, which is why
it is an explicit command and not done at open: it keeps the longest run of frames
from the start that authenticate (holes inside it included), up to its last sealed
frame, drops what follows, and seals that frame as final again. Damage before that run's end (a frame inside the
file that fails) is not repaired: that is tampering or a torn overwrite, and cutting
there would throw away good data after it.

`plan` is pure (bytes in, a decision out); `repair_file` does the I/O.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from kmscore.envelope import FRAME_OVERHEAD, FrameAuthError, FrameCipher, open_envelope

from fsmount import slots
from fsmount.errors import DamagedFile
from fsmount.fs_base import read_header
from fsmount.layout import Layout

__all__ = ["Plan", "plan", "repair_file"]


@dataclass(frozen=True)
class Plan:
    keep: int  # whole frames kept from the start; the last of them becomes final
    last_plain: bytes  # plaintext of frame keep-1 (b"" when nothing is kept)
    cut: int  # backing bytes dropped


def _end_is_valid(cipher: FrameCipher, lay: Layout, length: int, read: Callable[[int, int], bytes]) -> bool:
    end = slots.ending(lay, length)
    if end is None:
        return False
    try:
        if end.marker is not None:
            slots.open_marker(cipher, end.marker, read(lay.frame_offset(end.marker), FRAME_OVERHEAD))
        else:
            index = lay.last_index(end.size)
            frame = read(lay.frame_offset(index), length - lay.frame_offset(index))
            cipher.open(index, frame, True)
    except FrameAuthError:
        return False
    return True


def plan(cipher: FrameCipher, lay: Layout, length: int, read: Callable[[int, int], bytes]) -> Plan | None:
    """What to keep of a backing file of `length` bytes; None if its end is valid.

    Raises DamagedFile if a frame fails before the broken end (not repairable).
    """
    if _end_is_valid(cipher, lay, length, read):
        return None
    whole = max(0, (length - lay.header_size) // lay.stride)
    keep, last_plain, bad = 0, b"", whole  # keep: up to the last sealed frame (holes after it go)
    for index in range(whole):
        frame = read(lay.frame_offset(index), lay.stride)
        try:
            last_plain, keep = cipher.open(index, frame, False), index + 1
        except FrameAuthError:
            if not slots.is_hole(frame):
                bad = index
                break
    for index in range(bad + 1, whole):  # a sealed frame after a bad one: not a broken end
        try:
            cipher.open(index, read(lay.frame_offset(index), lay.stride), False)
        except FrameAuthError:
            continue
        raise DamagedFile(f"frame {bad} failed authentication inside the file (tampered or torn); not repaired")
    return Plan(keep, last_plain, length - lay.frame_offset(keep))


def repair_file(kms, path: str | os.PathLike) -> Plan | None:
    """Repair one backing file in place (the mount must not be running); None if intact."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        header = read_header(fd)
        lay = Layout(header.size, header.frame_size)
        cipher = open_envelope(kms, header)
        length = os.fstat(fd).st_size
        decision = plan(cipher, lay, length, lambda offset, n: os.pread(fd, n, offset))
        if decision is None:
            return None
        last = max(0, decision.keep - 1)
        # cut first: a crash in between leaves a broken end again, and a rerun fixes it
        os.ftruncate(fd, lay.frame_offset(decision.keep))
        os.pwrite(fd, cipher.seal(last, decision.last_plain, True), lay.frame_offset(last))
        os.fsync(fd)
        return decision
    finally:
        os.close(fd)
