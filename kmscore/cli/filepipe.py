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

A chunk is filled completely unless the input ends, so chunks hold whole frames and the
only partial one is the last: the command seals a chunk once it knows whether another
follows (the last frame of the stream is marked final).
"""

from __future__ import annotations

import contextlib
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


class WriteBehind:
    """Writes filled buffers in a thread; `buffer()` hands out a free one (waiting while
    all are in flight). A write error surfaces on the next call."""

    def __init__(self, out: BinaryIO, size: int, count: int = OUT_BUFFERS) -> None:
        self._out = out
        self._free: queue.Queue = queue.Queue()
        for _ in range(count):
            self._free.put(bytearray(size))
        self._q: queue.Queue = queue.Queue()
        self._failed: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="kms-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        writeback = EarlyWriteback.of(self._out)
        while (item := self._q.get()) is not None:
            buf, n = item
            if not self._failed:
                try:
                    self._out.write(memoryview(buf)[:n] if isinstance(buf, bytearray) else buf)
                    if writeback is not None:
                        writeback.wrote(n)
                except BaseException as e:
                    self._failed.append(e)
            if isinstance(buf, bytearray):
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

    def _check(self) -> None:
        if self._failed:
            raise self._failed[0]

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
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


@contextlib.contextmanager
def read_ahead(f: BinaryIO, size: int) -> Iterator[ReadAhead]:
    r = ReadAhead(f, size)
    try:
        yield r
    finally:
        r.close()


@contextlib.contextmanager
def write_behind(out: BinaryIO, size: int) -> Iterator[WriteBehind]:
    w = WriteBehind(out, size)
    try:
        yield w
    finally:
        w.close()


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
