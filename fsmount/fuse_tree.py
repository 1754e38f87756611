"""FUSE operations on names: directories, unlink, rename (with renameat2 flags), links.

These are passthroughs to the backing directory, except that the cipher directory's
config file is hidden and protected, and `rename` honours RENAME_NOREPLACE and
RENAME_EXCHANGE atomically (via renameat2) instead of silently dropping them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from typing import Any

from fsmount.cipherdir import CONFIG_NAME
from fsmount.fs_base import FsBase, inode_of
from fsmount.openfile import fs_error

RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def renameat2(old: str, new: str, flags: int) -> None:
    if _renameat2 is None:
        raise fs_error(errno.EINVAL)
    if _renameat2(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new), flags) != 0:
        raise fs_error(ctypes.get_errno())


class TreeOps(FsBase):
    # -- directories ---------------------------------------------------------------------
    def mkdir(self, path: str, mode: int) -> None:
        real = self.real(path)
        os.mkdir(real, mode & 0o7777)
        self.own(real, mode=mode & 0o7777)

    def rmdir(self, path: str) -> None:
        os.rmdir(self.real(path))

    def opendir(self, path: str) -> int:
        return os.open(self.real(path), os.O_RDONLY | os.O_DIRECTORY)

    def readdir(self, path: str | None, fh: int) -> list[Any]:
        entries: list[Any] = [(".", None, 0), ("..", None, 0)]
        top = os.fstat(fh).st_ino == os.stat(self.root).st_ino
        with os.scandir(fh) as it:
            for e in it:
                if top and e.name == CONFIG_NAME:
                    continue
                entries.append((e.name, {"st_mode": _kind(e), "st_ino": e.inode()}, 0))
        return entries

    def releasedir(self, path: str | None, fh: int) -> None:
        os.close(fh)

    # -- names ---------------------------------------------------------------------------
    def unlink(self, path: str) -> None:
        real = self.real(path)
        st = os.lstat(real)
        os.unlink(real)
        self.forget_inode(st)
        if st.st_nlink > 1:
            self.links.changed(inode_of(st), gone=path)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise fs_error(errno.EINVAL)  # RENAME_WHITEOUT and nonsense combinations
        old_real, new_real = self.real(old), self.real(new)
        try:
            replaced = None if flags else os.lstat(new_real)
        except FileNotFoundError:
            replaced = None
        if flags:
            renameat2(old_real, new_real, flags)
        else:
            os.rename(old_real, new_real)
        if not flags & RENAME_EXCHANGE:
            self.links.renamed(old, new)
            self.handles.renamed(old, new)
        if replaced is not None:
            self.forget_inode(replaced)
        if replaced is not None and replaced.st_nlink > 1:
            self.links.changed(inode_of(replaced), gone=new)

    def link(self, target: str, source: str) -> None:
        """Hard link: the new name `target` for the existing `source` (shares one envelope)."""
        real = self.real(source)
        os.link(real, self.real(target), follow_symlinks=False)
        inode = inode_of(os.lstat(real))
        self.links.add(inode, source, target)
        self.links.changed(inode)  # the other names' cached link count is stale now

    def symlink(self, target: str, source: str) -> None:
        """Create the symlink `target` pointing at `source` (stored as is: names are plain)."""
        real = self.real(target)
        os.symlink(source, real)
        self.own(real)

    def readlink(self, path: str) -> str:
        return os.readlink(self.real(path))

    def mknod(self, path: str, mode: int, dev: int) -> None:
        """Regular files (an empty envelope), FIFOs and sockets; device nodes are refused."""
        if stat.S_ISREG(mode):
            self.release(None, self.create(path, mode, os.O_WRONLY))  # type: ignore[attr-defined]
            return
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            raise fs_error(errno.EPERM)
        real = self.real(path)
        os.mknod(real, mode, dev)
        self.own(real, mode=mode & 0o7777)


def _kind(e: os.DirEntry) -> int:
    """File type bits of a directory entry, from d_type when the kernel gave it."""
    if e.is_symlink():
        return stat.S_IFLNK
    if e.is_dir(follow_symlinks=False):
        return stat.S_IFDIR
    if e.is_file(follow_symlinks=False):
        return stat.S_IFREG
    return stat.S_IFMT(e.stat(follow_symlinks=False).st_mode)
