"""The file system: the groups of FUSE operations put together, and its libfuse binding.

`KeyholdFUSE` fixes what mfusepy's libfuse 3 binding drops: rename flags (so
renameat2 RENAME_EXCHANGE cannot silently replace a file), the file handle of
truncate/chmod/chown/utimens on open files, and UTIME_NOW/UTIME_OMIT.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import operator
import os
import struct
import threading
from dataclasses import dataclass

from fsmount.fuse_attrs import UTIME_NOW, UTIME_OMIT, AttrOps
from fsmount.fuse_files import FileOps
from fsmount.fuse_tree import TreeOps
from fsmount.fuse_xattrs import ENOATTR, XattrOps
from fsmount.libfuse import mfusepy
from fsmount.revocation import RevocationWatch

FUSE_CAP_WRITEBACK_CACHE = 1 << 16


@dataclass(frozen=True)
class CacheOptions:
    """Kernel caching. A single-user mount affords long timeouts: nothing but the mount
    changes the backing directory while it is mounted."""

    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    negative_timeout: float = 1.0
    kernel_cache: bool = False  # keep page cache across opens without checking
    auto_cache: bool = True  # keep it unless mtime/size changed (checked on open)
    max_background: int = 64  # async read-ahead requests in flight


class KeyholdFS(FileOps, TreeOps, AttrOps, XattrOps):
    """All FUSE operations of one mount."""

    cache = CacheOptions()

    def init_with_config(self, conn, config) -> None:
        self.kernel.attach()
        bound = self.keys.cache.revocation_bound
        self.watch = RevocationWatch(self.handles, self.keys, self.kernel, interval=min(1.0, max(0.1, bound / 2)))
        self.watch.start()
        c = self.cache
        if config is not None:
            config.use_ino = 1  # report backing inode numbers
            config.readdir_ino = 1
            config.hard_remove = 0  # unlinked open files keep a (hidden) name: see unlinked.py
            config.nullpath_ok = 1
            config.attr_timeout = c.attr_timeout
            config.entry_timeout = c.entry_timeout
            config.negative_timeout = c.negative_timeout
            config.kernel_cache = int(c.kernel_cache)
            config.auto_cache = int(c.auto_cache)
        if conn is not None and c.max_background:
            conn.max_background = c.max_background
            conn.congestion_threshold = c.max_background * 3 // 4

    def destroy(self, path: str) -> None:
        if hasattr(self, "watch"):
            self.watch.stop()
        self.handles.close_all()
        self.backing.close()


def _path(fuse: "KeyholdFUSE", path: bytes | None) -> str | None:
    return None if path is None else path.decode(fuse.encoding, fuse.errors)


def _fh(fip) -> int | None:
    return fip.contents.fh if fip else None


def _timespec(ts) -> int | str:
    if ts.tv_nsec == UTIME_NOW:
        return "now"
    if ts.tv_nsec == UTIME_OMIT:
        return "omit"
    return ts.tv_sec * 10**9 + ts.tv_nsec


log = logging.getLogger("fsmount")
_worker = threading.local()
_STAT_SIZE = ctypes.sizeof(mfusepy.c_stat)


def _view(buf, size: int) -> memoryview:
    """A writable memoryview of a libfuse buffer (valid during the callback only)."""
    return memoryview((ctypes.c_char * size).from_address(ctypes.cast(buf, ctypes.c_void_p).value)).cast("B")


def _stat_layout() -> tuple[struct.Struct, tuple[str, ...]]:
    """A struct.Struct that packs a whole struct stat (every byte: padding packs as zeros)
    and the keys of its values in order, both read from mfusepy's ctypes definition of
    the platform's struct stat (so no offset is written down here)."""
    spots = [(getattr(mfusepy.c_stat, k).offset, getattr(mfusepy.c_stat, k).size, k)
             for k in ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_blocks", "st_blksize")]
    kinds = {k: dict(mfusepy.c_stat._fields_)[k] for _, _, k in spots}
    for t in ("atime", "mtime", "ctime"):
        base = getattr(mfusepy.c_stat, f"st_{t}spec").offset
        for part, suffix in (("tv_sec", "_s"), ("tv_nsec", "_ns")):
            field = getattr(mfusepy.c_timespec, part)
            spots.append((base + field.offset, field.size, f"st_{t}{suffix}"))
            kinds[f"st_{t}{suffix}"] = dict(mfusepy.c_timespec._fields_)[part]
    fmt, at = "=", 0
    for offset, size, key in sorted(spots):
        code = {2: "h", 4: "i", 8: "q"}[size]
        fmt += "x" * (offset - at) + (code.upper() if kinds[key]._type_.isupper() else code)
        at = offset + size
    fmt += "x" * (ctypes.sizeof(mfusepy.c_stat) - at)
    return struct.Struct(fmt), tuple(k for _, _, k in sorted(spots))


_STAT, _STAT_KEYS = _stat_layout()
_stat_values = operator.itemgetter(*_STAT_KEYS)


def _stat_bytes(attrs: dict) -> bytes:
    """A whole struct stat from FsBase.attrs (times in ns), packed in one go: setting the
    ctypes fields one by one costs ~10 µs a getattr, and a create makes three. Attrs
    without the full set FsBase.attrs gives, or with a value that does not fit, go the
    generic (slow) way (`attrs` gets the split times added)."""
    try:
        attrs["st_atime_s"], attrs["st_atime_ns"] = divmod(attrs["st_atime"], 10**9)
        attrs["st_mtime_s"], attrs["st_mtime_ns"] = divmod(attrs["st_mtime"], 10**9)
        attrs["st_ctime_s"], attrs["st_ctime_ns"] = divmod(attrs["st_ctime"], 10**9)
        return _STAT.pack(*_stat_values(attrs))
    except (KeyError, struct.error):
        st = mfusepy.c_stat()
        mfusepy.set_st_attrs(st, attrs, use_ns=True)
        return bytes(st)


def _fast_path(fuse: KeyholdFUSE, ops):
    """Point the hot fields of mfusepy's ops struct at `fsmount._fastpath`'s C entry
    points, which call `fuse`'s handlers with plain arguments; answer the module (to
    uninstall once the mount ends), or None where mfusepy's ctypes callbacks serve
    everything as before: not built, turned off (KEYHOLD_FUSE_FASTPATH=0), a struct
    layout that differs from the one it was compiled against, or another mount of this
    process using it. Only fields mfusepy set are replaced (no create appears)."""
    if os.environ.get("KEYHOLD_FUSE_FASTPATH", "1") == "0":
        log.info("FUSE fast path: off (KEYHOLD_FUSE_FASTPATH=0)")
        return None
    try:
        from fsmount import _fastpath
    except ImportError:
        log.info("FUSE fast path: not built (fsmount/_fastpath.c); every callback goes through ctypes")
        return None
    layout = type(ops)
    if any(getattr(layout, name).offset != offset for name, offset in _fastpath.offsets().items()):
        log.warning("FUSE fast path: off (mfusepy's struct fuse_operations differs from <fuse3/fuse.h>)")
        return None
    fs = fuse.operations
    handlers = {
        "getattr": fuse.fast_getattr,
        "create": getattr(fs, "create", None),
        "write": (lambda view, offset, fh: fs.write(None, view, offset, fh)) if hasattr(fs, "write") else None,
        "read": (lambda view, offset, fh: fs.read_into(len(view), offset, fh, view)) if hasattr(fs, "read_into") else None,
        "flush": getattr(fs, "flush", None),
        "release": getattr(fs, "release", None),
        "failed": fuse.fast_failed,
    }
    try:
        _fastpath.install(ctypes.addressof(ops), handlers)
    except RuntimeError as e:
        log.info("FUSE fast path: off (%s)", e)
        return None
    log.debug("FUSE fast path: on (C entry for %s)", ", ".join(sorted(_fastpath.offsets())))
    return _fastpath


def _raising(name: str, error: BaseException):
    """A stand-in for callback `name` that raises `error` (mfusepy's handler reads the name)."""
    def again(*args, **kwargs):
        raise error
    again.__name__ = name
    return again


class KeyholdFUSE(mfusepy.FUSE):
    """mfusepy's binding with the libfuse 3 arguments it drops passed on, and the hot
    callbacks entered from C where `fsmount._fastpath` is built (see `_fast_path`)."""

    def __init__(self, operations, mountpoint: str, **kwargs) -> None:
        # mfusepy builds the ops struct and hands it to libfuse in one call of its
        # constructor: the C entry points go in between, in fuse_main_real's place
        real = mfusepy.fuse_main_real

        def main_real(argc, argv, ops_pointer, size, user_data):
            fast = _fast_path(self, ops_pointer.contents)
            try:
                return real(argc, argv, ops_pointer, size, user_data)
            finally:
                if fast is not None:
                    fast.uninstall()

        mfusepy.fuse_main_real = main_real
        try:
            super().__init__(operations, mountpoint, **kwargs)
        finally:
            mfusepy.fuse_main_real = real

    def _wrapper(self, func, *args, **kwargs):
        """Every callback's entry. A ctypes callback on a libfuse thread makes and destroys
        a Python thread state on every call; one extra PyGILState_Ensure per thread keeps
        it alive. The call itself is made here, and only a failure goes through mfusepy's
        generic handler (which maps it to an errno exactly as before): a create makes 8
        callbacks, and the handler's extra frame and nested try cost ~1 µs each."""
        if not getattr(_worker, "pinned", False):
            ctypes.pythonapi.PyGILState_Ensure()
            _worker.pinned = True
        try:
            return func(*args, **kwargs) or 0
        except BaseException as e:
            return super()._wrapper(_raising(func.__name__, e), *args, **kwargs)

    def read(self, path, buf, size: int, offset: int, fip) -> int:
        """Decrypt straight into the kernel's buffer."""
        return self.operations.read_into(size, offset, fip.contents.fh, _view(buf, size))

    def write(self, path, buf, size: int, offset: int, fip) -> int:
        """Hand the kernel's buffer over as a memoryview, not a copy (valid for this call only:
        OpenFile copies what it keeps)."""
        return self.operations.write(None, _view(buf, size), offset, fip.contents.fh)

    def getxattr(self, path, name: bytes, value, size: int, *args) -> int:
        """Answer reads outside user.* before any decoding: the kernel asks a file system
        with xattrs for security.capability before every write(2)."""
        if not name.startswith(b"user."):
            return -ENOATTR
        return super().getxattr(path, name, value, size, *args)

    def getattr_fuse_3(self, path, buf, fip) -> int:
        """Fill struct stat in one pack (`_stat_bytes`): mfusepy's generic set_st_attrs
        looks every key up by name on the ctypes struct (~10 µs of a ~35 µs getattr, 3
        per create). A missing name (the kernel's lookup of every name being created)
        answers ENOENT here, not through mfusepy's generic error handler."""
        answer = self.fast_getattr(_path(self, path), _fh(fip))
        if isinstance(answer, int):
            return answer
        ctypes.memmove(buf, answer, _STAT_SIZE)
        return 0

    def fast_getattr(self, path: str | None, fh: int | None) -> bytes | int:
        """struct stat packed, or -ENOENT."""
        try:
            return _stat_bytes(self.operations.getattr(path, fh))
        except FileNotFoundError:
            return -errno.ENOENT

    def fast_failed(self, name: str, error: BaseException) -> int:
        """The errno for what a handler called from C raised, as mfusepy's handler maps it."""
        return mfusepy.FUSE._wrapper(self, _raising(name, error))

    def create(self, path: bytes, mode: int, fip) -> int:
        """mfusepy's create, without its inspect.signature() of our create on every
        call (~35 µs a file, measured)."""
        fi = fip.contents
        fi.fh = self.operations.create(_path(self, path), mode, fi.flags)
        return 0

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        return self.operations.rename(_path(self, old), _path(self, new), flags)

    def truncate_fuse_3(self, path, length: int, fip) -> int:
        return self.operations.truncate(_path(self, path), length, _fh(fip))

    def chmod_fuse_3(self, path, mode: int, fip) -> int:
        return self.operations.chmod(_path(self, path), mode, _fh(fip))

    def chown_fuse_3(self, path, uid: int, gid: int, fip) -> int:
        uid = -1 if mfusepy.c_uid_t(uid + 1).value == 0 else uid
        gid = -1 if mfusepy.c_gid_t(gid + 1).value == 0 else gid
        return self.operations.chown(_path(self, path), uid, gid, _fh(fip))

    def utimens_fuse_3(self, path, buf, fip) -> int:
        times = (_timespec(buf.contents.actime), _timespec(buf.contents.modtime)) if buf else None
        return self.operations.utimens(_path(self, path), times, _fh(fip))


__all__ = ["KeyholdFS", "KeyholdFUSE", "CacheOptions"]
