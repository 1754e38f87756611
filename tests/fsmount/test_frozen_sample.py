"""Cipher directories frozen at format versions 1 and 2 must keep mounting, reading and checking."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from kmscore import Kms

from fsmount import tools
from fsmount.tree_names import TreeNames

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


SAMPLE_V2 = Path(__file__).parent / "data" / "v2"
LONG = "L" * 200 + "-long name"


def copy_sample_v2(tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(SAMPLE_V2 / "home", tmp_path / "home")
    (tmp_path / "home" / "root.key").chmod(0o600)  # git does not keep the mode
    shutil.copytree(SAMPLE_V2 / "cipher", tmp_path / "cipher", symlinks=True)
    with Kms(tmp_path / "home", caller="test") as kms:
        TreeNames(kms, tmp_path / "cipher").backing_of("/hello.txt").chmod(0o640)  # the mode it was frozen with
    return tmp_path / "home", tmp_path / "cipher"


def test_frozen_v2_reads_through_a_mount(tmp_path, mount_existing):
    home, cipher = copy_sample_v2(tmp_path)
    m = mount_existing(home, cipher)
    assert m.path("hello.txt").read_bytes() == b"hello, keyhold v2\n"
    assert stat.S_IMODE(m.path("hello.txt").stat().st_mode) == 0o640
    assert m.path("empty").read_bytes() == b""
    assert m.path("same/hello.txt").read_bytes() == b"same name, other directory\n"
    assert m.path("sub/frames.bin").read_bytes() == FRAMES
    assert m.path("sub/deeper/hardlink").read_bytes() == FRAMES
    assert m.path("sub/link").read_bytes() == b"hello, keyhold v2\n"
    assert m.path("sub/" + LONG).read_bytes() == b"a long name\n"
    assert sorted(p.name for p in m.point.iterdir()) == ["empty", "hello.txt", "same", "sub"]
    assert sorted(p.name for p in m.path("sub").iterdir()) == sorted([LONG, "deeper", "frames.bin", "link"])
    m.path("sub/new").write_bytes(b"written at v2")  # and still writable
    assert m.path("sub/new").read_bytes() == b"written at v2"


def test_frozen_v2_offline_tools(tmp_path):
    home, cipher = copy_sample_v2(tmp_path)
    with Kms(home, caller="test") as kms:
        report = tools.fsck(kms, cipher)
        assert report.clean and report.files == 6 and report.names == 10
        info = tools.info(kms, cipher)
        assert (info["format_version"], info["names"]) == (2, "encrypted")
        out = tmp_path / "tree"
        assert tools.decrypt_tree(kms, cipher, out).failed == []
    assert (out / "sub" / "frames.bin").read_bytes() == FRAMES
    assert (out / "sub" / LONG).read_bytes() == b"a long name\n"
    assert os.readlink(out / "sub" / "link") == "../hello.txt"
    assert (out / "sub" / "deeper" / "hardlink").read_bytes() == FRAMES  # (git keeps no hard links)
    assert stat.S_IMODE((out / "hello.txt").stat().st_mode) == 0o640
