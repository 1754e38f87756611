"""A cipher directory frozen at format version 1 must keep mounting, reading and checking."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

from kmscore import Kms

from fsmount import tools

SAMPLE = Path(__file__).parent / "data" / "v1"
FRAMES = bytes(i % 251 for i in range(100_000))


def copy_sample(tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(SAMPLE / "home", tmp_path / "home")
    (tmp_path / "home" / "root.key").chmod(0o600)  # git does not keep the mode
    shutil.copytree(SAMPLE / "cipher", tmp_path / "cipher", symlinks=True)
    (tmp_path / "cipher" / "hello.txt").chmod(0o640)  # the mode it was frozen with
    return tmp_path / "home", tmp_path / "cipher"


def test_frozen_v1_reads_through_a_mount(tmp_path, mount_existing):
    home, cipher = copy_sample(tmp_path)
    m = mount_existing(home, cipher)
    assert m.path("hello.txt").read_bytes() == b"hello, keyhold\n"
    assert stat.S_IMODE(m.path("hello.txt").stat().st_mode) == 0o640
    assert m.path("empty").read_bytes() == b""
    assert m.path("frames.bin").read_bytes() == FRAMES
    assert m.path("sub/hardlink").read_bytes() == FRAMES
    assert m.path("sub/link").read_bytes() == b"hello, keyhold\n"
    assert sorted(p.name for p in m.point.iterdir()) == ["empty", "frames.bin", "hello.txt", "sub"]
    with open(m.path("frames.bin"), "r+b") as f:  # and still writable in place
        f.seek(50_000)
        f.write(b"new")
    assert m.path("frames.bin").read_bytes()[49_999:50_004] == FRAMES[49_999:50_000] + b"new" + FRAMES[50_003:50_004]


def test_frozen_v1_offline_tools(tmp_path):
    home, cipher = copy_sample(tmp_path)
    with Kms(home, caller="test") as kms:
        report = tools.fsck(kms, cipher)
        assert report.clean and report.files == 4
        out = tmp_path / "frames.out"
        tools.decrypt(kms, cipher / "frames.bin", out)
        assert out.read_bytes() == FRAMES
        assert tools.info(kms, cipher / "hello.txt")["plaintext_size"] == 15
