"""fsmount as a keyhold front end: CLI commands, the `[[mount]]` config section, `kms up`.

Under `kms up` each `[[mount]]` entry runs as its own `kms-mount` process: libfuse
takes over SIGINT/SIGTERM and the process umask, which must not happen to the process
that runs the other front ends.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kmscore.errors import KmsError
from kmscore.facade import Kms
from kmscore.frontend import Frontend

from fsmount import cipherdir
from fsmount.cli import register_cli
from fsmount.mount import check_paths, guard, is_mounted, last_line, mounted_by, spawn, start_background, unguard

log = logging.getLogger("keyhold.up")

STOP_WAIT = 30.0


class MountEntry(BaseModel):
    """One `[[mount]]` table of the deployment config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cipher_dir: str
    mount_point: str
    key: str = "fsmount/default"
    force_key: bool = False
    frame_size: int = Field(default=32 * 1024, ge=4096, le=1 << 20, multiple_of=4096)
    allow_other: bool | None = None
    xattrs: bool = True  # user.* extended attributes (kms-mount --no-xattrs when false)
    names: Literal["encrypted", "deterministic", "plain"] | None = None  # scheme of a NEW cipher dir (kms-mount --names)
    log: str | None = None

    @field_validator("cipher_dir", "mount_point")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return os.path.abspath(os.path.expanduser(v))


def check(entries: Sequence[MountEntry], kms: Kms) -> list[tuple[str, str]]:
    """Problems an operator must fix before `kms up` can mount these entries."""
    problems = [(f"[{i}].{field}", why) for i, field, why in check_section(entries)]
    seen: set[str] = set()
    for e in entries:
        if e.mount_point in seen:
            problems.append(("mount_point", f"{e.mount_point} is used by two [[mount]] entries"))
        seen.add(e.mount_point)
        if why := check_paths(e.cipher_dir, e.mount_point):
            problems.append(("mount_point", why))
            continue
        for field in ("cipher_dir", "mount_point"):  # missing folders are made on start
            path = Path(getattr(e, field))
            if path.exists() and not path.is_dir():
                problems.append((field, f"{path} is not a directory"))
        mount_point = Path(e.mount_point)
        if is_mounted(mount_point) and os.path.realpath(mount_point) not in _SUPERVISED:
            problems.append(("mount_point", f"{mount_point} is already mounted ({mounted_by(mount_point)}); "
                                            f"stop that mount first (`kms unmount {mount_point}`)"))
        elif mount_point.is_dir() and not is_mounted(mount_point) and any(mount_point.iterdir()):
            problems.append(("mount_point", f"{mount_point} is not empty (its files would be hidden under the mount)"))
        try:
            kms.describe_key(e.key)
        except KmsError as err:
            problems.append(("key", str(err)))
            continue
        try:
            loaded = cipherdir.load(e.cipher_dir) if Path(e.cipher_dir).is_dir() else None
        except KmsError as err:
            problems.append(("cipher_dir", str(err)))
            continue
        if loaded and e.names is not None and e.names != loaded[0].names:
            problems.append(("names", f"{e.cipher_dir} was set up with names = {loaded[0].names!r}, not {e.names!r} "
                                      "(a cipher directory keeps its scheme: copy the tree into a new one)"))
        if loaded and not e.force_key and kms.describe_key(e.key).key_id != loaded[0].key_id:
            problems.append(("key", f"{e.cipher_dir} was set up with key {loaded[0].key_alias or loaded[0].key_id}, not {e.key}"))
    return problems


def check_section(entries: Sequence[MountEntry]) -> list[tuple[int, str, str]]:
    """Problems between entries: a cipher dir shared by two mounts, or a folder of one
    mount inside a folder of another (one mount would write through the other, or hide it)."""
    problems = []
    for i, e in enumerate(entries):
        for j, other in enumerate(entries):
            if i == j:
                continue
            if e.cipher_dir == other.cipher_dir and j < i:
                problems.append((i, "cipher_dir", f"{e.cipher_dir} is also the cipher dir of mount[{j}]"))
            for field in ("cipher_dir", "mount_point"):
                mine = Path(getattr(e, field))
                for theirs_field in ("cipher_dir", "mount_point"):
                    theirs = Path(getattr(other, theirs_field))
                    if mine != theirs and mine.is_relative_to(theirs):
                        problems.append((i, field, f"{mine} is inside mount[{j}].{theirs_field} {theirs}"))
    return problems


# Mount points that a MountService of this process supervises: a reload's checks must
# not mistake them for somebody else's mounts.
_SUPERVISED: set[str] = set()

BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0
STABLE_AFTER = 60.0  # a mount that stayed up this long restarts at the first backoff again
START_WAIT = 30.0
EXIT_WAIT = 5.0  # a process whose mount is gone gets this long to exit before it is killed


@dataclass
class _Mount:
    """One supervised mount: its process, and when it may be started again."""

    entry: MountEntry
    log_file: str
    process: subprocess.Popen | None = None
    up_since: float | None = None  # monotonic time it was seen mounted
    started_at: float = 0.0
    retry_at: float | None = None  # set while it is down
    failures: int = 0
    unmounted_at: float | None = None  # seen unmounted while its process still ran


class MountService:
    """The running mounts of one `[[mount]]` section (one child process each), supervised.

    `kms up` calls `poll` between its ticks: a mount process that died (a crash, SIGKILL,
    `kms unmount` from outside) is reaped, its dead FUSE connection detached, the event
    logged, and the mount started again with exponential backoff. While it is down the
    guard beneath it (see `fsmount.mount.guard`) makes the mount point read-only, so an
    application's writes fail instead of landing in plaintext on the disk underneath.
    """

    def __init__(self, kms: Kms) -> None:
        self.home = str(kms.home)
        # `kms up` opens its Kms with refresh_interval = [kms].revocation_bound; a RemoteKms
        # carries the bound itself, and the options that open it in the mount process
        self.revocation_bound = float(getattr(kms, "revocation_bound", None) or getattr(kms, "refresh_interval", 5.0))
        self.kms_args = list(getattr(kms, "cli_args", ()) or ["--home", self.home])
        self.running: dict[MountEntry, _Mount] = {}

    def apply(self, entries: Sequence[MountEntry]) -> list[str]:
        changes = []
        wanted = list(entries)
        staying = {e.mount_point for e in wanted}
        for entry in [e for e in self.running if e not in wanted]:
            # a mount whose settings changed keeps its guard across the remount
            self._stop(entry, keep_guard=entry.mount_point in staying)
            changes.append(f"unmounted {entry.mount_point}")
        for entry in wanted:
            if entry not in self.running:
                self._start(entry)
                changes.append(f"mounted {entry.cipher_dir} on {entry.mount_point}")
        return changes

    def stop(self) -> None:
        for entry in list(self.running):
            self._stop(entry)

    def poll(self) -> None:
        """Notice dead mounts, restart them when their backoff has passed."""
        now = time.monotonic()
        for m in list(self.running.values()):
            if m.retry_at is not None:
                if now >= m.retry_at:
                    self._restart(m, now)
                continue
            assert m.process is not None
            code = m.process.poll()
            mounted = is_mounted(m.entry.mount_point)
            if code is None and mounted:
                if m.up_since is None:
                    m.up_since = now
                    log.info("mount %s: remounted (pid %d)", m.entry.mount_point, m.process.pid)
                elif now - m.up_since > STABLE_AFTER:
                    m.failures = 0
                continue
            if code is None and m.up_since is None and now - m.started_at < START_WAIT:
                continue  # still starting
            if code is None and m.up_since is not None:
                # unmounted from outside: the process ends by itself in a moment
                m.unmounted_at = m.unmounted_at or now
                if now - m.unmounted_at < EXIT_WAIT:
                    continue
            self._down(m, code, now)

    # -- one mount -----------------------------------------------------------------------
    def _start(self, e: MountEntry) -> None:
        """The first start of an entry: blocking, so that `kms up` can report why it failed."""
        log_file = e.log or os.path.join(self.home, "logs", f"fsmount-{e.mount_point.strip('/').replace('/', '_')}.log")
        Path(e.cipher_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        Path(e.mount_point).mkdir(parents=True, exist_ok=True)
        m = _Mount(e, log_file)
        guarded = guard(e.mount_point)
        try:
            m.process = start_background(self._argv(e, log_file), e.mount_point, log_file)
        except BaseException:
            if guarded:
                unguard(e.mount_point)
            raise
        m.started_at = m.up_since = time.monotonic()
        self.running[e] = m
        _SUPERVISED.add(os.path.realpath(e.mount_point))
        if not guarded:
            log.warning("mount %s: not root, so no read-only guard beneath it: if the mount process dies, "
                        "writes at the mount point land in the folder underneath", e.mount_point)

    def _argv(self, e: MountEntry, log_file: str) -> list[str]:
        argv = [*self.kms_args, e.cipher_dir, e.mount_point, "--key", e.key, "--frame-size", str(e.frame_size),
                "--log", log_file, "--revocation-bound", str(self.revocation_bound)]
        if e.force_key:
            argv.append("--force-key")
        if e.allow_other is not None:
            argv.append("--allow-other" if e.allow_other else "--no-allow-other")
        if not e.xattrs:
            argv.append("--no-xattrs")
        if e.names is not None:
            argv += ["--names", e.names]
        return argv

    def _down(self, m: _Mount, code: int | None, now: float) -> None:
        point, process = m.entry.mount_point, m.process
        assert process is not None
        if code is None:  # alive but not serving (never came up, or hung after an unmount): end it
            process.kill()
            process.wait()
            how = "stopped serving its mount point and was killed"
        elif code == 0:
            how = "was unmounted from outside kms up (to stop a mount, remove it from the config)"
        elif code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}: {last_line(m.log_file)}"
        if is_mounted(point):  # a dead FUSE connection: every access would fail ENOTCONN
            tool = shutil.which("fusermount3") or "fusermount3"
            subprocess.run([tool, "-u", "-z", point], capture_output=True)
        m.failures = 0 if m.up_since is not None and now - m.up_since > STABLE_AFTER else m.failures + 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (m.failures - 1))
        m.process, m.up_since, m.unmounted_at, m.retry_at = None, None, None, now + delay
        log.error("mount %s: the mount process (pid %d) %s; restarting in %.0f s (log: %s)",
                  point, process.pid, how, delay, m.log_file)

    def _restart(self, m: _Mount, now: float) -> None:
        m.retry_at = None
        if is_mounted(m.entry.mount_point):
            self._down_foreign(m, now)
            return
        m.process = spawn(self._argv(m.entry, m.log_file), m.log_file)
        m.started_at = now

    def _down_foreign(self, m: _Mount, now: float) -> None:
        m.retry_at = now + BACKOFF_MAX
        log.error("mount %s: cannot remount, it is mounted by somebody else (%s); trying again in %.0f s",
                  m.entry.mount_point, mounted_by(m.entry.mount_point), BACKOFF_MAX)

    def _stop(self, e: MountEntry, keep_guard: bool = False) -> None:
        m = self.running.pop(e)
        _SUPERVISED.discard(os.path.realpath(e.mount_point))
        if m.process is not None:
            try:
                m.process.send_signal(signal.SIGTERM)  # libfuse unmounts, the tails are written
            except ProcessLookupError:
                pass
            _wait_gone(m.process, e.mount_point)
        if not keep_guard:
            unguard(e.mount_point)


def _wait_gone(process: subprocess.Popen, mount_point: str) -> None:
    try:
        process.wait(STOP_WAIT)
    except subprocess.TimeoutExpired:
        log.error("mount %s did not stop within %.0f s", mount_point, STOP_WAIT)


def start(entries: Sequence[MountEntry], kms: Kms) -> MountService:
    service = MountService(kms)
    try:
        service.apply(entries)
    except BaseException:
        service.stop()
        raise
    return service


FRONTEND = Frontend(
    name="fsmount",
    register_cli=register_cli,
    config_key="mount",
    config_model=MountEntry,
    check=check,
    start=start,
)
