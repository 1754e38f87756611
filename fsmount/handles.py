"""Open-file handles: FUSE file handle numbers -> shared `OpenFile` per backing inode.

Two opens of one file (through one name or two hard links) share one `OpenFile`, so
they see one size and one unwritten tail; `getattr` asks here for the size of files
that are open, because their backing file may lag behind by the tail.
"""

from __future__ import annotations

import errno
import itertools
import threading
from collections.abc import Callable

from fsmount.openfile import OpenFile, fs_error

Inode = tuple[int, int]  # (st_dev, st_ino) of the backing file


class Handles:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_fh: dict[int, OpenFile] = {}
        self._by_inode: dict[Inode, OpenFile] = {}
        self._inode_of: dict[int, Inode] = {}
        self._numbers = itertools.count(1)

    def acquire(self, inode: Inode, make: Callable[[], OpenFile]) -> tuple[int, OpenFile]:
        """A new handle on the inode's `OpenFile`, made by `make()` if it is not open."""
        with self._lock:
            f = self._by_inode.get(inode)
            if f is None:
                f = make()
                self._by_inode[inode] = f
            f.refs += 1
            fh = next(self._numbers)
            self._by_fh[fh] = f
            self._inode_of[fh] = inode
            return fh, f

    def get(self, fh: int) -> OpenFile:
        f = self._by_fh.get(fh)
        if f is None:
            raise fs_error(errno.EBADF)
        return f

    def snapshot(self) -> list[OpenFile]:
        with self._lock:
            return list(self._by_inode.values())

    def renamed(self, old: str, new: str) -> None:
        """Keep open files' names (used in logs and cache invalidation) current."""
        for f in self.snapshot():
            if f.name == old or f.name.startswith(old + "/"):
                f.name = new + f.name[len(old):]

    def inode(self, fh: int) -> Inode | None:
        return self._inode_of.get(fh)

    def by_inode(self, inode: Inode) -> OpenFile | None:
        return self._by_inode.get(inode)

    def release(self, fh: int) -> None:
        """Drop a handle; the last one closes the file (writing its tail)."""
        with self._lock:
            f = self._by_fh.pop(fh, None)
            inode = self._inode_of.pop(fh, None)
            if f is None:
                return
            f.refs -= 1
            if f.refs:
                return
            del self._by_inode[inode]
            f.close()  # under the lock: a new open must find the tail on disk

    def close_all(self) -> None:
        """On unmount: write every tail and close every backing file."""
        with self._lock:
            for f in self._by_inode.values():
                f.close()
            self._by_fh.clear()
            self._by_inode.clear()
            self._inode_of.clear()
