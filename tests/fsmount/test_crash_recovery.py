"""kill -9 of the mount process while files grow: every fsynced byte reads back, no EIO.

The mount keeps a growing file's last frame in memory; the disk must hold a whole,
authenticated envelope at every moment (docs/formats/fsmount.md, "Crashes").
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time

import pytest

from fsmount import tools
from kmscore import Kms


def close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass  # the mount is gone: ENOTCONN


def fsck_clean(mount) -> None:
    with Kms(mount.home, caller="test") as kms:
        report = tools.fsck(kms, mount.cipher)
    assert report.clean, report.damage


@pytest.mark.parametrize("synced_len", [100_000, 32768 * 3])  # mid-frame, on a frame boundary
def test_kill_9_during_appends_after_fsync_keeps_fsynced_bytes(mount, synced_len):
    synced = os.urandom(synced_len)
    appended = [os.urandom(n) for n in (50_000, 70_000, 1, 32768, 90_000)]  # crosses frames
    fd = os.open(mount.path("log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, synced)
    os.fsync(fd)
    for chunk in appended:
        os.write(fd, chunk)
    mount.kill9()
    close_quietly(fd)

    fsck_clean(mount)  # offline check of the crashed directory: a whole envelope
    mount.start()
    data = mount.path("log").read_bytes()  # no EIO
    assert data[:synced_len] == synced
    assert (synced + b"".join(appended)).startswith(data)  # what is there is what was written
    with open(mount.path("log"), "ab") as f:  # and it appends
        f.write(b"after the crash")
    assert mount.path("log").read_bytes() == data + b"after the crash"
    mount.stop()
    fsck_clean(mount)


def test_kill_9_after_a_write_past_the_end_and_an_overwrite(mount):
    fd = os.open(mount.path("f"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"a" * 40_000)
    os.fsync(fd)
    os.pwrite(fd, b"b" * 10, 300_000)  # leaves a hole, then a tail in memory
    os.pwrite(fd, b"c" * 5, 10)  # inside the fsynced part
    mount.kill9()
    close_quietly(fd)
    mount.start()
    data = mount.path("f").read_bytes()
    assert data[:10] == b"a" * 10 and data[15:40_000] == b"a" * (40_000 - 15)
    assert set(data[40_000:]) <= {0}  # the hole: zeros, never garbage
    with open(mount.path("f"), "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(b"more")


APPENDER = textwrap.dedent(
    """
    import os, random, sys
    path, report = sys.argv[1], sys.argv[2]
    rng = random.Random(7)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    done = 0
    with open(report, "w") as out:
        while True:
            for _ in range(rng.randrange(2, 12)):
                chunk = rng.randbytes(rng.randrange(1, 70_000))
                os.write(fd, chunk)
                done += len(chunk)
            os.fsync(fd)
            out.write(f"{done}\\n")
            out.flush()
    """
)


def expected_stream(length: int) -> bytes:
    rng, out = random.Random(7), bytearray()
    while len(out) < length:
        for _ in range(rng.randrange(2, 12)):
            out += rng.randbytes(rng.randrange(1, 70_000))
    return bytes(out)


def synced_lengths(report) -> list[int]:
    return [int(n) for n in report.read_text().split()] if report.exists() else []


@pytest.mark.parametrize("round_", [1, 2])
def test_kill_9_while_another_process_appends_and_fsyncs(mount, tmp_path, round_):
    """A real appender (own process, random chunk sizes, fsync now and then) is cut off
    by kill -9 of the mount just after it grew the file past an fsync."""
    report = tmp_path / "synced"
    writer = subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(mount.path("log")), str(report)], stderr=subprocess.DEVNULL
    )
    try:
        while len(synced_lengths(report)) < 10 * round_:
            if writer.poll() is not None:
                pytest.fail("the appender stopped early")
            time.sleep(0.005)  # polling, not a timing assertion: leave the CPUs to the appender
        seen = mount.backing("log").stat().st_size
        while mount.backing("log").stat().st_size == seen:  # frames written since that fsync
            if writer.poll() is not None:
                pytest.fail("the appender stopped early")
            time.sleep(0.001)
        mount.kill9()
    finally:
        writer.kill()
        writer.wait()
    durable = max(synced_lengths(report))
    mount.start()
    data = mount.path("log").read_bytes()
    assert len(data) >= durable
    assert data == expected_stream(len(data))[: len(data)]
    with open(mount.path("log"), "ab") as f:
        f.write(b"x")
    assert len(mount.path("log").read_bytes()) == len(data) + 1


# -- cipher directories crashed by keyhold before the end marker: `kms fs fsck --repair` --
def kms_cli(home, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kmscore.cli.main", "--home", str(home), *args], capture_output=True, text=True
    )


def old_crash_state(mount, name: str, frames: list[bytes], torn: bytes = b"") -> None:
    """What kill -9 left before the end marker: full frames sealed non-final, no final
    frame (and, for a torn write, a piece of a frame after them)."""
    from fsmount.fs_base import read_header
    from kmscore.envelope import open_envelope

    mount.path(name).write_bytes(b"placeholder")
    mount.stop()
    path = mount.backing(name)
    with Kms(mount.home, caller="test") as kms, open(path, "r+b") as f:
        header = read_header(f.fileno())
        cipher = open_envelope(kms, header)
        f.truncate(header.size)
        f.seek(header.size)
        for i, plain in enumerate(frames):
            f.write(cipher.seal(i, plain, False))
        f.write(torn)


@pytest.mark.parametrize("torn", [b"", os.urandom(1000)], ids=["whole frames", "torn last write"])
def test_fsck_repair_gives_an_old_crashed_file_its_end_back(mount, torn):
    frames = [os.urandom(32768) for _ in range(3)]
    old_crash_state(mount, "log", frames, torn)
    done = kms_cli(mount.home, "fs", "fsck", str(mount.cipher))
    assert done.returncode == 1 and "log: frame" in done.stdout  # found, not changed
    done = kms_cli(mount.home, "fs", "fsck", "--repair", str(mount.cipher))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"log: end repaired: {3 * 32768} bytes kept" in done.stdout
    assert "Traceback" not in done.stderr
    mount.start()
    assert mount.path("log").read_bytes() == b"".join(frames)
    with open(mount.path("log"), "ab") as f:
        f.write(b"appended")
    assert mount.path("log").read_bytes() == b"".join(frames) + b"appended"
    mount.stop()
    assert kms_cli(mount.home, "fs", "fsck", str(mount.cipher)).returncode == 0


def test_fsck_repair_leaves_damage_inside_a_file_alone(mount):
    frames = [os.urandom(32768) for _ in range(4)]
    old_crash_state(mount, "log", frames)
    with open(mount.backing("log"), "r+b") as f:
        f.seek(-32768 * 2, os.SEEK_END)  # inside frame 2 of 4
        f.write(b"tampered")
    before = mount.backing("log").read_bytes()
    done = kms_cli(mount.home, "fs", "fsck", "--repair", str(mount.cipher))
    assert done.returncode == 1
    assert "inside the file" in done.stdout and "not repaired" in done.stdout
    assert mount.backing("log").read_bytes() == before


def test_fsck_repair_refuses_a_mounted_directory(mount):
    done = kms_cli(mount.home, "fs", "fsck", "--repair", str(mount.cipher))
    assert done.returncode != 0 and "is mounted" in done.stderr and "Traceback" not in done.stderr


def test_the_first_close_after_a_crash_gives_the_file_its_usual_end(mount):
    fd = os.open(mount.path("f"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, os.urandom(3 * 32768))  # three full frames: the last one stays in memory
    os.write(fd, b"x")
    mount.kill9()
    close_quietly(fd)
    with open(mount.backing("f"), "rb") as f:
        from fsmount.fs_base import read_header
        from fsmount.layout import Layout

        h = read_header(f.fileno())
        lay = Layout(h.size, h.frame_size)
        length = os.fstat(f.fileno()).st_size
    assert length == lay.frame_offset(3) + 28  # three frames, then the end marker
    mount.start()
    data = mount.path("f").read_bytes()
    assert len(data) == 3 * 32768
    with open(mount.path("f"), "r+b"):
        pass
    assert mount.backing("f").stat().st_size == lay.backing_length(3 * 32768)
    assert mount.path("f").read_bytes() == data

