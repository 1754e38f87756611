"""Backing calls relative to directory fds, so that a tree of any depth works.

The kernel takes at most PATH_MAX (4096) bytes in one path argument. A mount path can be
longer than that (a process whose working directory is deep inside the mount names files
relative to it), and the backing path is longer still by the cipher directory's own path.
So no backing call takes an absolute path: each is made relative to a directory fd
(`openat`, `mkdirat`, `renameat2`, `fstatat`, ...). Usually that fd is the cipher
directory's, opened once, and the call takes the mount path as it is (one system call,
as cheap as an absolute path). Only when the relative path itself is too long is its
parent directory opened first, walking down in steps of less than PATH_MAX bytes; then
the only limit left is the 255 bytes of one name, which the backing file system enforces.

`Backing.at(path)` gives `(dir_fd, name)` for a mount path; every module of the mount
makes its backing calls through it.
"""

from __future__ import annotations

import ctypes
import errno
import os

PATH_MAX = 4096
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def renameat2(old_dir: int, old: str, new_dir: int, new: str, flags: int) -> None:
    """renameat2(2) with its flags (Python's os.rename has none); EINVAL without it."""
    if _renameat2 is None:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    if _renameat2(old_dir, os.fsencode(old), new_dir, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
_SHORT = (PATH_MAX - 1) // 4  # characters that are surely < PATH_MAX bytes in UTF-8
_WALK = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _At:
    """A (dir_fd, name) pair as a context manager that closes a dir fd it opened."""

    __slots__ = ("dir_fd", "name", "owned")

    def __init__(self, dir_fd: int, name: str, owned: bool) -> None:
        self.dir_fd, self.name, self.owned = dir_fd, name, owned

    def __enter__(self) -> tuple[int, str]:
        return self.dir_fd, self.name

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            os.close(self.dir_fd)


class Backing:
    """The cipher directory, as a directory fd that backing calls are made relative to."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def at(self, path: str) -> _At:
        """`with backing.at(path) as (dir_fd, name)`: mount path `path` ("/a/b") in the
        cipher directory. The fd is valid inside the block only; `name` is "." for the root.
        """
        rel = path.lstrip("/") or "."
        if len(rel) <= _SHORT or len(os.fsencode(rel)) < PATH_MAX:
            return _At(self.fd, rel, False)
        parent, _, name = rel.rpartition("/")
        return _At(self.open_dir(parent), name, True)

    def open_dir(self, rel: str) -> int:
        """An O_PATH fd of directory `rel` (relative, any length); the caller closes it.

        Walks down in steps of whole names, each step's path below PATH_MAX bytes; a
        symlink as the last name of a step is refused (ENOTDIR), as the kernel never
        sends a path through one.
        """
        fd = self.fd
        step: list[bytes] = []
        length = 0
        try:
            for name in os.fsencode(rel).split(b"/"):
                if step and length + 1 + len(name) >= PATH_MAX:
                    fd = self._step(fd, b"/".join(step))
                    step, length = [], 0
                length += len(name) + (1 if step else 0)
                step.append(name)
            if step:
                fd = self._step(fd, b"/".join(step))
        except BaseException:
            if fd != self.fd:
                os.close(fd)
            raise
        return os.dup(fd) if fd == self.fd else fd

    def _step(self, fd: int, rel: bytes) -> int:
        """Open `rel` below `fd`, then close `fd` (unless it is the cipher directory's)."""
        new = os.open(rel, _WALK, dir_fd=fd)
        if fd != self.fd:
            os.close(fd)
        return new

    # -- the calls more than one module makes ------------------------------------------
    # (stat and open skip the context manager for short paths: they are the hot calls)
    def lstat(self, path: str) -> os.stat_result:
        rel = path.lstrip("/") or "."
        if len(rel) <= _SHORT:
            return os.stat(rel, dir_fd=self.fd, follow_symlinks=False)
        with self.at(path) as (d, name):
            return os.stat(name, dir_fd=d, follow_symlinks=False)

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        rel = path.lstrip("/") or "."
        if len(rel) <= _SHORT:
            return os.open(rel, flags | os.O_CLOEXEC, mode, dir_fd=self.fd)
        with self.at(path) as (d, name):
            return os.open(name, flags | os.O_CLOEXEC, mode, dir_fd=d)

    def parent_stat(self, path: str) -> os.stat_result:
        """stat of the directory holding `path`."""
        return self.lstat(path.rpartition("/")[0] or "/")
