"""fallocate(2): mode 0 and KEEP_SIZE reserve space, PUNCH_HOLE and ZERO_RANGE zero a
range (whole frames become holes); collapse and insert are refused with EOPNOTSUPP."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess

import pytest

from fsmount import tools
from kmscore import Kms

KEEP_SIZE, PUNCH_HOLE, COLLAPSE_RANGE, ZERO_RANGE, INSERT_RANGE = 0x01, 0x02, 0x08, 0x10, 0x20
F = 32768

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def backing_bytes(mount, name: str) -> int:
    return os.stat(mount.backing(name)).st_blocks * 512


def fsck_clean(mount) -> None:
    mount.stop()
    with Kms(mount.home, caller="test") as kms:
        report = tools.fsck(kms, mount.cipher)
    assert report.clean, report.damage


def test_mode_0_grows_the_file_and_reserves_backing_space(mount):
    fd = os.open(mount.path("f"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"start")
        os.posix_fallocate(fd, 0, 4 << 20)  # glibc's posix_fallocate is fallocate mode 0
        assert os.fstat(fd).st_size == 4 << 20
        assert backing_bytes(mount, "f") >= 4 << 20
        assert os.pread(fd, 10, 0) == b"start" + bytes(5)
        assert os.pread(fd, 100, (4 << 20) - 100) == bytes(100)
        os.pwrite(fd, b"written later", 2 << 20)
        assert os.pread(fd, 13, 2 << 20) == b"written later"
    finally:
        os.close(fd)
    assert mount.path("f").stat().st_size == 4 << 20
    fsck_clean(mount)


def test_keep_size_reserves_without_growing(mount):
    mount.path("f").write_bytes(b"12345")
    fd = os.open(mount.path("f"), os.O_RDWR)
    try:
        fallocate(fd, KEEP_SIZE, 0, 2 << 20)
        assert os.fstat(fd).st_size == 5
        assert backing_bytes(mount, "f") >= 2 << 20
        os.write(fd, os.urandom(3 * F))  # into the reserved range, past the old end
    finally:
        os.close(fd)
    assert mount.path("f").stat().st_size == 3 * F
    fsck_clean(mount)


@pytest.mark.parametrize("mode", [PUNCH_HOLE | KEEP_SIZE, ZERO_RANGE, ZERO_RANGE | KEEP_SIZE])
def test_punch_and_zero_range_read_back_as_zeros(mount, mode):
    data = bytearray(os.urandom(20 * F + 123))
    mount.path("f").write_bytes(data)
    before = backing_bytes(mount, "f")
    lo, hi = 3 * F + 100, 15 * F + 7  # partial frames at both ends, whole frames between
    fd = os.open(mount.path("f"), os.O_RDWR)
    try:
        fallocate(fd, mode, lo, hi - lo)
        data[lo:hi] = bytes(hi - lo)
        assert os.pread(fd, len(data) + 10, 0) == data
        fallocate(fd, mode, 19 * F, 2 * F)  # through the last frame (and past the end)
        data[19 * F :] = bytes(len(data) - 19 * F)
        if not mode & KEEP_SIZE:
            data += bytes(21 * F - len(data))
        assert os.pread(fd, len(data) + 10, 0) == data
    finally:
        os.close(fd)
    assert mount.path("f").read_bytes() == data
    if mode & PUNCH_HOLE:
        assert backing_bytes(mount, "f") <= before - 10 * F  # the whole frames are holes now
    fsck_clean(mount)


@pytest.mark.parametrize("mode", [COLLAPSE_RANGE, INSERT_RANGE])
def test_collapse_and_insert_are_refused_clearly(mount, mode):
    data = os.urandom(10 * F)
    mount.path("f").write_bytes(data)
    fd = os.open(mount.path("f"), os.O_RDWR)
    try:
        with pytest.raises(OSError) as e:
            fallocate(fd, mode, F, F)
        assert e.value.errno == errno.EOPNOTSUPP
    finally:
        os.close(fd)
    assert mount.path("f").read_bytes() == data


def test_the_fallocate_tool(mount):
    p = str(mount.path("f"))
    subprocess.run(["fallocate", "-l", "1M", p], check=True)
    assert mount.path("f").stat().st_size == 1 << 20
    subprocess.run(["fallocate", "-p", "-o", "100000", "-l", "500000", p], check=True)
    assert mount.path("f").read_bytes() == bytes(1 << 20)
    done = subprocess.run(["fallocate", "-c", "-o", "0", "-l", "4096", p], capture_output=True, text=True)
    assert done.returncode != 0 and "not supported" in done.stderr
