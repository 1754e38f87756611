"""Reading, sealing and writing side by side, in a fixed set of reused buffers.

`kms encrypt-file` and `decrypt-file` run three stages at once: a thread reads the input
into free buffers (`ReadAhead`), the command's thread seals or opens frames from one
buffer straight into another (`kmscore.envelope.seal_frames` / `open_frames`), and a
thread writes those out (`WriteBehind`). Buffers go round and round: nothing is
allocated, zeroed or copied per chunk, and memory is the buffers, fixed at start (at
most `(IN_BUFFERS + OUT_BUFFERS) * CHUNK`-ish bytes).

Why threads help although AES-GCM holds the GIL (cryptography 50 does not release it;
measured: two threads seal no faster than one): the reads and writes are the slow part
(system calls copying to and from the page cache, then the disk) and they do release
it.

The output is fsynced before it is named (`atomic_output`), so the disk has to write
it all before the command ends. Left to the page cache, that writing starts only at
the fsync, after the last chunk: the disk idles while we seal and we idle while it
writes. `EarlyWriteback` starts it as the file grows (`sync_file_range(WRITE)`, which
only queues the pages, on ranges a window behind the write head so that no write
lands on a page under writeback), and the final fsync waits only for the tail.
(Starting it on each chunk at once, just written, was measured 1.5-2x slower.)

For the named output of `decrypt-file` (`atomic_output`), `DirectWriteBehind` goes
further and skips the page cache: O_DIRECT writes of a few MiB from page-aligned
buffers. On this project's VM the buffered write path of 1 GiB + fsync swung 0.54-3.51 s
while O_DIRECT writes took a steady 0.6-0.9 s, and they cost no CPU for copying into
the page cache (the copy was the largest single cost of the buffered path: 23% of
encrypt's CPU and 53% of decrypt's, whose 1 MiB-aligned writes of plaintext get large
page-cache folios, which this VM fills several times slower). Where O_DIRECT is refused
(on fcntl, or EINVAL on a write) the same bytes go buffered instead. `encrypt-file`
stays buffered: on a quiet disk O_DIRECT made it slower (1.58x cp against 1.11x; its
writes, shifted by the header, do not take that slow path), docs/BENCHMARKS.md.

A chunk is filled completely unless the input ends, so chunks hold whole frames and the
only partial one is the last: the command seals a chunk once it knows whether another
follows (the last frame of the stream is marked final).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import queue
import stat
import sys
import threading
from collections.abc import Iterator
from typing import BinaryIO

IN_BUFFERS = 4  # one being filled, one waiting, the one being sealed and the one after it
OUT_BUFFERS = 3  # one being filled, one being written, one waiting
WRITEBACK_STEP = 8 << 20  # queue the disk write of this much at a time ...
WRITEBACK_LAG = 16 << 20  # ... once the write head is this far past its end
SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of dirty pages in the range, do not wait
DIRECT_BLOCK = 6 << 20  # bytes per O_DIRECT buffer: writes of 5-6 MiB (see DirectWriteBehind)
DIRECT_BUFFERS = 3  # one being filled by the sealing thread, one being written, one ready
DIRECT_ALIGN = 4096  # O_DIRECT offsets and lengths: a multiple of the logical block size (<= 4096)


class Chunk:
    """`n` bytes of input in a buffer of the pool; hand it back with `ReadAhead.release`."""

    __slots__ = ("buf", "n")

    def __init__(self, buf: bytearray, n: int) -> None:
        self.buf, self.n = buf, n

    @property
    def view(self) -> memoryview:
        return memoryview(self.buf)[: self.n]

    def __len__(self) -> int:
        return self.n


def _fill(f: BinaryIO, buf: bytearray) -> int:
    """Read until `buf` is full or the input ends (a pipe gives less per read)."""
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


class ReadAhead:
    """The input in chunks of `size` bytes, read by a thread into `count` reused buffers."""

    def __init__(self, f: BinaryIO, size: int, count: int = IN_BUFFERS) -> None:
        self._f = f
        self._free: queue.Queue = queue.Queue()
        for _ in range(count):
            self._free.put(bytearray(size))
        self._ready: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        _advise_sequential(f)
        self._thread = threading.Thread(target=self._run, name="kms-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                buf = self._free.get()
                if self._stop.is_set():
                    return
                n = _fill(self._f, buf)
                if n:
                    self._ready.put(Chunk(buf, n))
                if n < len(buf):
                    self._ready.put(None)
                    return
        except BaseException as e:  # handed to the consumer
            self._ready.put(e)

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            item = self._ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def release(self, chunk: Chunk) -> None:
        self._free.put(chunk.buf)

    def close(self) -> None:
        self._stop.set()
        self._free.put(bytearray())  # wake a reader waiting for a free buffer
        self._thread.join(timeout=30)


class _WritingThread:
    """What both writers share: a thread that writes the filled buffers handed to it
    (`_q`), in order, gives each back (`_recycle`), and keeps the first error for the
    command's thread, which sees it on its next call (`_check`). After an error the
    remaining buffers are given back unwritten."""

    def __init__(self) -> None:
        self._free: queue.Queue = queue.Queue()
        self._q: queue.Queue = queue.Queue()
        self._failed: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="kms-write", daemon=True)

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            buf, n = item
            if not self._failed:
                try:
                    self._write_out(buf, n)
                except BaseException as e:
                    self._failed.append(e)
            self._recycle(buf)

    def _write_out(self, buf, n: int) -> None:
        raise NotImplementedError

    def _recycle(self, buf) -> None:
        self._free.put(buf)

    def _check(self) -> None:
        if self._failed:
            raise self._failed[0]

    def _stop(self) -> None:
        self._q.put(None)
        self._thread.join()


class WriteBehind(_WritingThread):
    """Writes filled buffers in a thread; `buffer()` hands out a free one (waiting while
    all are in flight). A write error surfaces on the next call."""

    def __init__(self, out: BinaryIO, size: int, count: int = OUT_BUFFERS) -> None:
        super().__init__()
        self._out = out
        for _ in range(count):
            self._free.put(bytearray(size))
        self._thread.start()

    def _run(self) -> None:
        # in the writing thread: EarlyWriteback loads ctypes, which the command's own
        # thread need not wait for
        self._writeback = EarlyWriteback.of(self._out)
        super()._run()

    def _write_out(self, buf, n: int) -> None:
        self._out.write(memoryview(buf)[:n] if isinstance(buf, bytearray) else buf)
        if self._writeback is not None:
            self._writeback.wrote(n)

    def _recycle(self, buf) -> None:
        if isinstance(buf, bytearray):  # not the bytes of write_bytes
            self._free.put(buf)

    def buffer(self) -> bytearray:
        self._check()
        return self._free.get()

    def write(self, buf: bytearray, n: int) -> None:
        """Write the first `n` bytes of a buffer from `buffer()` (which it then takes back)."""
        self._check()
        self._q.put((buf, n))

    def write_bytes(self, data: bytes) -> None:
        self._check()
        if data:
            self._q.put((bytes(data), len(data)))

    def close(self) -> None:
        self._stop()
        self._check()


class EarlyWriteback:
    """Queues the disk write of a growing regular file a window behind its write head.

    Linux only (`sync_file_range`, through libc: the os module lacks it); elsewhere, or
    for pipes and terminals, `of` answers None and the page cache decides alone. A
    failure to queue is not an error: the final fsync still writes and reports."""

    def __init__(self, fd: int, start: int) -> None:
        import ctypes  # only for outputs that reach this: not at start-up

        libc = ctypes.CDLL(None, use_errno=True)
        self._queue = libc.sync_file_range
        self._queue.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
        self._fd, self._queued, self._head = fd, start, start

    @classmethod
    def of(cls, out: BinaryIO) -> EarlyWriteback | None:
        fd = _regular_fd(out)
        if fd is None or not sys.platform.startswith("linux"):
            return None
        try:
            return cls(fd, os.lseek(fd, 0, os.SEEK_CUR))
        except (OSError, AttributeError):
            return None

    def wrote(self, n: int) -> None:
        self._head += n
        while self._head - self._queued >= WRITEBACK_STEP + WRITEBACK_LAG:
            self._queue(self._fd, self._queued, WRITEBACK_STEP, SYNC_FILE_RANGE_WRITE)
            self._queued += WRITEBACK_STEP


class DirectWriteBehind(_WritingThread):
    """`WriteBehind` for a regular file set to O_DIRECT: the same interface, but the
    stream is gathered into `count` page-aligned (mmap) buffers of `block` bytes and
    written a buffer at a time, from and at 4096-aligned addresses, offsets and lengths.

    `buffer()` hands out the free room at the fill point of the current buffer (at least
    `size` bytes), so frames are sealed or opened straight into the buffer that goes to
    the disk. Once fewer than `size` bytes are free, the buffer's aligned part goes to
    the writing thread and its unaligned rest (under 4 KiB) is copied to the start of
    the next buffer: the only copy.

    Sizes (1 GiB + fsync on this VM, shared, so indicative): 6, 8 and 12 MiB buffers
    wrote alike (encrypt 0.8-1.0 s median, dd oflag=direct bs=16M 0.6-0.9 s); 16 MiB x 2
    was no faster and put the command's peak RSS at 69-72 MiB, over the 64 MiB bound
    (the interpreter and the key store are ~35 MiB of it). 6 MiB x 3: 54-59 MiB.

    The tail of the stream (its last, unaligned bytes) is written after clearing
    O_DIRECT (fcntl F_SETFL), buffered, so the file has its true length and the caller's
    fsync covers it. A write that fails with EINVAL while O_DIRECT is set (a file system
    that accepts the flag and refuses the I/O) clears the flag and is redone buffered:
    the output is the same bytes either way. Any other error (ENOSPC, EIO) surfaces in
    the command's thread on its next call, as with `WriteBehind`.

    Memory: `count * block` bytes, fixed at start."""

    def __init__(self, fd: int, size: int, block: int = DIRECT_BLOCK, count: int = DIRECT_BUFFERS) -> None:
        if block % mmap.PAGESIZE or block < size + DIRECT_ALIGN or count < 2:
            raise ValueError(f"buffers of {block} bytes cannot take chunks of {size} (or fewer than 2 buffers)")
        super().__init__()
        self._fd, self._size, self._block = fd, size, block
        for _ in range(count - 1):
            self._free.put(mmap.mmap(-1, block))  # anonymous mappings are page aligned
        self._cur, self._fill = mmap.mmap(-1, block), 0
        self._direct = True  # the writing thread's: cleared for the tail or on EINVAL
        self._writeback: EarlyWriteback | None = None  # once writing buffered
        self._thread.start()

    def buffer(self) -> memoryview:
        self._check()
        return memoryview(self._cur)[self._fill : self._fill + self._size]

    def write(self, buf: memoryview, n: int) -> None:
        """The first `n` bytes of the view from `buffer()` are part of the stream."""
        self._check()
        buf.release()
        self._fill += n
        if self._block - self._fill < self._size:
            self._hand_over()

    def write_bytes(self, data: bytes) -> None:
        self._check()
        view = memoryview(data)
        while view:
            n = min(len(view), self._block - self._fill)
            self._cur[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._block - self._fill < self._size:
                self._hand_over()

    def _hand_over(self, last: bool = False) -> None:
        """The current buffer's aligned part (all of it if `last`) to the writing thread;
        the rest to the start of the next buffer."""
        whole = self._fill if last else self._fill - self._fill % DIRECT_ALIGN
        rest = self._fill - whole
        nxt = self._free.get()  # waits while every other buffer is in flight
        if rest:
            nxt[:rest] = self._cur[whole : self._fill]
        self._q.put((self._cur, whole))
        self._cur, self._fill = nxt, rest

    def _write_out(self, buf, n: int) -> None:
        with memoryview(buf) as view:
            self._write(view[:n])

    def _write(self, view: memoryview) -> None:
        while view:
            part = view
            if self._direct:
                part = view[: len(view) - len(view) % DIRECT_ALIGN]
                if not part:  # the tail: buffered, so the file gets its true length
                    self._go_buffered()
                    continue
            try:
                n = os.write(self._fd, part)
            except OSError as e:
                if not (self._direct and e.errno == errno.EINVAL):
                    raise
                self._go_buffered()  # O_DIRECT refused on this file system: the same bytes, buffered
                continue
            if n <= 0:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            if self._writeback is not None:
                self._writeback.wrote(n)
            view = view[n:]

    def _go_buffered(self) -> None:
        import fcntl

        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        self._direct = False
        if self._writeback is None:
            with contextlib.suppress(OSError, AttributeError):
                self._writeback = EarlyWriteback(self._fd, os.lseek(self._fd, 0, os.SEEK_CUR))

    def close(self) -> None:
        """Write what is left (the tail buffered) and wait for it; raise a write error."""
        if not self._failed:
            self._hand_over(last=True)
        self._stop()
        self._check()

    def abort(self) -> None:
        """Stop without writing what is left (the command failed: the output is dropped)."""
        self._stop()


def direct_output(out: BinaryIO) -> int | None:
    """The fd of `out` with O_DIRECT set, if it is a regular file at an aligned position
    whose file system takes the flag (Linux); else None (write it as before)."""
    fd = _regular_fd(out)
    if fd is None or not hasattr(os, "O_DIRECT") or not sys.platform.startswith("linux"):
        return None
    import fcntl

    try:
        out.flush()
        if os.lseek(fd, 0, os.SEEK_CUR) % DIRECT_ALIGN:
            return None
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if flags & os.O_APPEND:
            return None
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
    except (OSError, ValueError):
        return None  # EINVAL: this file system does not do O_DIRECT
    return fd


@contextlib.contextmanager
def read_ahead(f: BinaryIO, size: int) -> Iterator[ReadAhead]:
    r = ReadAhead(f, size)
    try:
        yield r
    finally:
        r.close()


@contextlib.contextmanager
def write_behind(out: BinaryIO, size: int, *, direct: bool = False) -> Iterator[WriteBehind | DirectWriteBehind]:
    """A writer for `out` taking buffers of `size` bytes. With `direct` (a new regular
    file of the command's own, never stdout: its flags are the caller's) O_DIRECT is
    tried first (`DirectWriteBehind`); else, or where refused, the page cache as before."""
    fd = direct_output(out) if direct else None
    if fd is None:
        w = WriteBehind(out, size)
        try:
            yield w
        finally:
            w.close()
        return
    d = DirectWriteBehind(fd, size)
    try:
        yield d
    except BaseException:
        d.abort()
        raise
    d.close()


def _regular_fd(f) -> int | None:
    try:
        fd = f.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (OSError, ValueError, AttributeError):
        return None


def _advise_sequential(f) -> None:
    fd = _regular_fd(f)
    if fd is not None and hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # a larger read-ahead window
