"""fsmount as a keyhold front end: CLI commands, the `[[mount]]` config section, `kms up`.

Under `kms up` each `[[mount]]` entry runs as its own `kms-mount` process: libfuse
takes over SIGINT/SIGTERM and the process umask, which must not happen to the process
that runs the other front ends.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kmscore.errors import KmsError
from kmscore.facade import Kms
from kmscore.frontend import Frontend

from fsmount import cipherdir
from fsmount.cli import register_cli
from fsmount.mount import is_mounted, start_background

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
    log: str | None = None

    @field_validator("cipher_dir", "mount_point")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return os.path.abspath(os.path.expanduser(v))


def check(entries: Sequence[MountEntry], kms: Kms) -> list[tuple[str, str]]:
    """Problems an operator must fix before `kms up` can mount these entries."""
    problems = []
    seen: set[str] = set()
    for e in entries:
        if e.mount_point in seen:
            problems.append(("mount_point", f"{e.mount_point} is used by two [[mount]] entries"))
        seen.add(e.mount_point)
        for field in ("cipher_dir", "mount_point"):  # missing folders are made on start
            path = Path(getattr(e, field))
            if path.exists() and not path.is_dir():
                problems.append((field, f"{path} is not a directory"))
        mount_point = Path(e.mount_point)
        if mount_point.is_dir() and not is_mounted(mount_point) and any(mount_point.iterdir()):
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
        if loaded and not e.force_key and kms.describe_key(e.key).key_id != loaded[0].key_id:
            problems.append(("key", f"{e.cipher_dir} was set up with key {loaded[0].key_alias or loaded[0].key_id}, not {e.key}"))
    return problems


class MountService:
    """The running mounts of one `[[mount]]` section (one child process each)."""

    def __init__(self, kms: Kms) -> None:
        self.home = str(kms.home)
        # `kms up` opens its Kms with refresh_interval = [kms].revocation_bound
        self.revocation_bound = float(getattr(kms, "refresh_interval", 5.0))
        self.running: dict[MountEntry, int] = {}  # entry -> pid of its kms-mount

    def apply(self, entries: Sequence[MountEntry]) -> list[str]:
        changes = []
        wanted = list(entries)
        for entry in [e for e in self.running if e not in wanted]:
            self._stop(entry)
            changes.append(f"unmounted {entry.mount_point}")
        for entry in wanted:
            if entry not in self.running:
                self._start(entry)
                changes.append(f"mounted {entry.cipher_dir} on {entry.mount_point}")
        return changes

    def stop(self) -> None:
        for entry in list(self.running):
            self._stop(entry)

    def _start(self, e: MountEntry) -> None:
        log = e.log or os.path.join(self.home, "logs", f"fsmount-{e.mount_point.strip('/').replace('/', '_')}.log")
        Path(e.cipher_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        Path(e.mount_point).mkdir(parents=True, exist_ok=True)
        argv = ["--home", self.home, e.cipher_dir, e.mount_point, "--key", e.key, "--frame-size", str(e.frame_size),
                "--log", log, "--revocation-bound", str(self.revocation_bound)]
        if e.force_key:
            argv.append("--force-key")
        if e.allow_other is not None:
            argv.append("--allow-other" if e.allow_other else "--no-allow-other")
        if not e.xattrs:
            argv.append("--no-xattrs")
        self.running[e] = start_background(argv, e.mount_point, log)

    def _stop(self, e: MountEntry) -> None:
        pid = self.running.pop(e)
        try:
            os.kill(pid, signal.SIGTERM)  # libfuse unmounts, the tails are written
        except ProcessLookupError:
            return
        _wait_gone(pid, e.mount_point)


def _wait_gone(pid: int, mount_point: str) -> None:
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if not is_mounted(mount_point):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.05)
    print(f"fsmount: {mount_point} did not stop within {STOP_WAIT:.0f} s", file=sys.stderr)


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
