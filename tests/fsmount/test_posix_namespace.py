"""The namespace layer through a real mount: deep trees, device nodes, hard links'
attributes, unlinked open files, and the names the mount keeps for itself."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys

import pytest

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs a root mount")
NAME = "d" * 200


@pytest.fixture
def d(shared_mount, request):
    p = shared_mount.path(request.node.name.replace("[", "_").replace("]", ""))
    p.mkdir()
    return p


def _descend(top, depth: int) -> list[int]:
    """Directory fds of top/NAME/NAME/... `depth` levels deep (each mkdir relative to the last)."""
    fds = [os.open(top, os.O_RDONLY | os.O_DIRECTORY)]
    for _ in range(depth):
        os.mkdir(NAME, 0o755, dir_fd=fds[-1])
        fds.append(os.open(NAME, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
    return fds


def test_a_tree_deeper_than_path_max_works_for_every_call(d, shared_mount):
    depth = 40  # 40 * 201 bytes: the mount path alone is twice PATH_MAX
    fds = _descend(d, depth)
    try:
        bottom = fds[-1]
        fd = os.open("f", os.O_CREAT | os.O_RDWR, 0o644, dir_fd=bottom)
        os.write(fd, b"deep data")
        os.close(fd)
        fd = os.open("f", os.O_RDONLY, dir_fd=bottom)
        assert os.read(fd, 100) == b"deep data"
        os.close(fd)
        assert os.stat("f", dir_fd=bottom).st_size == 9
        os.chmod("f", 0o600, dir_fd=bottom)
        assert stat.S_IMODE(os.stat("f", dir_fd=bottom).st_mode) == 0o600
        os.utime("f", ns=(10**18, 10**18), dir_fd=bottom)
        assert os.stat("f", dir_fd=bottom).st_mtime_ns == 10**18
        os.link("f", "g", src_dir_fd=bottom, dst_dir_fd=bottom)
        os.rename("g", "h", src_dir_fd=bottom, dst_dir_fd=bottom)
        os.symlink("f", "s", dir_fd=bottom)
        assert os.readlink("s", dir_fd=bottom) == "f"
        os.mkfifo("p", dir_fd=bottom)
        os.truncate(f"/proc/self/fd/{bottom}/h", 3)
        assert sorted(os.listdir(bottom)) == ["f", "h", "p", "s"]
        for name in ("f", "h", "p", "s"):
            os.unlink(name, dir_fd=bottom)
        for level in range(depth, 0, -1):
            os.rmdir(NAME, dir_fd=fds[level - 1])
    finally:
        for fd in fds:
            os.close(fd)
    assert os.listdir(d) == []
    assert "Traceback" not in shared_mount.log.read_text()


@root_only
@pytest.mark.parametrize("kind", [stat.S_IFCHR, stat.S_IFBLK])
def test_device_nodes_are_made_as_they_are(d, kind):
    os.mknod(d / "dev", kind | 0o640, os.makedev(1, 3))
    st = os.lstat(d / "dev")
    assert stat.S_IFMT(st.st_mode) == kind and stat.S_IMODE(st.st_mode) == 0o640
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    os.unlink(d / "dev")


def test_fifos_and_sockets_are_made(d):
    os.mkfifo(d / "fifo", 0o600)
    assert stat.S_ISFIFO(os.lstat(d / "fifo").st_mode)
    os.mknod(d / "sock", stat.S_IFSOCK | 0o600)
    assert stat.S_ISSOCK(os.lstat(d / "sock").st_mode)


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_a_change_through_one_hard_link_shows_at_once_through_the_others(d, kind):
    a, b, c = d / "a", d / "b", d / "c"
    if kind == "file":
        a.write_bytes(b"0123456789")
    else:
        os.mkfifo(a)
    os.link(a, b)
    os.link(b, c)
    for p in (a, b, c):
        os.lstat(p)  # every name's attributes in the kernel's cache
    os.chmod(b, 0o604)
    os.chown(b, 65534, 65533)
    os.utime(b, ns=(5 * 10**17, 6 * 10**17))
    for p in (a, c):
        st = os.lstat(p)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns) == (0o604, 65534, 65533, 6 * 10**17)
    if kind == "file":
        os.truncate(b, 4)
        assert os.lstat(a).st_size == os.lstat(c).st_size == 4
    os.unlink(c)
    assert os.lstat(a).st_nlink == 2


def test_a_hard_link_in_a_renamed_directory_still_gets_fresh_attributes(d):
    (d / "x").mkdir()
    (d / "x" / "a").write_bytes(b"1")
    os.link(d / "x" / "a", d / "b")
    os.lstat(d / "x" / "a")
    os.rename(d / "x", d / "y")
    os.lstat(d / "y" / "a")
    os.chmod(d / "b", 0o611)
    assert stat.S_IMODE(os.lstat(d / "y" / "a").st_mode) == 0o611


def test_an_unlinked_open_file_can_be_stated_changed_read_and_written(d, shared_mount):
    p = d / "f"
    p.write_bytes(b"hello")
    fd = os.open(p, os.O_RDWR)
    try:
        os.unlink(p)
        st = os.fstat(fd)
        assert st.st_nlink == 0 and st.st_size == 5
        os.fchmod(fd, 0o600)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
        os.fchown(fd, 65534, 65534)
        assert os.fstat(fd).st_uid == 65534
        os.pwrite(fd, b" world", 5)
        os.ftruncate(fd, 11)
        assert os.pread(fd, 100, 0) == b"hello world"
        assert os.listdir(d) == []  # libfuse's hidden name does not show
        os.rmdir(d)  # nor keep its directory from going away
        assert os.pread(fd, 5, 0) == b"hello"  # (fstat now: ESTALE, libfuse lost the path)
    finally:
        os.close(fd)
    d.mkdir()
    trash = shared_mount.cipher / ".keyhold-unlinked"
    assert list(trash.iterdir()) == []  # the last close removed it


def test_renaming_over_an_open_file_keeps_its_contents_for_the_opener(d):
    (d / "old").write_bytes(b"old contents")
    (d / "new").write_bytes(b"new contents")
    fd = os.open(d / "old", os.O_RDONLY)
    try:
        os.rename(d / "new", d / "old")
        assert os.pread(fd, 100, 0) == b"old contents"
        assert os.fstat(fd).st_nlink == 0
        assert (d / "old").read_bytes() == b"new contents"
        assert sorted(os.listdir(d)) == ["old"]
    finally:
        os.close(fd)


def test_the_mounts_own_names_cannot_be_made_or_reached(d, shared_mount):
    for name in (".fuse_hidden0000000100000001", ".fuse_hiddenx"):
        with pytest.raises(OSError) as e:
            (d / name).write_bytes(b"x")
        assert e.value.errno == errno.EPERM
        with pytest.raises(OSError) as e:
            os.mkdir(d / name)
        assert e.value.errno == errno.EPERM
    for name in ("keyhold-fsmount.conf", ".keyhold-unlinked"):
        assert name not in os.listdir(shared_mount.point)
        with pytest.raises(OSError) as e:
            os.mkdir(shared_mount.path(name))
        assert e.value.errno == errno.EPERM


def test_files_left_unlinked_by_a_killed_mount_are_removed_at_the_next_mount(mount):
    p = mount.path("f")
    p.write_bytes(b"x" * 1000)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os,sys,time; fd=os.open(sys.argv[1], os.O_RDONLY); os.unlink(sys.argv[1]); print('ok', flush=True); time.sleep(60)", str(p)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ok"
        trash = mount.cipher / ".keyhold-unlinked"
        assert len(list(trash.iterdir())) == 1
        mount.kill9()
    finally:
        holder.kill()
        holder.wait()
    mount.start()
    assert list((mount.cipher / ".keyhold-unlinked").iterdir()) == []
    assert os.listdir(mount.point) == []


def test_an_unlinked_file_is_not_reachable_through_another_directory(d, shared_mount):
    (d / "private").mkdir(mode=0o700)
    (d / "public").mkdir()
    p = d / "private" / "f"
    p.write_bytes(b"private data")
    fd = os.open(p, os.O_RDONLY)
    try:
        os.unlink(p)
        hidden = [n for n in os.listdir(shared_mount.cipher / ".keyhold-unlinked")]
        assert len(hidden) == 1
        with pytest.raises(FileNotFoundError):
            os.stat(d / "public" / hidden[0])
        with pytest.raises(FileNotFoundError):
            (d / "public" / hidden[0]).read_bytes()
        assert os.pread(fd, 100, 0) == b"private data"
    finally:
        os.close(fd)
