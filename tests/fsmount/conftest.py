"""Fixtures: a KMS home and real FUSE mounts run by `kms-mount` in a child process.

Every mount is unmounted at teardown, also when the test failed or killed its process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from kmscore import Kms

from fsmount.mount import is_mounted

if not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"):
    pytest.skip("FUSE (/dev/fuse, fusermount3) is not available", allow_module_level=True)

START_WAIT = 30.0


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A fresh KMS home with a root key file."""
    h = tmp_path / "kmshome"
    with Kms(h, caller="test"):
        pass
    return h


@pytest.fixture
def kms(home: Path):
    with Kms(home, caller="test") as k:
        yield k


@dataclass
class Mount:
    home: Path
    cipher: Path
    point: Path
    log: Path
    proc: subprocess.Popen | None = None

    def start(self, *extra: str) -> "Mount":
        """Mount (foreground child process); wait until the mount is up."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fsmount.cli", "--home", str(self.home), str(self.cipher), str(self.point), *extra],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_WAIT
        while not is_mounted(self.point):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mount exited {self.proc.returncode}: {self.log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mount did not come up: {self.log.read_text()}")
            time.sleep(0.02)
        return self

    def stop(self) -> int | None:
        """Unmount cleanly; return the mount process's exit code."""
        if is_mounted(self.point):
            if subprocess.run(["fusermount3", "-u", str(self.point)], capture_output=True).returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", str(self.point)], capture_output=True)
        code = None
        if self.proc is not None:
            try:
                code = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
            self.proc = None
        return code

    def kill9(self) -> None:
        """Kill the mount process hard and clear the dead mount it leaves."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        subprocess.run(["fusermount3", "-u", "-z", str(self.point)], capture_output=True)

    def restart(self, *extra: str) -> "Mount":
        self.stop()
        return self.start(*extra)

    def backing(self, name: str) -> Path:
        """The backing path of mount path `name` (names may be encrypted: format 2)."""
        from fsmount.tree_names import TreeNames

        with Kms(self.home, caller="test") as kms:
            return TreeNames(kms, self.cipher).backing_of(name)

    def xattr(self, name: str) -> str:
        """The backing name of extended attribute `name` (encrypted in format 2)."""
        from fsmount.tree_names import TreeNames

        with Kms(self.home, caller="test") as kms:
            tree = TreeNames(kms, self.cipher)
            return name if tree.cipher is None else tree.cipher.encrypt_xattr(name)

    def path(self, name: str) -> Path:
        return self.point / name


def make_mount(home: Path, root: Path, *extra: str) -> Mount:
    cipher, point = root / "cipher", root / "plain"
    cipher.mkdir(parents=True, exist_ok=True)
    point.mkdir(parents=True, exist_ok=True)
    return Mount(home, cipher, point, root / "mount.log").start(*extra)


@pytest.fixture
def mount(home: Path, tmp_path: Path):
    m = make_mount(home, tmp_path)
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def shared_mount(tmp_path_factory):
    """One mount for a module of tests that only add files (saves the start-up time)."""
    # outside pytest's 0700 tmp folders, so that another user can reach the mount
    root = Path(tempfile.mkdtemp(prefix="fsmount-test-"))
    os.chmod(root, 0o755)
    h = root / "kmshome"
    with Kms(h, caller="test"):
        pass
    m = make_mount(h, root)
    try:
        yield m
    finally:
        m.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mount_with(home: Path, tmp_path: Path):
    """mount_with(*options): a mount started with extra `kms-mount` options."""
    made: list[Mount] = []

    def make(*extra: str) -> Mount:
        m = make_mount(home, tmp_path, *extra)
        made.append(m)
        return m

    try:
        yield make
    finally:
        for m in made:
            m.stop()


@pytest.fixture
def mount_existing(tmp_path: Path):
    """mount_existing(home, cipher_dir, *options): mount a given cipher directory."""
    made: list[Mount] = []

    def make(home: Path, cipher: Path, *extra: str) -> Mount:
        point = tmp_path / f"plain{len(made)}"
        point.mkdir()
        m = Mount(home, cipher, point, tmp_path / f"mount{len(made)}.log").start(*extra)
        made.append(m)
        return m

    try:
        yield make
    finally:
        for m in made:
            m.stop()


@pytest.fixture
def mount_at():
    """mount_at(home, cipher, point, log, *options): a mount of given folders, stopped at teardown."""
    made: list[Mount] = []

    def make(home: Path, cipher: Path, point: Path, log: Path, *extra: str) -> Mount:
        m = Mount(home, cipher, point, log).start(*extra)
        made.append(m)
        return m

    try:
        yield make
    finally:
        for m in made:
            m.stop()
