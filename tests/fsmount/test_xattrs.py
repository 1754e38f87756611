"""Extended attributes through a real mount: user.* sealed on disk, the other namespaces refused."""

from __future__ import annotations

import errno
import os

import pytest

XATTR_CREATE, XATTR_REPLACE = os.XATTR_CREATE, os.XATTR_REPLACE
SECRET = b"the launch code is 0000"


@pytest.fixture
def d(shared_mount, request):
    p = shared_mount.path(request.node.name.replace("[", "_").replace("]", ""))
    p.mkdir()
    return p


def backing_of(mount, p):
    return mount.backing(str(p.relative_to(mount.point)))


def _errno(call, *args) -> int:
    with pytest.raises(OSError) as e:
        call(*args)
    return e.value.errno


def test_user_xattrs_on_files_and_directories_round_trip(d):
    f = d / "f"
    f.write_bytes(b"data")
    os.setxattr(f, "user.a", SECRET)
    os.setxattr(f, "user.empty", b"")
    os.setxattr(d, "user.dir", b"on a directory")
    assert os.getxattr(f, "user.a") == SECRET
    assert os.getxattr(f, "user.empty") == b""
    assert os.getxattr(d, "user.dir") == b"on a directory"
    assert sorted(os.listxattr(f)) == ["user.a", "user.empty"]
    os.setxattr(f, "user.a", b"replaced")
    assert os.getxattr(f, "user.a") == b"replaced"
    os.removexattr(f, "user.a")
    assert os.listxattr(f) == ["user.empty"]
    assert _errno(os.getxattr, f, "user.a") == errno.ENODATA
    assert _errno(os.removexattr, f, "user.a") == errno.ENODATA
    assert f.read_bytes() == b"data"


def test_create_and_replace_flags(d):
    f = d / "f"
    f.write_bytes(b"")
    assert _errno(os.setxattr, f, "user.x", b"1", XATTR_REPLACE) == errno.ENODATA
    os.setxattr(f, "user.x", b"1", XATTR_CREATE)
    assert _errno(os.setxattr, f, "user.x", b"2", XATTR_CREATE) == errno.EEXIST
    os.setxattr(f, "user.x", b"3", XATTR_REPLACE)
    assert os.getxattr(f, "user.x") == b"3"


def test_values_are_sealed_on_disk_and_never_logged(d, shared_mount):
    f = d / "f"
    f.write_bytes(b"")
    os.setxattr(f, "user.secret", SECRET)
    stored = os.getxattr(backing_of(shared_mount, f), shared_mount.xattr("user.secret"))
    assert SECRET not in stored and stored[:4] == b"KHEV"
    assert SECRET not in shared_mount.log.read_bytes()


def test_a_tampered_or_moved_value_is_eio_and_logged_without_the_value(d, shared_mount):
    f, g = d / "f", d / "g"
    f.write_bytes(b"")
    os.setxattr(f, "user.a", SECRET)
    os.setxattr(f, "user.b", b"other")
    back = backing_of(shared_mount, f)
    stored = bytearray(os.getxattr(back, shared_mount.xattr("user.a")))
    os.setxattr(back, shared_mount.xattr("user.b"), bytes(stored))  # a's value under the name b
    assert _errno(os.getxattr, f, "user.b") == errno.EIO
    stored[-1] ^= 1
    os.setxattr(back, shared_mount.xattr("user.a"), bytes(stored))  # a flipped bit
    assert _errno(os.getxattr, f, "user.a") == errno.EIO
    g.write_bytes(b"")
    os.setxattr(backing_of(shared_mount, g), shared_mount.xattr("user.plain"), b"not sealed")
    assert _errno(os.getxattr, g, "user.plain") == errno.EIO
    log = shared_mount.log.read_bytes()
    stored_b = shared_mount.xattr("user.b").encode()  # logged by its stored name (plaintext when names are)
    assert b"extended attribute " in log and stored_b in log and SECRET not in log and b"not sealed" not in log
    assert stored_b == b"user.b" or b"user.b" not in log
    assert b"Traceback" not in log


@pytest.mark.parametrize("name", ["security.test", "trusted.test", "system.test"])
def test_other_namespaces_are_refused_and_read_as_absent(d, name):
    f = d / "f"
    f.write_bytes(b"")
    assert _errno(os.setxattr, f, name, b"1") == errno.EOPNOTSUPP
    assert _errno(os.getxattr, f, name) == errno.ENODATA
    assert _errno(os.removexattr, f, name) == errno.EOPNOTSUPP


@pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* on the backing file needs root")
def test_backing_attributes_of_other_namespaces_are_not_listed(d, shared_mount):
    f = d / "f"
    f.write_bytes(b"")
    os.setxattr(backing_of(shared_mount, f), "trusted.overlay.opaque", b"y")
    os.setxattr(f, "user.shown", b"1")
    assert os.listxattr(f) == ["user.shown"]


def test_large_values_and_the_size_limit(d, shared_mount):
    f = d / "f"
    f.write_bytes(b"")
    big = os.urandom(3000)  # ext4 (the backing disk here) keeps all of a file's in one 4 KiB block
    os.setxattr(f, "user.big", big)
    assert os.getxattr(f, "user.big") == big
    overhead = len(os.getxattr(backing_of(shared_mount, f), shared_mount.xattr("user.big"))) - len(big)
    assert overhead < 200
    assert _errno(os.setxattr, f, "user.huge", os.urandom(65_536)) == errno.E2BIG
    assert os.listxattr(f) == ["user.big"]


def test_xattrs_survive_a_remount(mount):
    f = mount.path("f")
    f.write_bytes(b"")
    os.setxattr(f, "user.keep", SECRET)
    os.setxattr(mount.point, "user.top", b"root dir")
    mount.restart()
    assert os.getxattr(f, "user.keep") == SECRET
    assert os.getxattr(mount.point, "user.top") == b"root dir"


def test_xattrs_of_an_unlinked_open_file(d):
    f = d / "f"
    f.write_bytes(b"")
    fd = os.open(f, os.O_RDWR)
    try:
        os.unlink(f)
        os.setxattr(fd, "user.late", b"after unlink")
        assert os.getxattr(fd, "user.late") == b"after unlink"
    finally:
        os.close(fd)


def test_rewrap_to_another_key_rewraps_the_values_too(mount):
    import json
    import subprocess
    import sys

    from kmscore import Kms
    from kmscore.blob import peek_key

    f = mount.path("f")
    f.write_bytes(b"")
    os.setxattr(f, "user.keep", SECRET)
    os.setxattr(mount.point, "user.top", b"top")
    mount.stop()
    with Kms(mount.home, caller="test") as k:
        other = k.create_key("app/other").key_id
    done = subprocess.run(
        [sys.executable, "-m", "kmscore.cli.main", "--home", str(mount.home), "fs", "rewrap", str(mount.cipher),
         "--to-key", "app/other", "--json"], capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["xattrs"] == 2
    for p, name in ((mount.backing("f"), "user.keep"), (mount.cipher, "user.top")):
        stored = os.getxattr(p, mount.xattr(name))
        assert peek_key(stored[30 : 30 + int.from_bytes(stored[28:30], "big")])[0] == other
    mount.start()
    assert os.getxattr(f, "user.keep") == SECRET
    assert os.getxattr(mount.point, "user.top") == b"top"


def test_a_mount_without_xattrs_refuses_them_and_the_kernel_stops_asking(mount_with):
    m = mount_with("--no-xattrs", "--debug")
    f = m.path("f")
    f.write_bytes(b"")
    with pytest.raises(OSError) as e:
        os.setxattr(f, "user.a", b"1")
    assert e.value.errno == errno.EOPNOTSUPP
    with open(f, "ab") as out:
        for _ in range(5):
            out.write(b"x")
            out.flush()
    assert m.log.read_text().count("GETXATTR") <= 1  # at most the first ask, then none
