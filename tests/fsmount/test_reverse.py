"""Reverse mode: a read-only, deterministic encrypted view of a plain directory, backed
up with rsync twice (the second run transfers nothing) and restored with `kms fs decrypt`."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kmscore import Kms

from fsmount import tools

MARKER = "ZQXreverseQXZ"
CLI = [sys.executable, "-m", "kmscore.cli.main"]

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="needs rsync")


def plain_tree(root: Path) -> None:
    (root / f"dir-{MARKER}" / "sub").mkdir(parents=True)
    (root / f"{MARKER}.bin").write_bytes(os.urandom(100_000))
    (root / "exact").write_bytes(os.urandom(32768))
    (root / "empty").write_bytes(b"")
    (root / f"dir-{MARKER}" / "sub" / "note").write_bytes(f"text with {MARKER}".encode())
    (root / (MARKER * 20)[:250]).write_bytes(b"long name")
    os.symlink(f"dir-{MARKER}/sub/note", root / f"link-{MARKER}")
    os.chmod(root / "exact", 0o640)


def rsync(src: Path, dst: Path, *extra: str) -> str:
    done = subprocess.run(["rsync", "-a", "--stats", *extra, f"{src}/", f"{dst}/"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_rsync_twice_then_restore(home, tmp_path, mount_at):
    plain, view, copy = tmp_path / "plain", tmp_path / "view", tmp_path / "copy"
    for d in (plain, view, copy):
        d.mkdir()
    plain_tree(plain)
    m = mount_at(home, plain, view, tmp_path / "reverse.log", "--reverse")
    assert "Number of regular files transferred: 7" in rsync(view, copy)  # 6 files and the config
    with pytest.raises(OSError) as e:
        (view / "new").write_bytes(b"x")
    assert e.value.errno == errno.EROFS
    m.restart("--reverse")  # a new mount: the same keys, the same bytes
    second = rsync(view, copy, "--checksum")  # compare contents, not only sizes and times
    assert "Number of regular files transferred: 0" in second, second
    data = b"".join(p.name.encode() + (p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
                    for p in copy.rglob("*"))
    assert MARKER.encode() not in data and all(MARKER not in os.readlink(p) for p in copy.rglob("*") if p.is_symlink())
    (plain / "exact").write_bytes(os.urandom(32768))  # one file changes: only it is sent again
    os.chmod(plain / "exact", 0o640)
    assert "Number of regular files transferred: 1" in rsync(view, copy, "--checksum")
    m.stop()
    out = tmp_path / "restored"
    done = subprocess.run([*CLI, "--home", str(home), "fs", "decrypt", str(copy), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    diff = subprocess.run(["diff", "-r", "--no-dereference", str(plain), str(out)], capture_output=True, text=True)
    assert diff.stdout.strip() == f"Only in {plain}: .keyhold-reverse.conf", diff.stdout
    assert (out / "exact").stat().st_mode & 0o777 == 0o640
    with Kms(home, caller="test") as kms:
        assert tools.fsck(kms, copy).clean


def test_a_copy_of_the_view_mounts_forward(home, tmp_path, mount_at):
    plain, view, copy = tmp_path / "plain", tmp_path / "view", tmp_path / "copy"
    for d in (plain, view, copy):
        d.mkdir()
    plain_tree(plain)
    m = mount_at(home, plain, view, tmp_path / "reverse.log", "--reverse")
    rsync(view, copy)
    m.stop()
    (tmp_path / "fwd-point").mkdir()
    fwd = mount_at(home, copy, tmp_path / "fwd-point", tmp_path / "fwd.log")
    assert (fwd.point / f"dir-{MARKER}" / "sub" / "note").read_bytes() == f"text with {MARKER}".encode()
    assert (fwd.point / (MARKER * 20)[:250]).read_bytes() == b"long name"
    assert os.readlink(fwd.point / f"link-{MARKER}") == f"dir-{MARKER}/sub/note"
    (fwd.point / "added").write_bytes(b"forward writes work too")
    assert (fwd.point / "added").read_bytes() == b"forward writes work too"
