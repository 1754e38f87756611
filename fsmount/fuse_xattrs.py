"""FUSE operations on extended attributes, by namespace (a rule table).

| namespace    | on the mount                                                          |
|--------------|-----------------------------------------------------------------------|
| `user.*`     | stored as the backing file's `user.*` attribute, value sealed (xattrs) |
| `trusted.*`  | refused (ENOTSUP): root-only names that overlayfs and others act on;  |
|              | stored on the backing file they would act on the ciphertext           |
| `security.*` | refused (ENOTSUP): no LSM labels, no file capabilities on the mount;  |
|              | reads answer "no such attribute" (the kernel asks for                 |
|              | security.capability on every write)                                   |
| `system.*`   | refused (ENOTSUP): no POSIX ACLs; permissions are the mode bits the   |
|              | kernel checks (default_permissions); reads answer "none"              |

With encrypted names (format 2) the backing attribute's name is encrypted too
(fsmount.names: `user.` + AES-SIV of the rest); names that do not decrypt are not listed.
The backing file's own attributes of other namespaces are never listed. A value that
fails to open (tampered, moved to another name, CMK revoked) is EIO or ENOKEY, logged
without the value. The kernel checks permissions before calling us: user.* needs
write permission to set, and is only allowed on regular files and directories.
"""

from __future__ import annotations

import errno
import os

from fsmount import xattrs
from fsmount.fs_base import FsBase, log
from fsmount.openfile import fs_error

ENOATTR = getattr(errno, "ENOATTR", errno.ENODATA)
SEALED = "sealed"
REFUSED = "refused"
NAMESPACES = {"user.": SEALED, "trusted.": REFUSED, "security.": REFUSED, "system.": REFUSED}


def rule(name: str) -> str:
    for prefix, what in NAMESPACES.items():
        if name.startswith(prefix):
            return what
    return REFUSED  # not a Linux namespace at all (the kernel refuses those itself)


class XattrOps(FsBase):
    def without_xattrs(self) -> None:
        """Leave the xattr calls out of the mount: libfuse answers ENOSYS, after which the
        kernel answers ENOTSUP itself and stops asking (no round trip before each write)."""
        for name in ("setxattr", "getxattr", "listxattr", "removexattr"):
            setattr(self, name, None)

    def _xattr_target(self, path: str) -> tuple[int, str]:
        """An O_PATH fd of the backing file and its /proc name (xattr calls take no dir fd)."""
        fd = self.backing.open(self.backing_path(path), os.O_PATH | os.O_NOFOLLOW)
        return fd, f"/proc/self/fd/{fd}"

    def _stored_name(self, name: str) -> str:
        """The backing name of an attribute being read or removed: one too long to have
        been set (ERANGE when setting) is simply not there."""
        try:
            return self.names.xattr_in(name)
        except OSError as e:
            if e.errno == errno.ERANGE:
                raise fs_error(ENOATTR) from None
            raise

    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> None:
        if rule(name) != SEALED:
            raise fs_error(errno.ENOTSUP)
        if len(value) > xattrs.XATTR_SIZE_MAX:
            raise fs_error(errno.E2BIG)
        header, cipher = self.keys.new(self.xattr_log_name(path, name), xattrs.FRAME_SIZE)
        stored = xattrs.seal(header, cipher, name, value)
        if len(stored) > xattrs.XATTR_SIZE_MAX:
            raise fs_error(errno.E2BIG)  # the value with its envelope does not fit
        fd, proc = self._xattr_target(path)
        try:
            os.setxattr(proc, self.names.xattr_in(name), stored, options)
        finally:
            os.close(fd)

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if rule(name) != SEALED:
            raise fs_error(ENOATTR)
        stored_name = self._stored_name(name)
        fd, proc = self._xattr_target(path)
        try:
            stored = os.getxattr(proc, stored_name)
        finally:
            os.close(fd)
        label = self.xattr_log_name(path, name)
        try:
            header = xattrs.header_of(stored)
            return xattrs.open_value(header, self.keys.open(header, label), name, stored)
        except xattrs.XattrFormatError as e:
            log.error("integrity: extended attribute %s: %s", label, e)
            raise fs_error(errno.EIO) from None

    def listxattr(self, path: str) -> list[str]:
        fd, proc = self._xattr_target(path)
        try:
            names = os.listxattr(proc)
        finally:
            os.close(fd)
        shown = (self.names.xattr_out(n) for n in names if rule(n) == SEALED)
        return [n for n in shown if n is not None]

    def removexattr(self, path: str, name: str) -> None:
        if rule(name) != SEALED:
            raise fs_error(errno.ENOTSUP)
        stored_name = self._stored_name(name)
        fd, proc = self._xattr_target(path)
        try:
            os.removexattr(proc, stored_name)
        finally:
            os.close(fd)
