"""FUSE operations on attributes: getattr, chmod, chown, utimens, statfs.

Attributes are the backing file's, with three exceptions: st_size is the plaintext
size, st_ino is the backing inode number (the mount runs with use_ino), so inode numbers
and link counts stay right across link, rename and unlink, and st_nlink does not count
the names unlinked open files keep in the cipher dir (fsmount.unlinked).

High-level libfuse gives each *name* a kernel inode of its own, so a change through
one name of a hard-linked file leaves the others' cached attributes stale: chmod,
chown and utimens tell the kernel to forget them (fsmount.kernel_cache).
"""

from __future__ import annotations

import os
import stat
import time
from typing import Any

from fsmount.fs_base import FsBase, inode_of

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

TimeSpec = int | str  # nanoseconds, or "now" / "omit"


class AttrOps(FsBase):
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        if fh is not None:
            f = self.handles.get(fh)
            return self.attrs(os.fstat(f.fd), f.size)
        bpath = self.backing_path(path)
        st = self.backing.lstat(bpath)
        if not stat.S_ISDIR(st.st_mode):
            self.links.seen(inode_of(st), path, st.st_nlink)
        return self.attrs(st, self.plaintext_size(bpath, st))

    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> None:
        if fh is not None:
            fd = self.handles.get(fh).fd
            os.fchmod(fd, mode & 0o7777)
            self._changed(None, os.fstat(fd))
            return
        with self.backing.at(self.backing_path(path)) as (d, name):
            os.chmod(name, mode & 0o7777, dir_fd=d, follow_symlinks=False)
            self._changed(path, os.stat(name, dir_fd=d, follow_symlinks=False))

    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> None:
        if fh is not None:
            fd = self.handles.get(fh).fd
            os.fchown(fd, uid, gid)
            self._changed(None, os.fstat(fd))
            return
        with self.backing.at(self.backing_path(path)) as (d, name):
            os.chown(name, uid, gid, dir_fd=d, follow_symlinks=False)
            self._changed(path, os.stat(name, dir_fd=d, follow_symlinks=False))

    def utimens(self, path: str | None, times: tuple[TimeSpec, TimeSpec] | None, fh: int | None = None) -> None:
        if fh is not None:
            fd = self.handles.get(fh).fd
            _utime(fd, None, times)
            self._changed(None, os.fstat(fd))
            return
        with self.backing.at(self.backing_path(path)) as (d, name):
            _utime(name, d, times)
            self._changed(path, os.stat(name, dir_fd=d, follow_symlinks=False))

    def _changed(self, path: str | None, st: os.stat_result) -> None:
        """Attributes of a file changed through one name: its other names' cached
        attributes (kernel inodes of their own in high-level libfuse) are stale now."""
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode) or self.links.is_linked(inode_of(st)):
            if path is not None:
                self.links.add(inode_of(st), path)
            self.links.changed(inode_of(st))

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self.root)
        return {k: getattr(sv, k) for k in (
            "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail", "f_namemax"
        )}


def _utime(target: int | str, dir_fd: int | None, times: tuple[TimeSpec, TimeSpec] | None) -> None:
    """utimensat of a name below `dir_fd` (never following a symlink), or futimens of an fd."""
    where = {} if dir_fd is None else {"dir_fd": dir_fd, "follow_symlinks": False}
    if times is None:
        os.utime(target, **where)
        return
    if "omit" in times:
        st = os.stat(target, **where)
        current = (st.st_atime_ns, st.st_mtime_ns)
    now = time.time_ns()
    ns = tuple(
        now if t == "now" else current[i] if t == "omit" else t  # type: ignore[misc]
        for i, t in enumerate(times)
    )
    os.utime(target, ns=ns, **where)  # type: ignore[arg-type]
