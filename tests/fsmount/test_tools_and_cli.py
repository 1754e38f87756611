"""Offline tools and the command line, against real cipher directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kmscore import Kms

from fsmount.mount import is_mounted
from fsmount.tree_names import TreeNames


def kms(home, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kmscore.cli.main", "--home", str(home), *args], capture_output=True, text=True)


def kms_mount(home, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fsmount.cli", "--home", str(home), *args], capture_output=True, text=True)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [l for l in done.stderr.strip().splitlines() if ": warning: " not in l]  # other front ends' notices
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture
def filled(mount):
    files = {"a": os.urandom(100_000), "sub/b": os.urandom(5), "empty": b"", "big": os.urandom(1_000_000)}
    (mount.point / "sub").mkdir()
    for name, data in files.items():
        mount.path(name).write_bytes(data)
    mount.stop()
    return mount, files


def test_info(filled):
    mount, files = filled
    done = kms(mount.home, "fs", "info", str(mount.backing("a")), "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["plaintext_size"] == 100_000 and info["frame_size"] == 32768 and info["frames"] == 4
    assert info["key_alias"] == "fsmount/default" and info["key_version"] == 1


def test_decrypt_recovers_without_a_mount(filled, tmp_path):
    mount, files = filled
    for name, data in files.items():
        out = tmp_path / name.replace("/", "_")
        done = kms(mount.home, "fs", "decrypt", str(mount.backing(name)), str(out))
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == data


def test_decrypt_refuses_damage_and_writes_nothing(filled, tmp_path):
    mount, _ = filled
    p = mount.backing("big")
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 1
    p.write_bytes(bytes(raw))
    out = tmp_path / "out"
    line = one_line_error(kms(mount.home, "fs", "decrypt", str(p), str(out)))
    assert "failed authentication" in line and not out.exists()


def test_fsck_clean_then_damage_by_file_and_frame(filled):
    mount, _ = filled
    done = kms(mount.home, "fs", "fsck", str(mount.cipher))
    assert done.returncode == 0, done.stderr
    assert "4 files" in done.stdout and "no damage" in done.stdout
    p = mount.backing("big")
    raw = bytearray(p.read_bytes())
    header = 30 + int.from_bytes(raw[28:30], "big")
    for frame in (3, 7):
        raw[header + frame * (32768 + 28) + 50] ^= 0x80
    p.write_bytes(bytes(raw))
    os.truncate(mount.backing("a"), os.path.getsize(mount.backing("a")) - 10)
    done = kms(mount.home, "fs", "fsck", str(mount.cipher), "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    damage = {(d["file"], d["frame"]) for d in report["damage"]}
    assert ("big", 3) in damage and ("big", 7) in damage
    assert any(f == "a" for f, _ in damage)
    assert not any(f in ("empty", "sub/b") for f, _ in damage)


def test_rewrap_after_rotation_and_to_another_key(filled):
    mount, files = filled
    with Kms(mount.home, caller="test") as k:
        k.rotate_key("fsmount/default")
        k.create_key("app/other")
    done = kms(mount.home, "fs", "rewrap", str(mount.cipher), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rewrapped"] == 4
    assert json.loads(kms(mount.home, "fs", "info", str(mount.backing("a")), "--json").stdout)["key_version"] == 2
    again = kms(mount.home, "fs", "rewrap", str(mount.cipher), "--json")  # safe to re-run
    assert json.loads(again.stdout)["already_current"] == 4
    done = kms(mount.home, "fs", "rewrap", str(mount.cipher), "--to-key", "app/other", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(kms(mount.home, "fs", "info", str(mount.backing("a")), "--json").stdout)
    assert info["key_alias"] == "app/other"
    mount.start()  # the directory now belongs to app/other: mounting without --key works
    for name, data in files.items():
        assert mount.path(name).read_bytes() == data
    mount.path("new").write_bytes(b"n")
    mount.stop()
    assert json.loads(kms(mount.home, "fs", "info", str(mount.backing("new")), "--json").stdout)["key_alias"] == "app/other"


def test_rewrap_of_a_mounted_directory_works_but_moving_it_to_another_key_is_refused(mount):
    done = kms(mount.home, "fs", "rewrap", str(mount.cipher))
    assert done.returncode == 0, done.stderr
    with Kms(mount.home, caller="test") as k:
        k.create_key("app/moved")
    line = one_line_error(kms(mount.home, "fs", "rewrap", str(mount.cipher), "--to-key", "app/moved"))
    assert "is mounted" in line and "unmount" in line


def test_a_mounted_directory_whose_path_has_a_space_is_known_to_be_mounted(home, tmp_path, mount_at):
    """/proc/self/mountinfo escapes a space as \\040: the source must be read unescaped,
    or a mounted cipher dir looks unmounted and may be moved to another key under the mount."""
    cipher, point = tmp_path / "cipher dir", tmp_path / "plain dir"
    cipher.mkdir()
    point.mkdir()
    m = mount_at(home, cipher, point, tmp_path / "mount.log")
    with Kms(m.home, caller="test") as k:
        k.create_key("app/moved")
    line = one_line_error(kms(m.home, "fs", "rewrap", str(cipher), "--to-key", "app/moved"))
    assert "is mounted" in line and "unmount" in line


def test_other_key_is_refused_unless_forced(filled):
    mount, files = filled
    with Kms(mount.home, caller="test") as k:
        k.create_key("app/x")
    line = one_line_error(kms_mount(mount.home, str(mount.cipher), str(mount.point), "--key", "app/x"))
    assert "was set up with key fsmount/default" in line and "--force-key" in line
    mount.start("--key", "app/x", "--force-key")
    assert mount.path("a").read_bytes() == files["a"]  # old files keep their own key
    mount.path("n").write_bytes(b"new")
    mount.stop()
    assert json.loads(kms(mount.home, "fs", "info", str(mount.backing("n")), "--json").stdout)["key_alias"] == "app/x"


def test_altered_config_is_refused(filled):
    mount, _ = filled
    conf = mount.cipher / "keyhold-fsmount.conf"
    data = json.loads(conf.read_text())
    data["frame_size"] = 4096
    conf.write_text(json.dumps(data))
    line = one_line_error(kms_mount(mount.home, str(mount.cipher), str(mount.point)))
    assert "was altered" in line
    conf.write_text("{not json")
    assert "is damaged" in one_line_error(kms_mount(mount.home, str(mount.cipher), str(mount.point)))


def test_bad_inputs_get_one_line_errors(home, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "mp").mkdir()
    assert "not empty" in one_line_error(kms_mount(home, str(tmp_path / "full"), str(tmp_path / "mp")))
    assert "does not exist" in one_line_error(kms_mount(home, str(tmp_path / "nope"), str(tmp_path / "mp")))
    (tmp_path / "c").mkdir()
    assert "does not exist" in one_line_error(kms_mount(home, str(tmp_path / "c"), str(tmp_path / "nope")))
    assert "no key" in one_line_error(kms_mount(home, str(tmp_path / "c"), str(tmp_path / "mp"), "--key", "no/such"))
    assert "not mounted" in one_line_error(kms(home, "unmount", str(tmp_path / "mp")))
    assert "not a keyhold envelope" in one_line_error(kms(home, "fs", "info", str(tmp_path / "full" / "x")))
    assert "not a keyhold cipher directory" in one_line_error(kms(home, "fs", "fsck", str(tmp_path / "full")))


def test_kms_mount_standalone_unmount_flag(mount):
    done = kms_mount(mount.home, "-u", str(mount.point))
    assert done.returncode == 0, done.stderr
    assert mount.proc.wait(timeout=30) == 0
    assert not is_mounted(mount.point)


def test_kms_mount_background_and_unmount(home, tmp_path):
    c, p = tmp_path / "c", tmp_path / "p"
    c.mkdir()
    p.mkdir()
    done = kms(home, "mount", str(c), str(p), "--background", "--log", str(tmp_path / "bg.log"))
    assert done.returncode == 0, done.stderr
    try:
        assert is_mounted(p)
        (p / "f").write_bytes(b"through kms mount")
        line = one_line_error(kms(home, "mount", str(c), str(p), "--background"))
        assert "already mounted (keyhold:" in line
    finally:
        done = kms(home, "unmount", str(p))
    assert done.returncode == 0, done.stderr
    assert not is_mounted(p)
    with Kms(home, caller="test") as k:
        backing = TreeNames(k, c).backing_of("/f")
    assert b"through kms mount" not in backing.read_bytes()
    out = tmp_path / "out"
    assert kms(home, "fs", "decrypt", str(backing), str(out)).returncode == 0
    assert out.read_bytes() == b"through kms mount"
