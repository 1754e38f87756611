"""The floor the FUSE binding sets: CPU per stat and per create of a file system that does
no work at all, on the binding fsmount uses (mfusepy: ctypes over libfuse's high-level,
path-based API).

    .venv/bin/python bench/fuse_binding_floor.py [--files 3000] [--rounds 3]
        [--binding pyfuse3 --python VENV/bin/python]

A child process mounts a bare mfusepy file system in memory: getattr answers from a dict,
create adds a name, write counts bytes. The parent creates --files files of 4 KiB
(create+write+close), waits past the 1 s entry and attribute cache, and stats each. It
prints wall time and the CPU of the file system process (user + system, all threads,
from /proc/PID/stat) per operation. Compare the CPU figures with `bench/fsmount_io.py`'s
second table: what keyhold's mount spends beyond this floor is its own code; what
gocryptfs spends in all is the bar. If the floor is already at or above gocryptfs's
total, no change inside fsmount's operations can reach 1.0x: only a cheaper binding can.

`--binding keyhold` serves it through fsmount's own binding (`KeyholdFUSE`: mfusepy
with the hot callbacks entered from C by fsmount/_fastpath.c where it is built; run it
again with KEYHOLD_FUSE_FASTPATH=0 for the ctypes-only floor).

`--binding pyfuse3` serves the same file system on pyfuse3 (libfuse's low-level, inode
API, in Cython, driven by trio), run by `--python` (a venv where `pip install pyfuse3`
worked; it needs libfuse3-dev and pkg-config): a candidate binding, measured before any
port of fsmount to it.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ATTR_TIMEOUT = 1.0  # s: as fsmount and gocryptfs mount
SIZE = 4096


def serve(mountpoint: str) -> None:
    """The bare file system, in this (child) process, until unmounted."""
    import mfusepy

    class Bare(mfusepy.Operations):
        use_ns = True

        def __init__(self) -> None:
            self.sizes: dict[str, int] = {}
            self.next_fh = 0

        def getattr(self, path, fh=None):
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
            size = self.sizes.get(path)
            if size is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
            return {"st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_size": size}

        def create(self, path, mode, fi=None):
            self.sizes[path] = 0
            self.next_fh += 1
            return self.next_fh

        def write(self, path, data, offset, fh):
            self.sizes[path] = max(self.sizes[path], offset + len(data))
            return len(data)

        def truncate(self, path, length, fh=None):
            self.sizes[path] = length

        def readdir(self, path, fh):
            return [".", ".."] + [p[1:] for p in self.sizes]

    mfusepy.FUSE(Bare(), mountpoint, foreground=True, attr_timeout=ATTR_TIMEOUT, entry_timeout=ATTR_TIMEOUT)


def serve_keyhold(mountpoint: str) -> None:
    """The same bare file system served as fsmount serves its operations: through
    KeyholdFUSE (mfusepy, with the hot callbacks entered from C where
    fsmount/_fastpath.c is built; KEYHOLD_FUSE_FASTPATH=0 for ctypes only)."""
    import time as _time

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fsmount.filesystem import KeyholdFUSE
    from fsmount.libfuse import mfusepy

    now = _time.time_ns()
    base = {"st_ino": 1, "st_uid": 0, "st_gid": 0, "st_rdev": 0, "st_blocks": 0, "st_blksize": 4096,
            "st_atime": now, "st_mtime": now, "st_ctime": now}

    class Bare(mfusepy.Operations):
        def __init__(self) -> None:
            self.sizes: dict[str, int] = {}
            self.next_fh = 0

        def getattr(self, path, fh=None):  # the full set FsBase.attrs gives
            if path == "/":
                return {**base, "st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, "st_size": 0}
            size = self.sizes.get(path)
            if size is None:
                raise FileNotFoundError(errno.ENOENT, "no such file")
            return {**base, "st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_size": size}

        def create(self, path, mode, flags):
            self.sizes[path] = 0
            self.next_fh += 1
            return self.next_fh

        def write(self, path, data, offset, fh):
            return len(data)

        def read_into(self, size, offset, fh, out):
            return 0

        def flush(self, path, fh):
            return 0

        def release(self, path, fh):
            return 0

        def truncate(self, path, length, fh=None):
            self.sizes[path] = length

        def getxattr(self, path, name, position=0):  # so that the kernel asks, as it asks fsmount
            raise OSError(errno.ENODATA, "no attribute")

        def readdir(self, path, fh):
            return [".", ".."] + [p[1:] for p in self.sizes]

    KeyholdFUSE(Bare(), mountpoint, foreground=True, attr_timeout=ATTR_TIMEOUT, entry_timeout=ATTR_TIMEOUT)


def serve_pyfuse3(mountpoint: str) -> None:
    """The same bare file system on pyfuse3's low-level API (by inode, not path)."""
    import pyfuse3
    import trio

    class Bare(pyfuse3.Operations):
        def __init__(self) -> None:
            super().__init__()
            self.inodes: dict[bytes, int] = {}
            self.sizes: dict[int, int] = {}

        def _attr(self, ino: int):
            a = pyfuse3.EntryAttributes()
            a.st_ino = ino
            if ino == pyfuse3.ROOT_INODE:
                a.st_mode, a.st_nlink = stat.S_IFDIR | 0o755, 2
            else:
                a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o644, 1, self.sizes[ino]
            a.attr_timeout = a.entry_timeout = ATTR_TIMEOUT
            return a

        async def getattr(self, inode, ctx=None):
            return self._attr(inode)

        async def lookup(self, parent, name, ctx=None):
            if name not in self.inodes:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(self.inodes[name])

        async def create(self, parent, name, mode, flags, ctx):
            ino = self.inodes[name] = pyfuse3.ROOT_INODE + 1 + len(self.inodes)
            self.sizes[ino] = 0
            return pyfuse3.FileInfo(fh=ino), self._attr(ino)

        async def write(self, fh, off, buf):
            self.sizes[fh] = max(self.sizes[fh], off + len(buf))
            return len(buf)

        async def setattr(self, inode, attr, fields, fh, ctx):
            if fields.update_size:
                self.sizes[inode] = attr.st_size
            return self._attr(inode)

        async def getxattr(self, inode, name, ctx):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    pyfuse3.init(Bare(), mountpoint, set(pyfuse3.default_options) | {"fsname=bare"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--binding", choices=("mfusepy", "keyhold", "pyfuse3"), default="mfusepy")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that serves the file system")
    parser.add_argument("--serve", metavar="MOUNTPOINT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        {"mfusepy": serve, "keyhold": serve_keyhold, "pyfuse3": serve_pyfuse3}[args.binding](args.serve)
        return 0
    # here, not at the top: the child may run in a venv without keyhold (--python)
    from fsmount_io import cpu_seconds as _cpu
    from fsmount_io import wait_mounted

    mnt = tempfile.mkdtemp(prefix="keyhold-bare-fuse-")
    child = subprocess.Popen([args.python, __file__, "--binding", args.binding, "--serve", mnt])
    try:
        wait_mounted(Path(mnt), child)
        data = b"x" * SIZE
        best: dict[str, tuple[float, float]] = {}  # test -> (lowest wall, lowest CPU), each over the rounds
        for r in range(args.rounds):
            names = [f"{mnt}/r{r}f{i}" for i in range(args.files)]
            c0, t0 = _cpu(child.pid), time.perf_counter()
            for name in names:
                with open(name, "wb") as f:
                    f.write(data)
            c1, t1 = _cpu(child.pid), time.perf_counter()
            time.sleep(ATTR_TIMEOUT + 0.2)
            c2, t2 = _cpu(child.pid), time.perf_counter()
            for name in names:
                os.stat(name)
            c3, t3 = _cpu(child.pid), time.perf_counter()
            for test, wall, cpu in (("create", t1 - t0, c1 - c0), ("stat", t3 - t2, c3 - c2)):
                per = (wall / args.files * 1e6, cpu / args.files * 1e6)
                print(f"round {r + 1} {test}: {per[0]:.1f} µs wall, {per[1]:.1f} µs CPU of the file system process")
                low = best.get(test, per)
                best[test] = (min(low[0], per[0]), min(low[1], per[1]))
        print(f"\nbare {args.binding} floor, lowest wall and lowest CPU of {args.rounds} rounds of {args.files} files (CPU is in clock ticks: "
              f"±{1e6 / os.sysconf('SC_CLK_TCK') / args.files:.1f} µs):")
        for test, (wall, cpu) in best.items():
            print(f"  {test:<6} {wall:7.1f} µs wall  {cpu:7.1f} µs CPU")
        print(f"load at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        subprocess.run(["fusermount3", "-u", mnt], check=False)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:  # never mounted, or would not unmount
            child.kill()
            child.wait()
        os.rmdir(mnt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
