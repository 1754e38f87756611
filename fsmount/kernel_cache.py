"""Telling the kernel to forget what it cached: for hard links and for revoked keys.

High-level libfuse gives every *name* its own kernel inode, so when one name of a
hard-linked file is linked, unlinked or written, the kernel's cached attributes (link
count, size) and pages of the file's other names go stale until they time out. We
remember the names of inodes with more than one link as `getattr` sees them, and tell
the kernel to forget what it cached for them (`fuse_invalidate_path`) after any change.

Pages of open files are cached too, and a read served from the page cache never
reaches us: when a CMK is revoked, `revocation` makes the kernel forget those pages so
that the next read asks us, and fails.
"""

from __future__ import annotations

import ctypes
import threading

from fsmount.handles import Inode
from fsmount.libfuse import mfusepy

_lib = mfusepy._libfuse
_lib.fuse_invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_lib.fuse_invalidate_path.restype = ctypes.c_int


class KernelCache:
    """The mount's handle for cache invalidation (`struct fuse *`, known once mounted)."""

    def __init__(self) -> None:
        self._fuse: int | None = None

    def attach(self) -> None:
        """Call from a FUSE callback (init)."""
        self._fuse = _lib.fuse_get_context().contents.fuse

    def forget(self, path: str) -> None:
        """Drop the kernel's cached attributes and pages of the file at `path`."""
        if self._fuse is not None:
            _lib.fuse_invalidate_path(self._fuse, path.encode("utf-8", "surrogateescape"))


class HardLinks:
    def __init__(self, kernel: KernelCache) -> None:
        self._names: dict[Inode, set[str]] = {}
        self._lock = threading.Lock()
        self._kernel = kernel

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
        for path in paths:
            self._kernel.forget(path)

    def renamed(self, old: str, new: str) -> None:
        """`old` (a file, or a directory with linked files below it) is `new` now."""
        if not self._names:
            return
        below = old + "/"
        with self._lock:
            for names in self._names.values():
                moved = [n for n in names if n == old or n.startswith(below)]
                for n in moved:
                    names.discard(n)
                    names.add(new + n[len(old):])
