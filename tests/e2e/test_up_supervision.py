"""`kms up` supervises its mounts (issue 10, items 5–8), with real processes:

- a mount process that dies (SIGKILL, or `kms unmount` from outside) is logged,
  reaped, cleaned up and restarted, and while it is down nothing written at the mount
  point reaches the disk in plaintext;
- mounts whose paths overlap are refused by `kms check`, `kms up` and `kms mount`;
- a second `kms up` of the same file says at once who holds the mount point;
- `kms fs rewrap` works on a mounted cipher dir (the running mount keeps reading).

Effects are awaited "up to N seconds", never timed.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.kmsup import KMS, WAIT, mounts_at, start_up, stop, wait_for

if not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"):
    pytest.skip("FUSE (/dev/fuse, fusermount3) is not available", allow_module_level=True)

MARKER = b"PLAINTEXT-MARKER-7f3a9c"


def mount_pids(mount_point: Path) -> list[int]:
    """Pids of the fsmount processes serving `mount_point`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"fsmount.cli" in argv and str(mount_point).encode() in argv and state != "Z":
            found.append(int(entry.name))
    return found


def zombies_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def kms(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([KMS, "--home", str(home), *args], capture_output=True, text=True, timeout=timeout)


class Up:
    """`kms up` of a config with one mount (and nothing else)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.plain = folder / "run" / "plain"
        self.cipher = folder / "run" / "plain-cipher"
        self.home = folder / "run" / "kms"
        self.config = folder / "deploy.toml"
        self.config.write_text(
            '[kms]\nhome = "run/kms"\nrevocation_bound = 1\n\n'
            '[[mount]]\ncipher_dir = "run/plain-cipher"\nmount_point = "run/plain"\n'
        )
        self.procs: list[subprocess.Popen] = []

    def start(self, log_name: str = "up.log") -> subprocess.Popen:
        proc = start_up(self.config, self.folder / log_name)
        self.procs.append(proc)
        return proc

    def log(self, name: str = "up.log") -> str:
        return (self.folder / name).read_text()

    def wait_log(self, text: str, name: str = "up.log", count: int = 1) -> None:
        wait_for(f"{text!r} in the log:\n{self.log(name)}", lambda: self.log(name).count(text) >= count)

    def stop(self) -> None:
        for proc in self.procs:
            stop(proc)
        for pid in mount_pids(self.plain):
            os.kill(pid, signal.SIGKILL)
        for fstype in reversed(mounts_at(self.plain)):
            subprocess.run(["umount", "-l", str(self.plain)], check=False, capture_output=True)


@pytest.fixture
def up(tmp_path):
    u = Up(tmp_path)
    yield u
    u.stop()


def running(u: Up) -> int:
    u.start()
    u.wait_log("running deploy.toml")
    (pid,) = wait_for("one mount process", lambda: mount_pids(u.plain))
    return pid


def try_write(path: Path) -> str:
    """Write the marker as an application would; what happened ("ok" or the errno name)."""
    try:
        with open(path, "wb") as f:
            f.write(MARKER)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def plaintext_under(folder: Path) -> list[str]:
    hits = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                if MARKER in Path(root, name).read_bytes():
                    hits.append(os.path.join(root, name))
            except OSError:
                pass
    return hits


# -- 5: supervision ----------------------------------------------------------------------
def test_a_killed_mount_is_logged_reaped_and_restarted(up):
    pid = running(up)
    (up.plain / "before.txt").write_bytes(b"written before the crash")
    os.sync()
    os.kill(pid, signal.SIGKILL)
    up.wait_log("was killed by SIGKILL")
    wait_for("the dead mount process reaped", lambda: not zombies_of(up.procs[0].pid))
    (new_pid,) = wait_for("a new mount process", lambda: [p for p in mount_pids(up.plain) if p != pid])
    up.wait_log("remounted")
    wait_for("the remounted file system answers", lambda: (up.plain / "before.txt").exists())
    assert (up.plain / "before.txt").read_bytes() == b"written before the crash"
    assert try_write(up.plain / "after.txt") == "ok"
    assert new_pid != pid


def test_while_a_mount_is_down_no_plaintext_reaches_the_disk(up):
    pid = running(up)
    os.kill(pid, signal.SIGKILL)
    outcomes = set()
    deadline = time.monotonic() + WAIT
    # write as fast as an application would, all the way through the outage
    while time.monotonic() < deadline:
        outcomes.add(try_write(up.plain / "f.txt"))
        if "remounted" in up.log():
            break
    assert "remounted" in up.log(), up.log()
    assert outcomes - {"ok"}, "no write was refused while the mount was down"
    up.stop()
    assert mounts_at(up.plain) == [], "kms up left a mount behind"
    assert plaintext_under(up.plain) == [], "plaintext reached the disk under the mount point"
    assert plaintext_under(up.cipher) == []


def test_kms_unmount_of_a_supervised_mount_leaves_no_plaintext_path(up):
    running(up)
    done = kms("unmount", str(up.plain), home=up.home)
    assert done.returncode == 0, done.stderr
    # the documented mistake: unmount, then write before anybody notices
    first = try_write(up.plain / "f.txt")
    assert first != "ok" or "fuse" in mounts_at(up.plain), f"write {first} with mounts {mounts_at(up.plain)}"
    up.wait_log("unmounted from outside kms up")
    up.wait_log("remounted")
    os.kill(up.procs[0].pid, signal.SIGHUP)
    up.wait_log("reloaded")
    assert try_write(up.plain / "g.txt") == "ok"  # through the mount again
    up.stop()
    assert plaintext_under(up.plain) == []


# -- 6: overlapping paths ----------------------------------------------------------------
OVERLAPS = {
    "mount point is its cipher dir": ("run/same", "run/same"),
    "cipher dir inside the mount point": ("run/plain/cipher", "run/plain"),
    "mount point inside the cipher dir": ("run/cipher", "run/cipher/plain"),
}


@pytest.mark.parametrize("case", list(OVERLAPS))
def test_overlapping_paths_are_refused_by_check_up_and_mount(tmp_path, case):
    cipher, point = OVERLAPS[case]
    config = tmp_path / "deploy.toml"
    config.write_text(f'[kms]\nhome = "run/kms"\n\n[[mount]]\ncipher_dir = "{cipher}"\nmount_point = "{point}"\n')
    home = tmp_path / "run" / "kms"
    checked = kms("check", str(config), home=home)
    assert checked.returncode != 0
    assert re.search(r"mount\[0\]\.\w+: .*(inside|is its own|same)", checked.stdout + checked.stderr), checked.stderr
    upped = subprocess.run([KMS, "up", str(config)], capture_output=True, text=True, timeout=60, cwd="/")
    assert upped.returncode != 0 and "inside" in upped.stderr + upped.stdout or "same" in upped.stderr + upped.stdout
    (tmp_path / cipher).mkdir(parents=True, exist_ok=True)
    (tmp_path / point).mkdir(parents=True, exist_ok=True)
    mounted = kms("mount", str(tmp_path / cipher), str(tmp_path / point), home=home, timeout=30)
    assert mounted.returncode != 0
    assert "kms: error:" in mounted.stderr and ("inside" in mounted.stderr or "same" in mounted.stderr)
    assert mounts_at(tmp_path / point) == []


def test_two_mounts_may_not_share_or_nest_their_folders(tmp_path):
    config = tmp_path / "deploy.toml"
    config.write_text(
        '[kms]\nhome = "run/kms"\n\n'
        '[[mount]]\ncipher_dir = "run/a-cipher"\nmount_point = "run/a"\n\n'
        '[[mount]]\ncipher_dir = "run/a/nested-cipher"\nmount_point = "run/b"\n\n'
        '[[mount]]\ncipher_dir = "run/a-cipher"\nmount_point = "run/c"\n'
    )
    checked = kms("check", str(config), home=tmp_path / "run" / "kms")
    assert checked.returncode != 0
    out = checked.stdout + checked.stderr
    assert "mount[1].cipher_dir" in out and "mount[2].cipher_dir" in out, out


# -- 8: a second kms up of the same config --------------------------------------------------
def test_a_second_up_says_at_once_that_the_mount_point_is_taken(up):
    pid = running(up)
    second = up.start("second.log")
    second.wait(WAIT)
    text = up.log("second.log")
    assert second.returncode != 0, text
    assert "already mounted" in text and f"pid {pid}" in text, text
    assert "mount[0] running" not in text
    assert mount_pids(up.plain) == [pid]  # the first deployment's mount is untouched
    assert up.procs[0].poll() is None


# -- 7: rewrap while mounted -----------------------------------------------------------------
def test_rewrap_of_a_mounted_cipher_dir_works_online(up):
    running(up)
    (up.plain / "a.txt").write_bytes(b"alpha" * 1000)
    handle = open(up.plain / "a.txt", "rb")  # a file held open across the rewrap
    rotated = kms("rotate-key", "fsmount/default", home=up.home)
    assert rotated.returncode == 0, rotated.stderr
    done = kms("fs", "rewrap", str(up.cipher), "--json", home=up.home)
    assert done.returncode == 0, done.stderr
    assert '"rewrapped": 1' in done.stdout, done.stdout
    assert handle.read() == b"alpha" * 1000
    handle.close()
    assert (up.plain / "a.txt").read_bytes() == b"alpha" * 1000
    (up.plain / "b.txt").write_bytes(b"beta")
    assert (up.plain / "b.txt").read_bytes() == b"beta"
    # b.txt may have taken a data key the mount's pool made before the rotation (fsmount.keys):
    # one more run re-wraps it; after that everything is current
    again = kms("fs", "rewrap", str(up.cipher), "--json", home=up.home)
    assert again.returncode == 0 and '"failed": 0' in again.stdout, again.stdout
    third = kms("fs", "rewrap", str(up.cipher), "--json", home=up.home)
    assert '"rewrapped": 0' in third.stdout, third.stdout
    fsck = kms("fs", "fsck", str(up.cipher), home=up.home)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    # moving a mounted folder to another key is refused, with the way to do it
    assert kms("create-key", "--alias", "other/key", home=up.home).returncode == 0
    moved = kms("fs", "rewrap", str(up.cipher), "--to-key", "other/key", home=up.home)
    assert moved.returncode != 0 and "unmount" in moved.stderr, moved.stderr


def test_a_mount_whose_settings_change_stays_guarded_through_the_remount(up):
    running(up)
    up.config.write_text(up.config.read_text() + "allow_other = false\n")
    seen = []
    deadline = time.monotonic() + WAIT
    while "reloaded" not in up.log() and time.monotonic() < deadline:
        seen.append(tuple(mounts_at(up.plain)))
    up.wait_log("reloaded")
    assert seen and all(s and s[0] == "tmpfs" for s in seen), sorted(set(seen))
    assert "fuse" in mounts_at(up.plain)[-1]
