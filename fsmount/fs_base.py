"""What every group of FUSE operations shares: path mapping, ownership, attributes.

All name handling goes through `backing_path()` and `new_name()`, which hand the mount
path to the cipher directory's name mapping (fsmount.name_map: plain in format 1,
encrypted or deterministic in format 2), and every backing call is made through
`self.backing` (fsmount.dirfd), relative to directory fds, so depth is no limit.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from typing import Any

from kmscore.envelope import EnvelopeError, Header

from fsmount.cipherdir import CONFIG_NAME
from fsmount.dirfd import Backing
from fsmount.handles import Handles, Inode
from fsmount.kernel_cache import HardLinks, KernelCache
from fsmount.keys import FileKeys
from fsmount.layout import Layout
from fsmount.libfuse import mfusepy
from fsmount.name_map import PlainNames
from fsmount.openfile import fs_error
from fsmount.unlinked import TRASH, Unlinked, is_hidden

log = logging.getLogger("fsmount")

HEADER_PROBE = 4096  # bytes read to decode a header (the wrapped DEK is ~100 bytes)
GEOMETRY_CACHE = 100_000  # inodes whose header size and frame size we remember
HIDDEN_TOP = frozenset((CONFIG_NAME, TRASH))  # backing names at the top the mount never shows


def inode_of(st: os.stat_result) -> Inode:
    return (st.st_dev, st.st_ino)


def read_header(fd: int) -> Header:
    """Decode the envelope header of an open backing file."""
    buf = os.pread(fd, HEADER_PROBE, 0)
    return Header.decode(buf)


class FsBase:
    use_ns = True  # mfusepy: timestamps as integer nanoseconds
    flag_nullpath_ok = True  # calls on open files carry the handle, not a path
    flag_nopath = True

    def __init__(self, root: str, keys: FileKeys, names=None) -> None:
        """`names(backing)` makes the name mapping (default: plain names)."""
        self.root = os.path.abspath(root)
        self.backing = Backing(self.root)
        self.names: PlainNames = (names or PlainNames)(self.backing)
        self.unlinked = Unlinked(self.backing)
        self.keys = keys
        self.handles = Handles()
        self.kernel = KernelCache()
        self.links = HardLinks(self.kernel)
        self.running_as_root = os.geteuid() == 0
        # an inode's envelope geometry never changes while it lives (rewrap keeps the
        # header size; unlink and rename-over forget it), so stat needs no header read
        self._geometry: dict[Inode, Layout] = {}

    # -- names ---------------------------------------------------------------------------
    def backing_path(self, path: str) -> str:
        """The backing path (relative to the cipher dir) of a mount path.

        The config file and the directory of unlinked open files are not reachable;
        libfuse's hidden names of unlinked open files map into that directory.
        """
        if is_hidden(path):
            found = self.unlinked.lookup(path)
            if found is None:
                raise fs_error(errno.ENOENT)  # also libfuse's probe for a free hidden name
            return found
        if path[1:].partition("/")[0] in HIDDEN_TOP:
            raise fs_error(errno.EPERM)  # (encrypted names would not clash: kept alike for every format)
        return self.names.to_backing(path)

    def new_name(self, path: str) -> str:
        """The backing path for a name being created (a long encrypted name's side file
        is written now: undo with `names.tidy`); libfuse's hidden names are only ever
        made by rename, so creating one is refused."""
        if is_hidden(path):
            raise fs_error(errno.EPERM)
        if path[1:].partition("/")[0] in HIDDEN_TOP:
            raise fs_error(errno.EPERM)
        return self.names.create_name(path)

    def log_name(self, path: str, bpath: str | None = None) -> str:
        """How log lines and key errors name mount path `path`: the path itself with plain
        names; with encrypted names its backing path, which `kms fs info` maps back, so
        that a log (often shipped off the machine) never carries the names the cipher
        directory hides."""
        if not self.names.encrypted:
            return path
        if bpath is None:
            try:
                bpath = self.backing_path(path)
            except OSError:
                return "(a file whose backing path is not known)"
        return bpath

    def xattr_log_name(self, path: str, name: str) -> str:
        """`log_name` of an extended attribute: its stored (encrypted) name with encrypted names."""
        if not self.names.encrypted:
            return f"{path} ({name})"
        try:
            stored = self.names.xattr_in(name)
        except OSError:
            stored = "an attribute name too long to store"
        return f"{self.log_name(path)} ({stored})"

    # -- ownership -----------------------------------------------------------------------
    def own(self, bpath: str, fd: int | None = None, mode: int | None = None) -> None:
        """Give a new file to the calling user, as ext4 would (setgid dirs pass their gid).

        Only a root mount can; for a user's mount everything belongs to that user anyway.
        """
        if not self.running_as_root:
            return
        uid, gid, _pid = mfusepy.fuse_get_context()
        if uid == 0 and gid == 0:
            return  # root's own files: the backing file system already did it right
        parent = self.backing.parent_stat(bpath)
        if parent.st_mode & stat.S_ISGID:
            gid = parent.st_gid
        suid = mode is not None and mode & (stat.S_ISUID | stat.S_ISGID)
        if fd is not None:
            os.fchown(fd, uid, gid)
            if suid:
                os.fchmod(fd, mode)  # chown cleared them
            return
        with self.backing.at(bpath) as (d, name):
            os.chown(name, uid, gid, dir_fd=d, follow_symlinks=False)
            if suid:
                os.chmod(name, mode, dir_fd=d)  # type: ignore[arg-type]

    # -- attributes ----------------------------------------------------------------------
    def plaintext_size(self, bpath: str, st: os.stat_result) -> int:
        """st_size as the mount shows it: the plaintext size of a regular file, the
        plaintext target's length of a symlink."""
        if not stat.S_ISREG(st.st_mode):
            if stat.S_ISLNK(st.st_mode) and self.names.encrypted:
                try:
                    return len(os.fsencode(self.read_target(bpath)))
                except OSError:
                    return st.st_size
            return st.st_size
        inode = inode_of(st)
        f = self.handles.by_inode(inode)
        if f is not None:
            return f.size
        layout = self._geometry.get(inode)
        if layout is None:
            layout = self._read_geometry(bpath)
            if layout is None:
                return 0  # damaged files still list (and can be deleted); reading them fails
            self.remember_geometry(inode, layout)
        size = layout.plaintext_size(st.st_size)
        return 0 if size is None else size

    def remember_geometry(self, inode: Inode, layout: Layout) -> None:
        """Keep an inode's envelope geometry, known from a header just written or read,
        so that the stat the kernel sends after a new file is closed needs no header read."""
        if len(self._geometry) >= GEOMETRY_CACHE:
            self._geometry.clear()
        self._geometry[inode] = layout

    def read_target(self, bpath: str) -> str:
        """The plaintext target of the backing symlink `bpath`."""
        with self.backing.at(bpath) as (d, name):
            return self.names.target_out(os.readlink(name, dir_fd=d), bpath)

    def _read_geometry(self, bpath: str) -> Layout | None:
        try:
            fd = self.backing.open(bpath, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            header = read_header(fd)
            return Layout(header.size, header.frame_size)
        except (EnvelopeError, OSError):
            return None
        finally:
            os.close(fd)

    def forget_inode(self, st: os.stat_result) -> None:
        """The last name of a file is gone: its inode number may come back as another file."""
        if st.st_nlink <= 1:
            self._geometry.pop(inode_of(st), None)

    def attrs(self, st: os.stat_result, size: int) -> dict[str, Any]:
        """FUSE attributes: the backing file's, with the plaintext size, and without the
        names that unlinked open files have in the trash directory in the link count."""
        return {
            "st_mode": st.st_mode,
            "st_ino": st.st_ino,
            "st_nlink": st.st_nlink - self.unlinked.hidden_links(inode_of(st)),
            "st_uid": st.st_uid,
            "st_gid": st.st_gid,
            "st_rdev": st.st_rdev,
            "st_size": size,
            "st_blocks": st.st_blocks,
            "st_blksize": st.st_blksize,
            "st_atime": st.st_atime_ns,
            "st_mtime": st.st_mtime_ns,
            "st_ctime": st.st_ctime_ns,
        }
