"""Keeping the kernel's view of hard-linked files right.

High-level libfuse gives every *name* its own kernel inode, so when one name of a
hard-linked file is linked, unlinked or written, the kernel's cached attributes (link
count, size) and pages of the file's other names go stale until they time out. We
remember the names of inodes with more than one link as `getattr` sees them, and tell
the kernel to forget what it cached for them (`fuse_invalidate_path`) after any change.
"""

from __future__ import annotations

import ctypes
import threading

from fsmount.handles import Inode
from fsmount.libfuse import mfusepy

_lib = mfusepy._libfuse
_lib.fuse_invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_lib.fuse_invalidate_path.restype = ctypes.c_int


class HardLinks:
    def __init__(self) -> None:
        self._names: dict[Inode, set[str]] = {}
        self._lock = threading.Lock()
        self._fuse: int | None = None  # struct fuse *, known once the mount is up

    def attach(self) -> None:
        """Call from a FUSE callback (init): remember this mount's `struct fuse *`."""
        self._fuse = _lib.fuse_get_context().contents.fuse

    def seen(self, inode: Inode, path: str, nlink: int) -> None:
        if nlink > 1 or inode in self._names:
            with self._lock:
                names = self._names.setdefault(inode, set())
                if nlink > 1:
                    names.add(path)
                elif len(names) <= 1:
                    del self._names[inode]

    def add(self, inode: Inode, *paths: str) -> None:
        with self._lock:
            self._names.setdefault(inode, set()).update(paths)

    def is_linked(self, inode: Inode) -> bool:
        return inode in self._names

    def changed(self, inode: Inode, gone: str | None = None) -> None:
        """The inode changed (link count, size, data): drop the kernel's cache of its names."""
        with self._lock:
            names = self._names.get(inode)
            if not names:
                return
            names.discard(gone)  # type: ignore[arg-type]
            paths = list(names)
        if self._fuse is None:
            return
        for path in paths:
            _lib.fuse_invalidate_path(self._fuse, path.encode("utf-8", "surrogateescape"))

    def renamed(self, old: str, new: str) -> None:
        with self._lock:
            for names in self._names.values():
                if old in names:
                    names.discard(old)
                    names.add(new)
