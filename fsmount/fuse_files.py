"""FUSE operations on file contents: create, open, read, write, truncate, flush, fsync,
fallocate; and the times of open files.

Each call translates into `OpenFile` (frame math and crypto live there and in
`layout`); this module only opens backing files and keeps handles.
"""

from __future__ import annotations

import errno
import os

from kmscore.envelope import EnvelopeError

from fsmount.fs_base import FsBase, inode_of, log, read_header
from fsmount.layout import Layout
from fsmount.openfile import OpenFile, fs_error

_ACCESS = os.O_ACCMODE | os.O_APPEND | os.O_TRUNC | os.O_CREAT | os.O_EXCL


class FileOps(FsBase):
    def create(self, path: str, mode: int, flags: int) -> int:
        bpath = self.new_name(path)
        label = self.log_name(path, bpath)
        try:
            # the key first (it may take a KMS call), so that the header is written right
            # after the create: a kill -9 in between leaves an empty backing file, which
            # fsck --repair makes a valid empty file again
            header, cipher = self.keys.new(label)
            fd = self.backing.open(bpath, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode & 0o7777)
        except FileExistsError:  # raced with another creator: open what is there
            return self.open(path, flags & ~(os.O_CREAT | os.O_EXCL))
        except BaseException:
            self.names.tidy(bpath)
            raise
        try:
            f = OpenFile.created(fd, header, cipher, path, self.keys.checker(header, label), label)
            self.own(bpath, fd, mode & 0o7777)
        except BaseException:
            os.close(fd)
            with self.backing.at(bpath) as (d, name):
                os.unlink(name, dir_fd=d)
            self.names.tidy(bpath)
            raise
        inode = inode_of(os.fstat(fd))
        self.remember_geometry(inode, f.layout)
        fh, _ = self.handles.acquire(inode, lambda: f)
        return fh

    def open(self, path: str, flags: int) -> int:
        bpath = self.backing_path(path)
        try:
            fd = self.backing.open(bpath, os.O_RDWR | os.O_NOFOLLOW)
        except PermissionError:  # a read-only backing file (user mount): reads still work
            fd = self.backing.open(bpath, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            inode = inode_of(st)
            # the length is read under the handles' lock, in make(): a release of the last
            # handle may be writing the tail (or settling an end marker) right now
            label = self.log_name(path, bpath)
            fh, f = self.handles.acquire(inode, lambda: self._load(fd, path, os.fstat(fd).st_size, label))
        except BaseException:
            os.close(fd)
            raise
        if f.fd != fd:
            os.close(fd)  # the file was open already: share its state
        if flags & os.O_TRUNC and f.size:
            try:
                f.truncate(0)
            except BaseException:
                self.handles.release(fh)
                raise
        return fh

    def _load(self, fd: int, path: str, backing_length: int, label: str) -> OpenFile:
        try:
            header = read_header(fd)
        except EnvelopeError as e:
            log.error("integrity: %s: not a valid envelope: %s", label, e)
            raise fs_error(errno.EIO) from None
        if Layout(header.size, header.frame_size).plaintext_size(backing_length) is None:
            log.error("integrity: %s: backing file length %d fits no envelope (truncated)", label, backing_length)
            raise fs_error(errno.EIO)
        cipher = self.keys.open(header, label)
        return OpenFile.opened(fd, header, cipher, backing_length, path, self.keys.checker(header, label), label)

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return self.handles.get(fh).read(offset, size)

    def read_into(self, size: int, offset: int, fh: int, out: memoryview) -> int:
        """`read` into the kernel's buffer (used by KeyholdFUSE)."""
        return self.handles.get(fh).read_into(offset, size, out)

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        return self.handles.get(fh).write(offset, data)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> None:
        if fh is not None:
            self.handles.get(fh).truncate(length)
            inode = self.handles.inode(fh)
        else:
            st = self.backing.lstat(self.backing_path(path))
            inode = inode_of(st)
            f = self.handles.by_inode(inode)
            if f is not None:
                f.truncate(length)
            else:
                fh = self.open(path, os.O_WRONLY)
                try:
                    self.handles.get(fh).truncate(length)
                finally:
                    self.handles.release(fh)
        if inode is not None and self.links.is_linked(inode):
            self.links.changed(inode)  # other names' cached size and times are stale

    def flush(self, path: str | None, fh: int) -> None:
        self.handles.get(fh).flush()
        inode = self.handles.inode(fh)
        if inode is not None and self.links.is_linked(inode):
            self.links.changed(inode)  # other names of the file must see what was written

    def fsync(self, path: str | None, datasync: int, fh: int) -> None:
        self.handles.get(fh).fsync(bool(datasync))

    def release(self, path: str | None, fh: int) -> None:
        inode = self.handles.inode(fh)
        self.handles.release(fh)
        if inode is not None and self.unlinked.hidden_links(inode) and self.handles.by_inode(inode) is None:
            self.unlinked.closed(inode)

    def fallocate(self, path: str | None, mode: int, offset: int, length: int, fh: int) -> None:
        self.handles.get(fh).fallocate(mode, offset, length)

    def utimens(self, path: str | None, times, fh: int | None = None) -> None:
        """Set times (AttrOps); on an open file they must outlive the write of its tail."""
        super().utimens(path, times, fh)  # type: ignore[misc]  # AttrOps, next in KeyholdFS's MRO
        f = self.handles.get(fh) if fh is not None else self.handles.by_inode(inode_of(self.backing.lstat(self.backing_path(path))))
        if f is not None:
            f.keep_times()
