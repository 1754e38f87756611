"""Times set on an open file survive its close (the buffered last frame is written then).

`cp -p`, `tar x` and `rsync -t` write a file, set its times on the open descriptor or
by name, then close it; every one of them must keep the times it set.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile

import pytest

OLD = 978_307_200_123_456_789  # 2001-01-01 00:00:00.123456789 UTC, in ns


def stored(mount, name: str) -> os.stat_result:
    """The times the mount will show once the kernel's 1 s attribute cache expires
    (what it shows before may be the cached answer to the utimens call itself)."""
    return os.stat(mount.backing(name))


def test_cp_p_keeps_mtime(mount, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(100_000))  # ends mid-frame: a tail is buffered at close
    os.utime(src, ns=(OLD, OLD + 1000))
    subprocess.run(["cp", "-p", str(src), str(mount.path("dst"))], check=True)
    for st in (os.stat(mount.path("dst")), stored(mount, "dst")):
        assert (st.st_atime_ns, st.st_mtime_ns) == (OLD, OLD + 1000)
    mount.restart()
    assert os.stat(mount.path("dst")).st_mtime_ns == OLD + 1000


def test_tar_x_keeps_mtimes(mount, tmp_path):
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        for n, size in enumerate((10, 40_000, 300_001)):
            info = tarfile.TarInfo(f"f{n}")
            info.size, info.mtime = size, 978_307_200 + n
            tar.addfile(info, io.BytesIO(os.urandom(size)))
    subprocess.run(["tar", "-xf", str(archive), "-C", str(mount.point)], check=True)
    for n in range(3):
        assert stored(mount, f"f{n}").st_mtime == 978_307_200 + n


@pytest.mark.skipif(not shutil.which("rsync"), reason="rsync is not installed")
def test_rsync_t_keeps_mtimes(mount, tmp_path):
    src = tmp_path / "tree"
    src.mkdir()
    for n in range(3):
        (src / f"f{n}").write_bytes(os.urandom(50_000 * n + 3))
        os.utime(src / f"f{n}", (978_307_200 + n, 978_307_200 + n))
    subprocess.run(["rsync", "-rt", f"{src}/", f"{mount.point}/"], check=True)
    for n in range(3):
        assert stored(mount, f"f{n}").st_mtime == 978_307_200 + n


def test_futimens_then_close_keeps_mtime(mount):
    fd = os.open(mount.path("f"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"buffered tail")
    os.utime(fd, ns=(OLD, OLD))
    assert os.fstat(fd).st_mtime_ns == OLD
    os.close(fd)
    assert stored(mount, "f").st_mtime_ns == OLD
    assert mount.path("f").read_bytes() == b"buffered tail"


@pytest.mark.parametrize("how", ["utimensat by name", "touch -d"])
def test_times_set_by_name_while_another_process_has_it_open(mount, how):
    with open(mount.path("f"), "wb") as f:
        f.write(b"x" * 70_000)
        f.flush()  # at the mount now, its last frame buffered there
        if how == "touch -d":
            subprocess.run(["touch", "-d", "2001-01-01 00:00:00 UTC", str(mount.path("f"))], check=True)
        else:
            os.utime(mount.path("f"), ns=(978_307_200 * 10**9,) * 2)
    assert stored(mount, "f").st_mtime == 978_307_200


def test_a_write_after_setting_times_updates_mtime_as_on_ext4(mount):
    fd = os.open(mount.path("f"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.utime(fd, ns=(OLD, OLD))
        os.write(fd, b"newer data")
    finally:
        os.close(fd)
    assert stored(mount, "f").st_mtime_ns != OLD
