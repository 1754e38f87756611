"""Per-open-file state: the backing fd, the frame cipher, a lock and the tail write-back.

One `OpenFile` exists per backing inode, shared by every FUSE handle (and hard link)
that has it open, so all of them see the same size and the same unwritten tail.

The tail (last frame) is kept in memory while it changes: appending to a file would
otherwise re-seal its last frame, as final, on every write. The tail reaches the disk
(sealed as final, file cut to length) on flush, fsync and release, and whenever the
file grows past it; so a closed or fsynced file is always a complete envelope.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable

from kmscore.envelope import FrameAuthError, FrameCipher, Header

from fsmount.layout import Layout, splice

log = logging.getLogger("fsmount")

ZERO_FILL_BATCH = 256  # frames sealed per pwrite when filling a hole


def fs_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class OpenFile:
    """Random-access plaintext view of one envelope file. Thread-safe."""

    def __init__(
        self, fd: int, header: Header, cipher: FrameCipher, size: int, name: str, check: Callable[[], None]
    ) -> None:
        self.fd = fd
        self.header = header
        self.cipher = cipher
        self.layout = Layout(header.size, header.frame_size)
        self.size = size
        self.name = name  # for log lines; the path at first open
        self.check = check  # raises OSError(ENOKEY) once the CMK is revoked
        self.lock = threading.Lock()
        self.refs = 0
        self._tail: bytearray | None = None  # plaintext of the last frame, when loaded
        self._tail_dirty = False

    # -- frames ------------------------------------------------------------------------
    def _open_frame(self, index: int, frame: bytes | memoryview, final: bool) -> bytes:
        try:
            return self.cipher.open(index, frame, final)
        except FrameAuthError:
            log.error("integrity: %s: frame %d failed authentication (tampered, swapped or truncated)", self.name, index)
            raise fs_error(errno.EIO) from None

    def _open_frame_into(self, index: int, frame: memoryview, out: memoryview) -> None:
        try:
            self.cipher.open_into(index, frame, False, out)
        except FrameAuthError:
            log.error("integrity: %s: frame %d failed authentication (tampered, swapped or truncated)", self.name, index)
            raise fs_error(errno.EIO) from None

    def _read_frames(self, first: int, last: int) -> list[bytes]:
        """Decrypt full, non-final frames first..last from disk."""
        lay = self.layout
        want = (last - first + 1) * lay.stride
        data = os.pread(self.fd, want, lay.frame_offset(first))
        view = memoryview(data)
        out = []
        for n, index in enumerate(range(first, last + 1)):
            frame = view[n * lay.stride : (n + 1) * lay.stride]
            if len(frame) != lay.stride:
                log.error("integrity: %s: frame %d is cut short", self.name, index)
                raise fs_error(errno.EIO)
            out.append(self._open_frame(index, frame, False))
        return out

    def _load_tail(self) -> bytearray:
        if self._tail is None:
            lay = self.layout
            index = lay.last_index(self.size)
            length = self.size - lay.frame_start(index)
            frame = os.pread(self.fd, length + 28, lay.frame_offset(index))
            if len(frame) != length + 28:
                log.error("integrity: %s: frame %d is cut short", self.name, index)
                raise fs_error(errno.EIO)
            self._tail = bytearray(self._open_frame(index, frame, True))
        return self._tail

    def _frame_plaintext(self, index: int) -> bytes | bytearray:
        """Current plaintext of an existing frame (the tail from memory)."""
        if index == self.layout.last_index(self.size):
            return self._load_tail()
        return self._read_frames(index, index)[0]

    # -- public calls (each takes the lock) -----------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(max(0, min(length, self.size - offset)))
        return bytes(buf[: self.read_into(offset, length, memoryview(buf))])

    def read_into(self, offset: int, length: int, out: memoryview) -> int:
        """Decrypt plaintext [offset, offset + length) into `out`; return the bytes given.

        Whole frames are decrypted straight into `out` (the FUSE binding passes the
        kernel's buffer: no copy). If a frame fails, the call raises EIO and `out`,
        which may hold unauthenticated bytes, is never handed to the kernel.
        """
        with self.lock:
            self.check()
            end = min(self.size, offset + length)
            if offset >= end:
                return 0
            lay = self.layout
            frames = lay.frames(offset, end - offset)
            tail_index = lay.last_index(self.size)
            pos = 0
            first, disk_last = frames[0], min(frames[-1], tail_index - 1)
            if first <= disk_last:
                data = memoryview(os.pread(self.fd, (disk_last - first + 1) * lay.stride, lay.frame_offset(first)))
                for n, index in enumerate(range(first, disk_last + 1)):
                    frame = data[n * lay.stride : (n + 1) * lay.stride]
                    if len(frame) != lay.stride:
                        log.error("integrity: %s: frame %d is cut short", self.name, index)
                        raise fs_error(errno.EIO)
                    start = lay.frame_start(index)
                    lo, hi = max(offset, start), min(end, start + lay.frame_size)
                    if hi - lo == lay.frame_size:
                        self._open_frame_into(index, frame, out[pos : pos + lay.frame_size])
                    else:
                        out[pos : pos + hi - lo] = self._open_frame(index, frame, False)[lo - start : hi - start]
                    pos += hi - lo
            if frames[-1] == tail_index:
                start = lay.frame_start(tail_index)
                lo = max(offset, start)
                out[pos : pos + end - lo] = self._load_tail()[lo - start : end - start]
                pos += end - lo
            return pos

    def write(self, offset: int, data: bytes) -> int:
        with self.lock:
            self.check()
            if not data:
                return 0
            if offset > self.size:
                self._extend(offset)
            self._write(offset, memoryview(data))
            return len(data)

    def truncate(self, size: int) -> None:
        with self.lock:
            self.check()
            if size > self.size:
                self._extend(size)
            elif size < self.size:
                lay = self.layout
                index = lay.last_index(size)
                plain = self._frame_plaintext(index)[: size - lay.frame_start(index)]
                self._tail, self._tail_dirty, self.size = bytearray(plain), True, size
            self._flush_tail(force=True)

    def flush(self) -> None:
        with self.lock:
            self._flush_tail()

    def fsync(self, datasync: bool) -> None:
        with self.lock:
            self._flush_tail()
            (os.fdatasync if datasync else os.fsync)(self.fd)

    def close(self) -> None:
        with self.lock:
            try:
                self._flush_tail()
            finally:
                os.close(self.fd)
                self.fd = -1

    # -- internals (lock held) ------------------------------------------------------------
    def _write(self, offset: int, data: memoryview) -> None:
        """Write within or right after the current end (offset <= size)."""
        lay = self.layout
        end = offset + len(data)
        old_last = lay.last_index(self.size)
        new_size = max(self.size, end)
        new_last = lay.last_index(new_size)
        frames = lay.frames(offset, len(data))
        first = frames[0]
        if new_last > old_last and first > old_last:
            first = old_last  # the old tail stops being final: re-seal it
        sealed: list[bytes] = []
        new_tail = None
        for index in range(first, frames[-1] + 1):
            start = lay.frame_start(index)
            if lay.covers(index, offset, end):
                plain: bytes | bytearray | memoryview = data[start - offset : start - offset + lay.frame_size]
            else:
                base = self._frame_plaintext(index) if index <= old_last else b""
                lo = max(offset, start)
                plain = splice(base, lo - start, data[lo - offset : min(end, start + lay.frame_size) - offset])
            if index == new_last:
                new_tail = bytearray(plain)
            else:
                sealed.append(self.cipher.seal(index, plain, False))
        if sealed:
            _pwrite_all(self.fd, sealed, lay.frame_offset(first))
        if new_tail is not None:
            self._tail, self._tail_dirty = new_tail, True
        elif new_last != old_last:  # cannot happen: the new last frame is always written
            raise AssertionError("write did not produce the new tail frame")
        self.size = new_size

    def _extend(self, size: int) -> None:
        """Grow the file to `size` with zeros (a hole reads as zeros, stored encrypted)."""
        lay = self.layout
        old_last, new_last = lay.last_index(self.size), lay.last_index(size)
        tail = self._load_tail()
        if new_last == old_last:
            tail.extend(bytes(size - self.size))
            self._tail_dirty, self.size = True, size
            return
        padded = bytes(tail) + bytes(lay.frame_size - len(tail))
        os.pwrite(self.fd, self.cipher.seal(old_last, padded, False), lay.frame_offset(old_last))
        zeros = bytes(lay.frame_size)
        for start in range(old_last + 1, new_last, ZERO_FILL_BATCH):
            stop = min(new_last, start + ZERO_FILL_BATCH)
            _pwrite_all(self.fd, [self.cipher.seal(i, zeros, False) for i in range(start, stop)], lay.frame_offset(start))
        self._tail = bytearray(size - lay.frame_start(new_last))
        self._tail_dirty, self.size = True, size

    def _flush_tail(self, force: bool = False) -> None:
        if not (self._tail_dirty or force) or self._tail is None:
            return
        lay = self.layout
        index = lay.last_index(self.size)
        os.pwrite(self.fd, self.cipher.seal(index, self._tail, True), lay.frame_offset(index))
        if force:  # only truncate shrinks a file; writes never leave bytes past the tail
            os.ftruncate(self.fd, lay.backing_length(self.size))
        self._tail_dirty = False


def _pwrite_all(fd: int, buffers: list[bytes], offset: int) -> None:
    """Write the buffers back to back at `offset` (one pwritev, no joining copy)."""
    want = sum(map(len, buffers))
    done = os.pwritev(fd, buffers, offset)
    if done != want:  # short write (disk full, signal): finish with plain pwrite
        rest = b"".join(buffers)[done:]
        while rest:
            n = os.pwrite(fd, rest, offset + done)
            done, rest = done + n, rest[n:]
