"""Holes take no disk space; huge truncates are instant; a hole is told from a frame.

Frames wholly inside a hole are never written (all-zero slots read as zeros); every
other slot must authenticate, and the last frame is never a hole.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from fsmount import tools
from fsmount.layout import Layout
from fsmount.fs_base import read_header
from kmscore import Kms

GiB, PiB = 1 << 30, 1 << 50


def du_bytes(path: Path) -> int:
    """Disk usage of a tree in bytes (du counts allocated blocks, as a user sees them)."""
    return int(subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def fsck_clean(mount) -> None:
    with Kms(mount.home, caller="test") as kms:
        report = tools.fsck(kms, mount.cipher)
    assert report.clean, report.damage


def test_truncate_1g_takes_no_disk_space_and_reads_zeros(mount):
    before = du_bytes(mount.cipher)
    subprocess.run(["truncate", "-s", "1G", str(mount.path("big"))], check=True)
    assert mount.path("big").stat().st_size == GiB
    assert du_bytes(mount.cipher) - before < 1 << 20  # ext4 would use 0; a frame or two here
    with open(mount.path("big"), "r+b") as f:
        for offset in (0, 12345, GiB // 2, GiB - 70_000):
            f.seek(offset)
            assert f.read(70_000) == bytes(min(70_000, GiB - offset))
        f.seek(GiB // 3)
        f.write(b"in the middle of a hole")
    with open(mount.path("big"), "rb") as f:
        f.seek(GiB // 3 - 5)
        assert f.read(33) == bytes(5) + b"in the middle of a hole" + bytes(5)
        f.seek(GiB - 10)
        assert f.read() == bytes(10)
    assert du_bytes(mount.cipher) - before < 1 << 20
    mount.stop()
    fsck_clean(mount)


def test_write_past_the_end_leaves_a_hole_then_shrink_and_grow_again(mount):
    p = mount.path("f")
    with open(p, "wb") as f:
        f.write(b"head")
        f.seek(10 << 20)
        f.write(b"tail")
    assert p.read_bytes() == b"head" + bytes((10 << 20) - 4) + b"tail"
    os.truncate(p, 100_000)
    os.truncate(p, 5 << 20)
    assert p.read_bytes() == b"head" + bytes((5 << 20) - 4)
    assert du_bytes(mount.cipher) < 1 << 20
    mount.stop()
    fsck_clean(mount)


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 16 MiB tmpfs for the cipher directory (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "tmpfs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_huge_truncate_on_a_small_tmpfs_is_instant_and_takes_no_space(home, small_tmpfs, mount_existing):
    cipher = small_tmpfs / "cipher"
    cipher.mkdir()
    m = mount_existing(home, cipher)
    try:
        subprocess.run(["truncate", "-s", "1P", str(m.path("huge"))], check=True)  # as pjdfstest truncate/12
        assert m.path("huge").stat().st_size == PiB
        fd = os.open(m.path("fhuge"), os.O_RDWR | os.O_CREAT, 0o644)  # ftruncate/12
        try:
            os.write(fd, b"data")
            os.ftruncate(fd, PiB)
            assert os.fstat(fd).st_size == PiB
            assert os.pread(fd, 4, 0) == b"data"
            assert os.pread(fd, 100, PiB - 100) == bytes(100)
            os.pwrite(fd, b"end", PiB - 3)
            assert os.pread(fd, 10, PiB - 10) == bytes(7) + b"end"
        finally:
            os.close(fd)
        assert du_bytes(small_tmpfs) < 1 << 20
        os.truncate(m.path("huge"), 10)
        assert m.path("huge").read_bytes() == bytes(10)
        # beyond what any backing file can hold: refused, and the file is unchanged
        with pytest.raises(OSError) as e:
            os.truncate(m.path("huge"), (1 << 63) - 1)
        assert e.value.errno == errno.EFBIG
        assert m.path("huge").read_bytes() == bytes(10)
    finally:
        m.stop()
    fsck_clean(m)


def _backing_geometry(path: Path) -> Layout:
    with open(path, "rb") as f:
        h = read_header(f.fileno())
    return Layout(h.size, h.frame_size)


def test_a_written_byte_in_a_hole_or_a_zeroed_last_frame_is_eio(mount):
    p = mount.path("f")
    with open(p, "wb") as f:
        f.truncate(10 * 32768 + 5)
    lay = _backing_geometry(mount.backing("f"))
    mount.stop()
    with open(mount.backing("f"), "r+b") as f:
        f.seek(lay.frame_offset(4) + 100)
        f.write(b"\x01")  # a hole slot that is not all zeros is not a hole
    mount.start()
    with open(p, "rb") as f:
        assert f.read(4 * 32768) == bytes(4 * 32768)
        with pytest.raises(OSError) as e:
            f.read(32768)
        assert e.value.errno == errno.EIO
    mount.stop()
    with open(mount.backing("f"), "r+b") as f:
        f.seek(lay.frame_offset(4))
        f.write(bytes(lay.stride))  # a hole again
        f.seek(lay.frame_offset(10))
        f.write(bytes(33))  # the final frame, zeroed: never a hole
    mount.start()
    with open(p, "rb") as f:
        assert f.read(10 * 32768) == bytes(10 * 32768)
        with pytest.raises(OSError) as e:
            f.read()
        assert e.value.errno == errno.EIO


def test_a_sealed_frame_zeroed_on_disk_reads_as_zeros_the_documented_cost(mount):
    data = os.urandom(3 * 32768 + 7)
    mount.path("f").write_bytes(data)
    lay = _backing_geometry(mount.backing("f"))
    mount.stop()
    with open(mount.backing("f"), "r+b") as f:
        f.seek(lay.frame_offset(1))
        f.write(bytes(lay.stride))
    mount.start()
    assert mount.path("f").read_bytes() == data[:32768] + bytes(32768) + data[65536:]


def test_disk_full_while_growing_is_enospc_and_loses_nothing(home, small_tmpfs, mount_existing):
    cipher = small_tmpfs / "cipher"
    cipher.mkdir()
    m = mount_existing(home, cipher)
    kept = os.urandom(100_000)
    m.path("f").write_bytes(kept)
    fd = os.open(m.path("f"), os.O_WRONLY | os.O_APPEND)
    try:
        with pytest.raises(OSError) as e:
            while True:
                os.write(fd, os.urandom(1 << 20))
        assert e.value.errno in (errno.ENOSPC, errno.EFBIG)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass  # flush on a full disk may fail too; the data written before is what counts
    (small_tmpfs / "ballast").unlink(missing_ok=True)
    data = m.path("f").read_bytes()  # no EIO
    assert data[: len(kept)] == kept
    os.truncate(m.path("f"), 50_000)  # room again: the file works as before
    with open(m.path("f"), "ab") as f:
        f.write(b"more")
    assert m.path("f").read_bytes() == kept[:50_000] + b"more"
    m.stop()
    fsck_clean(m)
