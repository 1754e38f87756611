"""Starting and stopping a mount: foreground with a clean stop, background, unmount.

Foreground is the primitive: libfuse's own SIGINT/SIGTERM handlers end the loop, then
libfuse unmounts and `destroy` writes every open file's tail. `--background` runs the
foreground mount in a detached child and returns once the mount is up (or reports why
it is not).
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kmscore.facade import Kms

from fsmount import cipherdir, name_map
from fsmount.errors import MountError
from fsmount.keys import DEFAULT_FRAME_SIZE, FileKeys

log = logging.getLogger("fsmount")

LOOP_ENDED = 8  # fuse_main_real: the session loop returned an error (a signal is one)
READ_AHEAD_KB = 1024
WORKERS = 32
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)  # measured: cold reads ~1.6 -> ~2.6 GB/s over the default 128


@dataclass
class MountOptions:
    key: str | None = None
    force_key: bool = False
    frame_size: int = DEFAULT_FRAME_SIZE
    names: str | None = None  # name scheme of a NEW cipher directory (cipherdir.NAME_SCHEMES)
    allow_other: bool | None = None  # default: when mounted by root
    revocation_bound: float = 5.0
    xattrs: bool = True  # user.* extended attributes (fsmount.fuse_xattrs)
    debug: bool = False
    extra: dict = field(default_factory=dict)  # more -o options for libfuse


GUARD_SOURCE = "keyhold-guard"
"""The source name of the read-only tmpfs that `kms up` keeps beneath a supervised mount."""


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo for a given mount point."""

    device: str  # major:minor
    fstype: str
    source: str

    @property
    def is_guard(self) -> bool:
        return self.fstype == "tmpfs" and self.source == GUARD_SOURCE


def fsname(cipher_dir: str | os.PathLike) -> str:
    """The source a keyhold mount of `cipher_dir` shows in /proc/self/mountinfo: how a
    mount is told from others (`,` would split the mount options)."""
    return f"keyhold:{os.path.abspath(cipher_dir)}".replace(",", "_")


def mountinfo() -> list[tuple[str, MountInfo]]:
    """(mount point, its MountInfo) of every mount on this host, bottom first, as
    /proc/self/mountinfo has them (the point and the source unescaped: a space is
    `\\040` there); [] if it cannot be read. The one parser of that file."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        head, _, tail = line.partition(" - ")
        parts, rest = head.split(), tail.split()
        if len(parts) >= 5 and len(rest) >= 2:
            found.append((_unescape(parts[4]), MountInfo(parts[2], rest[0], _unescape(rest[1]))))
    return found


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_at(mount_point: str | os.PathLike) -> list[MountInfo]:
    """Every mount stacked at `mount_point`, bottom first."""
    target = os.path.realpath(mount_point)
    return [info for point, info in mountinfo() if point == target]


def mount_device(mount_point: str | os.PathLike) -> str | None:
    """'major:minor' of the file system mounted at `mount_point` (not counting a guard),
    or None if nothing is mounted there."""
    real = [m for m in mounts_at(mount_point) if not m.is_guard]
    return real[-1].device if real else None  # the last one wins: mounts stack


def is_mounted(mount_point: str | os.PathLike) -> bool:
    return mount_device(mount_point) is not None


def is_guarded(mount_point: str | os.PathLike) -> bool:
    return any(m.is_guard for m in mounts_at(mount_point))


def guard(mount_point: str | os.PathLike) -> bool:
    """Put an empty read-only tmpfs at `mount_point`, beneath the FUSE mount to come.

    While the mount is up, the guard is hidden under it; when the mount process dies or
    is unmounted from outside, applications writing at the mount point get EROFS instead
    of writing plaintext into the directory underneath. Needs root (mount(2)); returns
    False, doing nothing, for anyone else.
    """
    if is_guarded(mount_point):
        return True
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=4k,mode=0555,nosuid,nodev,noexec", GUARD_SOURCE, str(mount_point)],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        log.warning("cannot guard %s: %s", mount_point, done.stderr.strip() or f"exit {done.returncode}")
        return False
    return True


def unguard(mount_point: str | os.PathLike) -> None:
    """Remove the guard once nothing is to be mounted there any more."""
    while is_guarded(mount_point) and not is_mounted(mount_point):
        if subprocess.run(["umount", "-l", str(mount_point)], capture_output=True).returncode != 0:
            log.warning("cannot remove the guard at %s", mount_point)
            return


def check_paths(cipher_dir: str | os.PathLike, mount_point: str | os.PathLike) -> str | None:
    """Why a cipher dir and a mount point cannot go together, or None.

    A mount point that is (or holds, or lies within) its own cipher directory would make
    the mount read and write through itself: the first request deadlocks the process."""
    cipher, point = Path(os.path.realpath(cipher_dir)), Path(os.path.realpath(mount_point))
    if cipher == point:
        return f"the mount point {mount_point} is the same folder as its cipher dir"
    if cipher.is_relative_to(point):
        return f"the cipher dir {cipher_dir} is inside its mount point {mount_point}"
    if point.is_relative_to(cipher):
        return f"the mount point {mount_point} is inside its cipher dir {cipher_dir}"
    return None


def mounted_by(mount_point: str | os.PathLike) -> str:
    """Who serves the mount at `mount_point`: its source and, when this process may see
    it, the pid and command of the process holding it (for an operator's message)."""
    real = [m for m in mounts_at(mount_point) if not m.is_guard]
    what = real[-1].source if real else "nothing"
    target = os.path.realpath(mount_point).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:
            continue
        if target in argv and any(b"mount" in a for a in argv[:3]):
            command = " ".join(a.decode(errors="replace") for a in argv)
            return f"{what}, pid {entry.name}: {command}"
    return what


def check_mount_point(mount_point: str | os.PathLike) -> None:
    path = Path(mount_point)
    if not path.is_dir():
        raise MountError(f"mount point {mount_point} does not exist or is not a directory")
    if is_mounted(path):
        raise MountError(f"{mount_point} is already mounted ({mounted_by(path)}); "
                         f"run `kms unmount {mount_point}` first")
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse kernel module")


def run(kms: Kms, cipher_dir: str, mount_point: str, opts: MountOptions) -> None:
    """Mount in the foreground; return after a clean unmount (Ctrl-C, SIGTERM, unmount)."""
    from fsmount.filesystem import KeyholdFS, KeyholdFUSE  # loads libfuse: only when mounting

    # absolute: libfuse changes the working directory to / once it runs
    cipher_dir, mount_point = os.path.abspath(cipher_dir), os.path.abspath(mount_point)
    if problem := check_paths(cipher_dir, mount_point):
        raise MountError(problem)
    config = cipherdir.prepare(kms, cipher_dir, opts.key, opts.frame_size, opts.force_key, opts.names)
    check_mount_point(mount_point)
    keys = FileKeys(kms, config.key_id, config.frame_size, opts.revocation_bound)
    name_key = cipherdir.name_key(kms, config) if config.encrypted_names else None
    ops = KeyholdFS(cipher_dir, keys, lambda backing: name_map.for_config(backing, config, name_key))
    if not opts.xattrs:
        ops.without_xattrs()
    allow_other = os.geteuid() == 0 if opts.allow_other is None else opts.allow_other
    fuse_opts = {
        "fsname": fsname(cipher_dir),
        "subtype": "keyhold",
        "default_permissions": True,  # the kernel checks modes and owners, as on ext4
        "allow_other": allow_other,
        # worker threads: enough for the kernel's async reads, and kept (not re-made)
        "max_idle_threads": WORKERS,
        "max_threads": WORKERS,
        **opts.extra,
    }
    os.umask(0)  # the kernel already applied the caller's umask to every mode we get
    _tune_malloc()
    threading.Thread(target=_tune_read_ahead, args=(mount_point,), daemon=True).start()
    log.info("mounting %s on %s (format %d, names %s, key %s, frame %d)", cipher_dir, mount_point, config.version,
             config.names, config.key_alias or config.key_id, config.frame_size)
    try:
        KeyholdFUSE(ops, mount_point, foreground=True, debug=opts.debug, **fuse_opts)
    except RuntimeError as e:
        # libfuse answers 8 when its loop ended on SIGINT/SIGTERM; it has unmounted by then
        if str(e) != str(LOOP_ENDED) or is_mounted(mount_point):
            raise MountError(f"mounting {cipher_dir} on {mount_point} failed (libfuse error {e})") from None
    log.info("unmounted %s", mount_point)


def _tune_malloc() -> None:
    """Keep freed request-sized buffers in the heap instead of returning them to the OS.

    Every 1 MiB request allocates a few MiB of frames; with glibc's defaults each one
    is mmapped (or trimmed) and then page-faulted and zeroed again: measured, cold
    reads took twice the CPU. glibc only; elsewhere this does nothing.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)
    except (OSError, AttributeError):
        pass


def _tune_read_ahead(mount_point: str, wait: float = 30.0) -> None:
    """Raise the mount's read-ahead once it is up (libfuse 3 refuses -o max_readahead)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        device = mount_device(mount_point)
        if device:
            try:
                os.stat(mount_point)  # answered only after INIT, which would reset the read-ahead
                Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text(str(READ_AHEAD_KB))
            except OSError as e:
                log.debug("cannot raise read-ahead of %s: %s", mount_point, e)
            return
        time.sleep(0.05)


def spawn(argv: list[str], log_file: str) -> subprocess.Popen:
    """Start `python -m fsmount.cli <argv>` detached (its own session), output to `log_file`."""
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fsmount.cli", *argv],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )


def last_line(log_file: str) -> str:
    try:
        lines = Path(log_file).read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return lines[-1] if lines else "(no output)"


def start_background(argv: list[str], mount_point: str, log_file: str, wait: float = 30.0) -> subprocess.Popen:
    """Run a mount detached; return its process once mounted (or say why it is not)."""
    if is_mounted(mount_point):  # waiting for "mounted" would be fooled by somebody else's mount
        raise MountError(f"{mount_point} is already mounted ({mounted_by(mount_point)})")
    child = spawn(argv, log_file)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if is_mounted(mount_point):
            return child
        if child.poll() is not None:
            raise MountError(f"the mount did not start: {last_line(log_file)} (log: {log_file})")
        time.sleep(0.05)
    child.terminate()
    raise MountError(f"the mount did not come up within {wait:.0f} s (log: {log_file})")


def unmount(mount_point: str, lazy: bool = False) -> None:
    """Unmount a keyhold mount; its process writes open files' tails and exits."""
    if not is_mounted(mount_point):
        raise MountError(f"{mount_point} is not mounted")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise MountError("fusermount3 is missing (install the fuse3 package)")
    done = subprocess.run([tool, "-u", *(["-z"] if lazy else []), mount_point], capture_output=True, text=True)
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise MountError(f"cannot unmount {mount_point}: {reason}")
