"""Format 2: encrypted names, symlink targets and xattr names, on real mounts.

The codec itself (fsmount.names) is tested with vectors in test_names_codec.py; here a
tree is made through a mount and its cipher directory is searched byte by byte.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kmscore import Kms

from fsmount import tools

MARKER = "ZQXmarkerQXZ"
CLI = [sys.executable, "-m", "kmscore.cli.main"]


def every_byte(cipher: Path) -> bytes:
    """Everything an attacker with the backing disk reads: names, contents, symlink
    targets, xattr names and values."""
    out = bytearray()
    for top, dirs, files in os.walk(cipher):
        for name in dirs + files:
            p = Path(top, name)
            out += name.encode("utf-8", "surrogateescape") + b"\n"
            if p.is_symlink():
                out += os.fsencode(os.readlink(p)) + b"\n"
            elif p.is_file():
                out += p.read_bytes()
            for attr in os.listxattr(p, follow_symlinks=False):
                out += attr.encode() + os.getxattr(p, attr, follow_symlinks=False)
    for attr in os.listxattr(cipher):
        out += attr.encode() + os.getxattr(cipher, attr)
    return bytes(out)


def make_marked_tree(root: Path) -> None:
    (root / f"{MARKER}.txt").write_bytes(b"contents")
    (root / f"dir-{MARKER}" / f"sub-{MARKER}").mkdir(parents=True)
    (root / f"dir-{MARKER}" / f"sub-{MARKER}" / f"file-{MARKER}").write_bytes(b"x")
    os.symlink(f"../target-{MARKER}/x", root / f"dir-{MARKER}" / f"link-{MARKER}")
    os.link(root / f"{MARKER}.txt", root / f"dir-{MARKER}" / f"hard-{MARKER}")
    os.mkfifo(root / f"fifo-{MARKER}")
    long = (MARKER * 30)[:255]
    (root / long).write_bytes(b"long")
    os.mkdir(root / f"dir-{MARKER}" / long[:200])
    os.setxattr(root / f"{MARKER}.txt", f"user.{MARKER}", f"value-{MARKER}".encode())
    os.setxattr(root / f"dir-{MARKER}", f"user.dir-{MARKER}", b"v")


@pytest.mark.parametrize("scheme", ["encrypted", "deterministic"])
def test_no_name_target_or_xattr_reaches_the_cipher_dir(mount_with, scheme):
    m = mount_with(*([] if scheme == "encrypted" else ["--names", scheme]))
    make_marked_tree(m.point)
    assert os.getxattr(m.path(f"{MARKER}.txt"), f"user.{MARKER}") == f"value-{MARKER}".encode()
    assert os.listxattr(m.path(f"{MARKER}.txt")) == [f"user.{MARKER}"]
    assert os.readlink(m.path(f"dir-{MARKER}/link-{MARKER}")) == f"../target-{MARKER}/x"
    m.stop()
    data = every_byte(m.cipher)
    assert len(data) > 1000  # the walk saw the tree
    assert MARKER.encode() not in data
    assert MARKER[::-1].encode() not in data and MARKER.lower().encode() not in data
    m.start()
    assert (m.path(f"dir-{MARKER}") / f"sub-{MARKER}" / f"file-{MARKER}").read_bytes() == b"x"
    assert os.lstat(m.path(f"dir-{MARKER}/link-{MARKER}")).st_size == len(f"../target-{MARKER}/x")


def test_same_names_differ_between_directories_unless_deterministic(mount_with, tmp_path):
    for scheme in ("encrypted", "deterministic"):
        m = mount_with("--names", scheme) if scheme == "deterministic" else mount_with()
        for d in ("a", "b"):
            (m.point / d).mkdir()
            (m.point / d / "same").write_bytes(b"")
        names = [set(os.listdir(m.backing(d))) - {"keyhold.diriv"} for d in ("a", "b")]
        assert (names[0] == names[1]) == (scheme == "deterministic"), scheme
        assert "same" not in names[0]
        m.stop()
        for p in list(m.cipher.iterdir()):
            subprocess.run(["rm", "-rf", str(p)], check=True)


def test_renames_links_long_names_and_deep_trees(mount):
    p = mount.point
    long = "é" * 127 + "x"  # 255 bytes of UTF-8
    assert len(long.encode()) == 255
    (p / "a" / "b").mkdir(parents=True)
    (p / "a" / "b" / long).write_bytes(b"long one")
    assert os.listdir(p / "a" / "b") == [long]
    assert _errno(lambda: (p / ("y" * 256)).write_bytes(b"")) == errno.ENAMETOOLONG
    os.rename(p / "a" / "b" / long, p / "a" / (long[:-1] + "z"))  # long -> long, another directory
    os.rename(p / "a" / (long[:-1] + "z"), p / "short")  # long -> short
    os.rename(p / "short", p / "a" / long)  # short -> long
    os.link(p / "a" / long, p / "a" / "b" / (long[:-1] + "h"))
    assert os.stat(p / "a" / long).st_nlink == 2
    os.unlink(p / "a" / long)
    assert (p / "a" / "b" / (long[:-1] + "h")).read_bytes() == b"long one"
    os.rename(p / "a", p / "A")  # a directory moves with its value: the names below stay readable
    assert (p / "A" / "b" / (long[:-1] + "h")).read_bytes() == b"long one"
    (p / "e").mkdir()
    os.rename(p / "A" / "b", p / "e")  # onto an empty directory
    assert os.listdir(p / "e") == [long[:-1] + "h"]
    os.mkdir(p / "A" / "b")  # a new directory at an old name: a new value, nothing stale
    (p / "A" / "b" / "n").write_bytes(b"n")
    assert os.listdir(p / "A" / "b") == ["n"]
    fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(40):  # ~6 KiB of path in the mount, ~9.5 KiB in the cipher dir: past PATH_MAX
            os.mkdir(f"level-{i:02d}-{'d' * 150}", dir_fd=fd)
            fd, old = os.open(f"level-{i:02d}-{'d' * 150}", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
            os.close(old)
        with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(b"deep")
        os.rename("leaf", "leaf-" + long[:125], src_dir_fd=fd, dst_dir_fd=fd)  # a 255-byte name down there
        assert os.listdir(fd) == ["leaf-" + long[:125]]
        with open(os.open("leaf-" + long[:125], os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == b"deep"
    finally:
        os.close(fd)
    for top in ("A", "e", "level-00-" + "d" * 150):  # rmdir of non-empty directories
        assert _errno(lambda: os.rmdir(p / top)) == errno.ENOTEMPTY
    os.unlink(p / "A" / "b" / "n")
    os.rmdir(p / "A" / "b")
    assert sorted(os.listdir(p / "A")) == []
    subprocess.run(["rm", "-rf", str(p / ("level-00-" + "d" * 150))], check=True)  # (fts: dir fds, any depth)
    assert sorted(os.listdir(p)) == ["A", "e"]
    mount.stop()
    with Kms(mount.home, caller="test") as kms:
        report = tools.fsck(kms, mount.cipher)
        assert report.clean, report.damage
        out = mount.cipher.parent / "restored"
        restored = tools.decrypt_tree(kms, mount.cipher, out)
        assert restored.failed == []
    assert (out / "e" / (long[:-1] + "h")).read_bytes() == b"long one"
    # nothing left behind: one side file per long entry
    sides = [n for _, _, files in os.walk(mount.cipher) for n in files if n.endswith(".name")]
    assert len(sides) == 1


def test_a_tampered_name_is_hidden_logged_and_found_by_fsck(mount):
    (mount.point / "d").mkdir()
    (mount.point / "d" / "victim").write_bytes(b"v")
    (mount.point / "d" / "other").write_bytes(b"o")
    mount.stop()
    b = mount.backing("/d/victim")
    b.rename(b.with_name(b.name[:-2] + ("AA" if not b.name.endswith("AA") else "BB")))  # a changed name
    (mount.backing("/d/other")).rename(mount.backing("/") / mount.backing("/d/other").name)  # moved to another directory
    with Kms(mount.home, caller="test") as kms:
        report = tools.fsck(kms, mount.cipher)
    problems = [p for _, _, p in report.damage]
    assert len(problems) == 2 and all("name does not decrypt" in p for p in problems)
    mount.start()
    assert os.listdir(mount.point / "d") == []
    assert sorted(os.listdir(mount.point)) == ["d"]
    log = mount.log.read_text()
    assert "do not decrypt" in log and "Traceback" not in log


def test_options_are_recorded_and_kept(mount_with, home, tmp_path):
    m = mount_with("--names", "deterministic")
    m.stop()
    done = subprocess.run([*CLI, "--home", str(home), "fs", "info", str(m.cipher), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert {k: json.loads(done.stdout)[k] for k in ("format_version", "names")} == {"format_version": 2, "names": "deterministic"}
    with pytest.raises(RuntimeError, match="was set up with names = 'deterministic'"):
        m.start("--names", "encrypted")
    conf = m.cipher / "keyhold-fsmount.conf"
    data = json.loads(conf.read_text())
    data["names"] = "encrypted"  # an edited scheme does not open
    conf.write_text(json.dumps(data))
    with pytest.raises(RuntimeError, match="altered"):
        m.start()


def test_plain_names_in_format_2_are_visible(mount_with):
    m = mount_with("--names", "plain")
    (m.point / "visible").write_bytes(b"x")
    os.symlink("target", m.point / "l")
    assert (m.cipher / "visible").is_file() and os.readlink(m.cipher / "l") == "target"
    assert not (m.cipher / "keyhold.diriv").exists()


def test_info_maps_backing_and_plaintext_paths(mount, home):
    (mount.point / "docs").mkdir()
    (mount.point / "docs" / "salaries.xlsx").write_bytes(b"123")
    mount.stop()

    def info(*args: str) -> dict:
        done = subprocess.run([*CLI, "--home", str(home), "fs", "info", *args, "--json"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    forward = info(str(mount.cipher), "--plain", "/docs/salaries.xlsx")
    backing = Path(forward["backing_path"])
    assert backing.is_file() and "salaries" not in str(backing)
    back = info(str(backing))
    assert back["plaintext_path"] == "/docs/salaries.xlsx" and back["plaintext_size"] == 3
    assert info(str(backing.parent))["plaintext_path"] == "/docs"


def test_kms_fs_decrypt_restores_a_tree(mount, home, tmp_path):
    make_marked_tree(mount.point)
    mount.stop()
    out = tmp_path / "restored"
    done = subprocess.run([*CLI, "--home", str(home), "fs", "decrypt", str(mount.cipher), str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / f"{MARKER}.txt").read_bytes() == b"contents"
    assert os.readlink(out / f"dir-{MARKER}" / f"link-{MARKER}") == f"../target-{MARKER}/x"
    assert os.path.samefile(out / f"{MARKER}.txt", out / f"dir-{MARKER}" / f"hard-{MARKER}")
    assert os.getxattr(out / f"{MARKER}.txt", f"user.{MARKER}") == f"value-{MARKER}".encode()
    assert (out / (MARKER * 30)[:255]).read_bytes() == b"long"
    again = subprocess.run([*CLI, "--home", str(home), "fs", "decrypt", str(mount.cipher), str(out)],
                           capture_output=True, text=True)
    assert again.returncode != 0 and "not an empty directory" in again.stderr and "Traceback" not in again.stderr


def test_xattr_names_too_long_to_encrypt_are_refused(mount):
    f = mount.point / "f"
    f.write_bytes(b"")
    os.setxattr(f, "user." + "n" * 150, b"fits")
    assert _errno(lambda: os.setxattr(f, "user." + "n" * 200, b"no")) == errno.ERANGE
    assert os.listxattr(f) == ["user." + "n" * 150]


def _errno(call) -> int:
    with pytest.raises(OSError) as e:
        call()
    return e.value.errno


def test_symlink_targets_up_to_path_max(mount):
    p = mount.point
    target = (("t" * 200 + f"/{MARKER}/") * 20)[:4095]
    os.symlink(target, p / "long-link")
    os.symlink("short", p / "short-link")
    assert os.readlink(p / "long-link") == target and os.lstat(p / "long-link").st_size == len(target) == 4095
    os.rename(p / "long-link", p / "moved")
    os.link(p / "moved", p / "second", follow_symlinks=False)  # a hard link of the symlink itself
    os.unlink(p / "moved")
    assert os.readlink(p / "second") == target
    mount.stop()
    assert MARKER.encode() not in every_byte(mount.cipher)
    with Kms(mount.home, caller="test") as kms:
        assert tools.fsck(kms, mount.cipher).clean
    mount.start()
    assert os.readlink(p / "second") == target
    os.rename(p / "short-link", p / "second")  # replaces the last name of the long one
    assert os.readlink(p / "second") == "short"
    assert os.listdir(mount.cipher / "keyhold.longlinks") == []


def test_an_xattr_name_too_long_to_set_reads_as_absent(mount):
    f = mount.point / "f"
    f.write_bytes(b"")
    assert _errno(lambda: os.getxattr(f, "user." + "n" * 200)) == errno.ENODATA
    assert _errno(lambda: os.removexattr(f, "user." + "n" * 200)) == errno.ENODATA


def test_rewrap_moves_the_name_key_to_the_newest_key_version(mount, home):
    import base64

    from kmscore.blob import peek_key

    (mount.point / "kept").write_bytes(b"k")
    mount.stop()
    with Kms(home, caller="test") as kms:
        rotated = kms.rotate_key("fsmount/default")
        report = tools.rewrap(kms, mount.cipher)
    assert not report.failed
    conf = json.loads((mount.cipher / "keyhold-fsmount.conf").read_text())
    assert peek_key(base64.b64decode(conf["name_key"]))[1] == rotated.current_version
    mount.start()
    assert (mount.point / "kept").read_bytes() == b"k"
