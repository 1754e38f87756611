"""Open files whose last name is gone: where they wait for their last close.

POSIX lets a program go on using a file it has open after the file was unlinked:
`fstat` gives a link count of 0, `fchmod` works, reads and writes work. High-level
libfuse names every file by its path, and a path-less file cannot be asked about
(`fstat` and `fchmod` reach the file system by path, not by handle): with libfuse's
`hard_remove` they fail with ESTALE. So the mount runs without it, and libfuse renames
an open file that is being unlinked (or renamed over) to `.fuse_hiddenXXXXXXXXYYYYYYYY`
in the same directory, and unlinks that name at the last close.

Such a name would show in `ls` and keep its directory from being removed. Here every
name beginning with `.fuse_hidden`, in whichever directory, maps to one flat backing
directory at the top of the cipher directory, `.keyhold-unlinked/`, which the mount
hides. libfuse's names are unique within a mount (node id and counter), so the flat
directory holds no clashes; a mount empties it at start (files left by a crash).

A hidden name is found only at the path libfuse made it (not in every directory), so
an unlinked file stays out of reach of whoever could not reach it before. A name in
the trash is not a name of the file: the link count the mount shows is the backing one
minus the file's names in `.keyhold-unlinked/`.
"""

from __future__ import annotations

import logging
import os
import threading

from fsmount.dirfd import Backing
from fsmount.handles import Inode

log = logging.getLogger("fsmount")

HIDDEN_PREFIX = ".fuse_hidden"  # libfuse's names for open files being removed
TRASH = ".keyhold-unlinked"


def is_hidden(path: str) -> bool:
    return path.rpartition("/")[2].startswith(HIDDEN_PREFIX)


def trash_path(path: str) -> str:
    """The backing (mount-relative) path of libfuse's hidden name `path`."""
    return f"/{TRASH}/{path.rpartition('/')[2]}"


class Unlinked:
    """Which inodes have names in the trash directory (for st_nlink and the last close)."""

    def __init__(self, backing: Backing) -> None:
        self._names: dict[Inode, set[str]] = {}
        self._where: dict[str, str] = {}  # hidden mount path -> its trash name
        self._lock = threading.Lock()
        self._backing = backing
        self._prepare(backing)

    @staticmethod
    def _prepare(backing: Backing) -> None:
        """Create the trash directory, or empty it of what a crashed mount left."""
        try:
            os.mkdir(TRASH, 0o700, dir_fd=backing.fd)
            return
        except FileExistsError:
            pass
        except OSError as e:  # a read-only cipher dir: nothing can be unlinked anyway
            log.debug("no %s in the cipher directory: %s", TRASH, e.strerror)
            return
        try:
            fd = os.open(TRASH, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=backing.fd)
        except OSError as e:
            log.warning("cannot open %s in the cipher directory: %s", TRASH, e.strerror)
            return
        try:
            left = [e.name for e in os.scandir(fd)]
            for name in left:
                try:
                    os.unlink(name, dir_fd=fd)
                except OSError:
                    pass  # only libfuse puts files here: leave anything else alone
            if left:
                log.info("removed %d unlinked file(s) a previous mount left open", len(left))
        finally:
            os.close(fd)

    def lookup(self, path: str) -> str | None:
        """The trash name of hidden mount path `path`, if libfuse made it there.

        Only there: the flat trash directory must not make an unlinked file reachable
        through another directory than the one it was unlinked from.
        """
        return self._where.get(path)

    def added(self, inode: Inode, path: str) -> None:
        with self._lock:
            self._names.setdefault(inode, set()).add(trash_path(path))
            self._where[path] = trash_path(path)

    def removed(self, inode: Inode, path: str) -> None:
        with self._lock:
            self._where.pop(path, None)
            names = self._names.get(inode)
            if names is not None:
                names.discard(trash_path(path))
                if not names:
                    del self._names[inode]

    def renamed(self, old: str, new: str) -> None:
        """Directory `old` is `new` now: the hidden names below it moved with it."""
        if not self._where:
            return
        below = old + "/"
        with self._lock:
            for path in [p for p in self._where if p.startswith(below)]:
                self._where[new + path[len(old):]] = self._where.pop(path)

    def hidden_links(self, inode: Inode) -> int:
        names = self._names.get(inode) if self._names else None
        return len(names) if names else 0

    def closed(self, inode: Inode) -> None:
        """The inode's last handle is closed: remove its trash names.

        libfuse does that itself, by the hidden name, unless it lost the name's path
        (its directory was removed meanwhile); then this is the only removal.
        """
        with self._lock:
            names = self._names.pop(inode, None)
            for path in [p for p, t in self._where.items() if t in (names or ())]:
                del self._where[path]
        for bpath in names or ():
            try:
                os.unlink(bpath.lstrip("/"), dir_fd=self._backing.fd)
            except FileNotFoundError:
                pass
