"""FUSE operations on names: directories, unlink, rename (with renameat2 flags), links.

These are passthroughs to the backing directory (relative to directory fds, see
fsmount.dirfd) through the cipher directory's name mapping (fsmount.name_map: names,
symlink targets, directories' values, long-name side files), except that the cipher directory's config file and its directory of
unlinked open files are hidden and protected, libfuse's hidden names map into that
directory (fsmount.unlinked), and `rename` honours RENAME_NOREPLACE and RENAME_EXCHANGE
atomically (via renameat2) instead of silently dropping them.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

from fsmount.dirfd import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2
from fsmount.fs_base import HIDDEN_TOP, FsBase, inode_of
from fsmount.openfile import fs_error
from fsmount.unlinked import is_hidden, trash_path

__all__ = ["TreeOps", "RENAME_NOREPLACE", "RENAME_EXCHANGE", "renameat2"]


class TreeOps(FsBase):
    # -- directories ---------------------------------------------------------------------
    def mkdir(self, path: str, mode: int) -> None:
        bpath = self.new_name(path)
        try:
            self.names.mkdir(bpath, mode)
        except BaseException:
            self.names.tidy(bpath)
            raise
        self.own(bpath, mode=mode & 0o7777)

    def rmdir(self, path: str) -> None:
        bpath = self.backing_path(path)
        try:
            self.names.rmdir(bpath)
        finally:
            self.names.forget(path)
        self.names.tidy(bpath)

    def opendir(self, path: str) -> int:
        return self.backing.open(self.backing_path(path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)

    def readdir(self, path: str | None, fh: int) -> list[Any]:
        entries: list[Any] = [(".", None, 0), ("..", None, 0)]
        top = os.path.samestat(os.fstat(fh), os.fstat(self.backing.fd))
        for name, e in self.names.entries(fh, top, HIDDEN_TOP):
            entries.append((name, {"st_mode": _kind(e), "st_ino": e.inode()}, 0))
        return entries

    def releasedir(self, path: str | None, fh: int) -> None:
        os.close(fh)

    # -- names ---------------------------------------------------------------------------
    def unlink(self, path: str) -> None:
        bpath = self.backing_path(path)
        with self.backing.at(bpath) as (d, name):
            st = os.stat(name, dir_fd=d, follow_symlinks=False)
            last_link = os.readlink(name, dir_fd=d) if stat.S_ISLNK(st.st_mode) and st.st_nlink == 1 else None
            os.unlink(name, dir_fd=d)
        self.names.tidy(bpath)
        if last_link is not None:
            self.names.drop_target(last_link)
        inode = inode_of(st)
        if is_hidden(path):
            self.unlinked.removed(inode, path)  # libfuse: the last close of an unlinked file
        self.forget_inode(st)
        if st.st_nlink > 1:
            self.links.changed(inode, gone=path)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise fs_error(errno.EINVAL)  # RENAME_WHITEOUT and nonsense combinations
        old_b = self.backing_path(old)
        new_b = trash_path(new) if is_hidden(new) else self.new_name(new)  # libfuse hides an open file
        try:
            with self.backing.at(old_b) as (od, on), self.backing.at(new_b) as (nd, nn):
                moved = os.stat(on, dir_fd=od, follow_symlinks=False)
                try:
                    replaced = None if flags & RENAME_EXCHANGE else os.stat(nn, dir_fd=nd, follow_symlinks=False)
                except FileNotFoundError:
                    replaced = None
                last_link = None  # a symlink whose last name the rename replaces
                if replaced is not None and stat.S_ISLNK(replaced.st_mode) and replaced.st_nlink == 1 \
                        and not os.path.samestat(moved, replaced):
                    last_link = os.readlink(nn, dir_fd=nd)
                try:
                    if flags:
                        renameat2(od, on, nd, nn, flags)
                    else:
                        self._rename(on, od, nn, nd, new_b, moved, replaced)
                finally:  # directories' cached backing paths, both ways for an exchange
                    if stat.S_ISDIR(moved.st_mode) or (replaced is not None and stat.S_ISDIR(replaced.st_mode)) \
                            or flags & RENAME_EXCHANGE:
                        self.names.forget(old)
                        self.names.forget(new)
        except BaseException:
            self.names.tidy(new_b)
            raise
        self.names.tidy(old_b)
        if last_link is not None:
            self.names.drop_target(last_link)
        if replaced is not None and os.path.samestat(moved, replaced):
            return  # rename onto another name of the same file: POSIX says do nothing
        if replaced is not None and is_hidden(new):
            self.unlinked.removed(inode_of(replaced), new)
        self._account_hidden(old, new, inode_of(moved))
        if not flags & RENAME_EXCHANGE:
            self.links.renamed(old, new)
            self.handles.renamed(old, new)
            self.unlinked.renamed(old, new)
        if moved.st_nlink > 1 and not stat.S_ISDIR(moved.st_mode):
            # the other names' cached ctime (and, when libfuse hid this one, link count)
            self.links.changed(inode_of(moved), gone=old if is_hidden(new) else None)
        if replaced is not None:
            self.forget_inode(replaced)
            if replaced.st_nlink > 1:
                self.links.changed(inode_of(replaced), gone=new)

    def _rename(self, on: str, od: int, nn: str, nd: int, new_b: str, moved, replaced) -> None:
        """rename(2); a directory over an empty one whose backing directory holds only its
        value: that value is removed first (the backing rename would fail ENOTEMPTY)."""
        try:
            os.rename(on, nn, src_dir_fd=od, dst_dir_fd=nd)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or replaced is None or not stat.S_ISDIR(moved.st_mode) \
                    or not stat.S_ISDIR(replaced.st_mode) or not self.names.empty_dir(new_b):
                raise
            self.names.rmdir(new_b)
            os.rename(on, nn, src_dir_fd=od, dst_dir_fd=nd)

    def _account_hidden(self, old: str, new: str, inode) -> None:
        """Names moving into or out of the trash directory change the shown link count."""
        into, out_of = is_hidden(new), is_hidden(old)
        if into:
            self.unlinked.added(inode, new)
        if out_of:
            self.unlinked.removed(inode, old)

    def link(self, target: str, source: str) -> None:
        """Hard link: the new name `target` for the existing `source` (shares one envelope)."""
        src_b, dst_b = self.backing_path(source), self.new_name(target)
        try:
            with self.backing.at(src_b) as (sd, sn), self.backing.at(dst_b) as (dd, dn):
                os.link(sn, dn, src_dir_fd=sd, dst_dir_fd=dd, follow_symlinks=False)
                inode = inode_of(os.stat(sn, dir_fd=sd, follow_symlinks=False))
        except BaseException:
            self.names.tidy(dst_b)
            raise
        self.links.add(inode, source, target)
        self.links.changed(inode)  # the other names' cached link count is stale now

    def symlink(self, target: str, source: str) -> None:
        """Create the symlink `target` pointing at `source` (encrypted with the names)."""
        bpath = self.new_name(target)
        stored = None
        try:
            stored = self.names.target_in(source)
            with self.backing.at(bpath) as (d, name):
                os.symlink(stored, name, dir_fd=d)
        except BaseException:
            self.names.tidy(bpath)
            if stored is not None:
                self.names.drop_target(stored)
            raise
        self.own(bpath)

    def readlink(self, path: str) -> str:
        return self.read_target(self.backing_path(path))

    def mknod(self, path: str, mode: int, dev: int) -> None:
        """Regular files (an empty envelope), FIFOs, sockets and, on a root mount, devices.

        Device nodes are stored as they are (as gocryptfs does): they are inert on a
        mount with `nodev`, which libfuse sets unless root asks for `-o dev`.
        """
        if stat.S_ISREG(mode):
            self.release(None, self.create(path, mode, os.O_WRONLY))  # type: ignore[attr-defined]
            return
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            raise fs_error(errno.EINVAL)
        bpath = self.new_name(path)
        try:
            with self.backing.at(bpath) as (d, name):
                os.mknod(name, mode, dev, dir_fd=d)
        except BaseException:
            self.names.tidy(bpath)
            raise
        self.own(bpath, mode=mode & 0o7777)


def _kind(e: os.DirEntry) -> int:
    """File type bits of a directory entry, from d_type when the kernel gave it."""
    if e.is_symlink():
        return stat.S_IFLNK
    if e.is_dir(follow_symlinks=False):
        return stat.S_IFDIR
    if e.is_file(follow_symlinks=False):
        return stat.S_IFREG
    return stat.S_IFMT(e.stat(follow_symlinks=False).st_mode)
