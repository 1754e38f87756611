"""Per-open-file state: the backing fd, the frame cipher, a lock and the tail write-back.

One `OpenFile` exists per backing inode, shared by every FUSE handle (and hard link)
that has it open, so all of them see the same size and the same unwritten tail.

The tail (last frame) is kept in memory while it changes: appending to a file would
otherwise re-seal its last frame, as final, on every write. The tail reaches the disk
(sealed as final, file cut to length) on flush, fsync and release. Whenever the file
grows past its last frame, the frames before the new tail are written together with
an end marker (`slots`), so the backing file is a whole envelope at every moment: a
kill -9 of the mount loses at most what was written since the last flush or fsync.

Holes are not written: frames wholly inside a hole stay unwritten (sparse) and read as
zeros; `fallocate` reserves backing space, punches frames out or zeroes ranges.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import threading
from collections.abc import Callable

from kmscore.envelope import FrameAuthError, FrameCipher, Header

from fsmount import slots
from fsmount.layout import Layout, splice

log = logging.getLogger("fsmount")

# fallocate(2) modes (linux/falloc.h)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
FALLOCATE_MODES = frozenset({  # the rest (collapse, insert, unshare) is EOPNOTSUPP
    0,
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_ZERO_RANGE,
    FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
})


MAX_BACKING_LENGTH = (1 << 63) - 1  # off_t


def fs_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


TORN_ALIGN = 4096  # a write cut short by a kill stops at a page boundary of the file


def _mend_torn_tail(fd: int, lay: Layout, cipher: FrameCipher, length: int, name: str) -> int | None:
    """The new backing length after mending a tail that a killed mount left torn, or None.

    A kill -9 during the `pwritev` that grows a file (frames, then the end marker) can
    stop it at a page boundary: the file then ends inside a new frame, with no marker,
    and its last slot fails authentication. That shape alone (a page-aligned length
    whose last slot does not open, after a full frame that does) is taken for a torn
    write: the partial slot is cut off and an end marker is written after the last
    whole frame, so the file opens, reads and appends again. What is dropped was written
    after the last fsync (an fsync'ed tail is never rewritten by a growing write, except
    the last partial frame itself: see docs/formats/fsmount.md). Anything else — or a
    frame before it that does not open — is left alone and stays EIO.
    """
    whole = (length - lay.header_size) // lay.stride  # full slots on disk
    last = (length - lay.header_size - 1) // lay.stride
    if whole < 1:
        return None
    if last >= whole:  # a partial slot at the end: does it open as the final frame?
        tail = os.pread(fd, length - lay.frame_offset(last), lay.frame_offset(last))
        try:
            cipher.open(last, tail, True)
            return None  # a whole envelope: nothing torn
        except (FrameAuthError, ValueError):
            pass
    try:
        cipher.open(whole - 1, os.pread(fd, lay.stride, lay.frame_offset(whole - 1)), False)
    except (FrameAuthError, ValueError):
        return None
    end = lay.frame_offset(whole)
    marker = cipher.seal(whole, b"", True)
    try:
        os.ftruncate(fd, end)
        os.pwrite(fd, marker, end)
        os.fsync(fd)
    except OSError as e:
        log.error("integrity: %s: a torn tail could not be mended: %s", name, e.strerror)
        return None
    log.warning("integrity: %s: mended a tail torn by a crash: %d bytes after frame %d dropped "
                "(written after the last fsync)", name, length - end, whole - 1)
    return end + len(marker)


def _damaged(name: str, what: str) -> OSError:
    log.error("integrity: %s: %s", name, what)
    return fs_error(errno.EIO)


class OpenFile:
    """Random-access plaintext view of one envelope file. Thread-safe."""

    def __init__(
        self,
        fd: int,
        header: Header,
        cipher: FrameCipher,
        size: int,
        name: str,
        check: Callable[[], None],
        marker: int | None = None,
        label: str | None = None,
    ) -> None:
        self.fd = fd
        self.header = header
        self.cipher = cipher
        self.layout = Layout(header.size, header.frame_size)
        self.size = size
        self.name = name  # the mount path (kept current on rename: the kernel cache is dropped by it)
        self.label = label or name  # for log lines: the backing path at first open with encrypted names
        self.check = check  # raises OSError(ENOKEY) once the CMK is revoked
        self.lock = threading.Lock()
        self.refs = 0
        self._tail: bytearray | None = None  # plaintext of the last frame, when loaded
        self._tail_dirty = False
        # index of the end marker the disk's envelope ends with, or None when it ends
        # with the last frame sealed final (maybe an older version of it)
        self._marker = marker
        self._times: tuple[int, int] | None = None  # (atime, mtime) set while open

    @classmethod
    def opened(
        cls, fd: int, header: Header, cipher: FrameCipher, backing_length: int, name: str, check: Callable[[], None],
        label: str | None = None,
    ) -> OpenFile:
        """The state of an existing backing file; EIO if its length or end marker is wrong."""
        lay = Layout(header.size, header.frame_size)
        end = slots.ending(lay, backing_length)
        if (end is None or end.marker is None) and backing_length % TORN_ALIGN == 0:
            mended = _mend_torn_tail(fd, lay, cipher, backing_length, label or name)
            if mended is not None:
                backing_length, end = mended, slots.ending(lay, mended)
        if end is None:
            raise _damaged(label or name, f"backing file length {backing_length} fits no envelope (truncated)")
        if end.marker is not None:
            try:
                slots.open_marker(cipher, end.marker, os.pread(fd, lay.stride, lay.frame_offset(end.marker)))
            except FrameAuthError:
                raise _damaged(label or name, f"end marker {end.marker} failed authentication (tampered or truncated)") from None
        return cls(fd, header, cipher, end.size, name, check, end.marker, label)

    @classmethod
    def created(
        cls, fd: int, header: Header, cipher: FrameCipher, name: str, check: Callable[[], None],
        label: str | None = None,
    ) -> OpenFile:
        """A new, empty file: writes a valid empty envelope (header, one empty final frame)."""
        os.pwrite(fd, header.encode() + cipher.seal(0, b"", True), 0)
        f = cls(fd, header, cipher, 0, name, check, label=label)
        f._tail = bytearray()  # known: no need to read and open the frame just written
        return f

    # -- frames ------------------------------------------------------------------------
    def _open_frame(self, index: int, frame: bytes | memoryview, final: bool) -> bytes:
        try:
            return slots.open_slot(self.cipher, index, frame, final)
        except FrameAuthError:
            raise _damaged(self.label, f"frame {index} failed authentication (tampered, swapped or truncated)") from None

    def _open_frame_into(self, index: int, frame: memoryview, out: memoryview) -> None:
        try:
            self.cipher.open_into(index, frame, False, out)
        except FrameAuthError:
            if not slots.is_hole(frame):
                raise _damaged(self.label, f"frame {index} failed authentication (tampered, swapped or truncated)") from None
            out[:] = bytes(len(out))  # a hole (never written): zeros

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
                log.error("integrity: %s: frame %d is cut short", self.label, index)
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
                raise _damaged(self.label, f"frame {index} is cut short")
            # after an end marker, the last frame is a full one stored non-final
            self._tail = bytearray(self._open_frame(index, frame, self._marker is None))
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
                        log.error("integrity: %s: frame %d is cut short", self.label, index)
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
            self._times = None  # new data: the write's own mtime wins over a set one
            if self.layout.backing_length(offset + len(data)) > MAX_BACKING_LENGTH:
                raise fs_error(errno.EFBIG)
            if offset > self.size:
                self._extend(offset)
            self._write(offset, memoryview(data))
            return len(data)

    def truncate(self, size: int) -> None:
        with self.lock:
            self.check()
            self._times = None
            if size > self.size:
                self._extend(size)
            elif size < self.size:
                lay = self.layout
                index = lay.last_index(size)
                start = lay.frame_start(index)
                plain = self._frame_plaintext(index)[: size - start] if size > start else b""
                self._tail, self._tail_dirty, self.size = bytearray(plain), True, size
            self._flush_tail(force=True)

    def fallocate(self, mode: int, offset: int, length: int) -> None:
        """fallocate(2): reserve backing space (mode 0, KEEP_SIZE), punch a hole, zero a range.

        Mode 0 and ZERO_RANGE without KEEP_SIZE also grow the file (zeros, sparse).
        Space is reserved with fallocate on the backing file, KEEP_SIZE, so a
        reserved range reads as a hole until written; a punched range of whole frames
        becomes a hole, partly covered frames and the last frame are sealed zeros.
        """
        with self.lock:
            self.check()
            if mode not in FALLOCATE_MODES:
                raise fs_error(errno.EOPNOTSUPP)
            if offset < 0 or length <= 0:
                raise fs_error(errno.EINVAL)
            end = offset + length
            if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                self._times = None
                self._zero(offset, min(end, self.size))
            if not mode & FALLOC_FL_PUNCH_HOLE:
                self._reserve(offset, end)
            if not mode & FALLOC_FL_KEEP_SIZE and end > self.size:
                self._times = None
                self._extend(end)

    def keep_times(self) -> None:
        """The backing file's times were just set: keep them through the next tail write.

        `cp -p`, `tar x` and `rsync -t` set the mtime on the open file before closing
        it; writing the buffered tail at close would otherwise reset it to now.
        """
        with self.lock:
            if self.fd < 0:
                return  # closed meanwhile (its last handle was released): nothing to keep
            st = os.fstat(self.fd)
            self._times = (st.st_atime_ns, st.st_mtime_ns)

    def flush(self) -> None:
        with self.lock:
            if self._marker is not None and not self._tail_dirty:
                self._settle_marker()  # at flush, which close(2) waits for (release it does not)
            self._flush_tail()

    def fsync(self, datasync: bool) -> None:
        with self.lock:
            self._flush_tail()
            (os.fdatasync if datasync else os.fsync)(self.fd)

    def close(self) -> None:
        with self.lock:
            try:
                if self._marker is not None and not self._tail_dirty:
                    self._settle_marker()
                self._flush_tail()
            finally:
                os.close(self.fd)
                self.fd = -1

    # -- internals (lock held) ------------------------------------------------------------
    def _settle_marker(self) -> None:
        """A file a crash left ending in a marker gets its usual end at the first close
        that can write it (so keyhold versions before the marker read it too)."""
        if fcntl.fcntl(self.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            return
        try:
            self._load_tail()
        except OSError:
            return  # damaged: leave it as it is for fsck
        self._tail_dirty = True

    def _write(self, offset: int, data: memoryview) -> None:
        """Write within or right after the current end (offset <= size)."""
        lay = self.layout
        end = offset + len(data)
        old_last = lay.last_index(self.size)
        new_size = max(self.size, end)
        new_last = lay.last_index(new_size)
        frames = lay.frames(offset, len(data))
        first = frames[0]
        if new_last > old_last:
            self._load_tail()  # kept in memory until the grown end is on disk (_restore_end)
            if first > old_last:
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
        if new_last > old_last:  # the new tail stays in memory; the disk ends with a marker
            sealed.append(self.cipher.seal(new_last, b"", True))
        if sealed:
            try:
                _pwrite_all(self.fd, sealed, lay.frame_offset(first))
            except OSError:
                if new_last > old_last:
                    self._restore_end()
                raise
        if new_tail is not None:
            self._tail, self._tail_dirty = new_tail, True
        elif new_last != old_last:  # cannot happen: the new last frame is always written
            raise AssertionError("write did not produce the new tail frame")
        if new_last > old_last:
            self._marker = new_last
        self.size = new_size

    def _extend(self, size: int) -> None:
        """Grow the file to `size` with zeros; frames wholly in the hole stay unwritten."""
        lay = self.layout
        if lay.backing_length(size) > MAX_BACKING_LENGTH:
            raise fs_error(errno.EFBIG)
        old_last, new_last = lay.last_index(self.size), lay.last_index(size)
        tail = self._load_tail()
        if new_last == old_last:
            tail.extend(bytes(size - self.size))
            self._tail_dirty, self.size = True, size
            return
        padded = bytes(tail) + bytes(lay.frame_size - len(tail))
        old = self.cipher.seal(old_last, padded, False)
        marker = self.cipher.seal(new_last, b"", True)
        try:
            if new_last == old_last + 1:
                _pwrite_all(self.fd, [old, marker], lay.frame_offset(old_last))
            else:
                if self._marker == old_last + 1:  # the old marker's slot becomes a hole
                    old += bytes(len(marker))
                # the far marker first: a size the backing file system cannot hold
                # (EFBIG) fails here, before anything changed
                _pwrite_all(self.fd, [marker], lay.frame_offset(new_last))
                _pwrite_all(self.fd, [old], lay.frame_offset(old_last))
        except OSError:
            self._restore_end()
            raise
        self._tail = bytearray(size - lay.frame_start(new_last))
        self._tail_dirty, self.size, self._marker = True, size, new_last

    def _restore_end(self) -> None:
        """A write that grew the file failed (disk full, EFBIG): cut what it added, then
        seal the last frame as memory has it, so the disk is the file's envelope again."""
        try:
            os.ftruncate(self.fd, self.layout.backing_length(self.size))  # frees room first
            self._tail_dirty = True
            self._flush_tail(force=True)
        except OSError as e:
            log.error("%s: the end of the file could not be restored after a failed write (%s);"
                      " run kms fs fsck --repair", self.label, e.strerror)

    def _zero(self, offset: int, end: int) -> None:
        """Zeros in plaintext [offset, end) (end <= size): whole frames become holes."""
        if offset >= end:
            return
        lay = self.layout
        first_whole = -(-offset // lay.frame_size)
        stop_whole = min(end // lay.frame_size, lay.last_index(self.size))  # never the tail
        if first_whole >= stop_whole:
            self._write(offset, memoryview(bytes(end - offset)))
            return
        _fallocate(
            self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
            lay.frame_offset(first_whole), (stop_whole - first_whole) * lay.stride,
        )
        head_end, tail_start = lay.frame_start(first_whole), lay.frame_start(stop_whole)
        if offset < head_end:
            self._write(offset, memoryview(bytes(head_end - offset)))
        if tail_start < end:
            self._write(tail_start, memoryview(bytes(end - tail_start)))

    def _reserve(self, offset: int, end: int) -> None:
        """Reserve backing blocks for plaintext [offset, end); unwritten, they read as holes."""
        lay = self.layout
        first, last = offset // lay.frame_size, (end - 1) // lay.frame_size
        _fallocate(self.fd, FALLOC_FL_KEEP_SIZE, lay.frame_offset(first), (last - first + 1) * lay.stride)

    def _flush_tail(self, force: bool = False) -> None:
        if not (self._tail_dirty or force) or self._tail is None:
            return
        lay = self.layout
        index = lay.last_index(self.size)
        os.pwrite(self.fd, self.cipher.seal(index, self._tail, True), lay.frame_offset(index))
        # only truncate shrinks a file, and a marker after a full last frame must go;
        # otherwise the sealed tail covers the marker or the older tail it replaces
        if force or (self._marker is not None and self._marker != index):
            os.ftruncate(self.fd, lay.backing_length(self.size))
        self._marker = None
        self._tail_dirty = False
        if self._times is not None:
            os.utime(self.fd, ns=self._times)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) on the backing file (os has only posix_fallocate, mode 0)."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _pwrite_all(fd: int, buffers: list[bytes], offset: int) -> None:
    """Write the buffers back to back at `offset` (one pwritev, no joining copy)."""
    want = sum(map(len, buffers))
    done = os.pwritev(fd, buffers, offset)
    if done != want:  # short write (disk full, signal): finish with plain pwrite
        rest = b"".join(buffers)[done:]
        while rest:
            n = os.pwrite(fd, rest, offset + done)
            done, rest = done + n, rest[n:]
