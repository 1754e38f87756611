"""FUSE operations on attributes: getattr, chmod, chown, utimens, statfs.

Attributes are the backing file's, with two exceptions: st_size is the plaintext size,
and st_ino is the backing inode number (the mount runs with use_ino), so inode numbers
and link counts stay right across link, rename and unlink.
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
        real = self.real(path)
        st = os.lstat(real)
        if stat.S_ISREG(st.st_mode):
            self.links.seen(inode_of(st), path, st.st_nlink)
        return self.attrs(st, self.plaintext_size(real, st))

    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> None:
        if fh is not None:
            os.fchmod(self.handles.get(fh).fd, mode & 0o7777)
        else:
            os.chmod(self.real(path), mode & 0o7777, follow_symlinks=False)

    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> None:
        if fh is not None:
            os.fchown(self.handles.get(fh).fd, uid, gid)
        else:
            os.chown(self.real(path), uid, gid, follow_symlinks=False)

    def utimens(self, path: str | None, times: tuple[TimeSpec, TimeSpec] | None, fh: int | None = None) -> None:
        target: int | str = self.handles.get(fh).fd if fh is not None else self.real(path)
        if times is None:
            os.utime(target, follow_symlinks=isinstance(target, int))
            return
        if "omit" in times:
            st = os.stat(target) if isinstance(target, int) else os.lstat(target)
            current = (st.st_atime_ns, st.st_mtime_ns)
        now = time.time_ns()
        ns = tuple(
            now if t == "now" else current[i] if t == "omit" else t  # type: ignore[misc]
            for i, t in enumerate(times)
        )
        if isinstance(target, int):
            os.utime(target, ns=ns)
        else:
            os.utime(target, ns=ns, follow_symlinks=False)

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self.root)
        return {k: getattr(sv, k) for k in (
            "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail", "f_namemax"
        )}
