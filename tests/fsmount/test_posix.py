"""POSIX behaviour through a real mount, with ordinary file APIs only."""

from __future__ import annotations

import ctypes
import errno
import os
import pwd
import shutil
import stat
import subprocess
import sys
import threading

import pytest

AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old, new, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@pytest.fixture
def d(shared_mount, request):
    """A fresh directory in the shared mount for one test."""
    p = shared_mount.path(request.node.name.replace("[", "_").replace("]", ""))
    p.mkdir()
    return p


def test_create_write_read_roundtrip(d):
    data = os.urandom(200_000)
    (d / "f").write_bytes(data)
    assert (d / "f").read_bytes() == data
    assert os.stat(d / "f").st_size == len(data)


def test_write_at_any_offset_and_read_slices(d):
    p = d / "f"
    base = bytearray(os.urandom(300_000))
    p.write_bytes(base)
    with open(p, "r+b") as f:
        for off, n in ((0, 1), (32767, 2), (32768, 32768), (65000, 70000), (299_999, 1), (123, 4096)):
            chunk = os.urandom(n)
            f.seek(off)
            f.write(chunk)
            base[off : off + n] = chunk
    assert p.read_bytes() == bytes(base)
    with open(p, "rb") as f:
        for off, n in ((0, 10), (32760, 20), (100_000, 65536), (299_990, 100)):
            f.seek(off)
            assert f.read(n) == bytes(base[off : off + n])


def test_sparse_hole_reads_as_zeros(d):
    p = d / "sparse"
    with open(p, "wb") as f:
        f.write(b"start")
        f.seek(5_000_000)
        f.write(b"end")
    data = p.read_bytes()
    assert len(data) == 5_000_003 == os.stat(p).st_size
    assert data[:5] == b"start" and data[-3:] == b"end" and data[5:-3] == bytes(5_000_000 - 5)


def test_append(d):
    p = d / "log"
    expect = b""
    for i in range(50):
        line = f"line {i} ".encode() * (i + 1)
        with open(p, "ab") as f:
            f.write(line)
        expect += line
    assert p.read_bytes() == expect


def test_append_through_two_handles_at_once(d):
    p = d / "two"
    a, b = open(p, "ab"), open(p, "ab")
    try:
        for i in range(20):
            a.write(b"A" * 1000)
            a.flush()
            b.write(b"B" * 1000)
            b.flush()
    finally:
        a.close()
        b.close()
    assert p.read_bytes() == (b"A" * 1000 + b"B" * 1000) * 20


@pytest.mark.parametrize("sizes", [(100_000, 10), (100_000, 32768), (10, 100_000), (0, 70_000), (70_000, 0)])
def test_truncate_down_and_up(d, sizes):
    first, second = sizes
    p = d / "t"
    data = os.urandom(first)
    p.write_bytes(data)
    os.truncate(p, second)
    assert os.stat(p).st_size == second
    assert p.read_bytes() == (data + bytes(max(0, second - first)))[:second]


def test_ftruncate_on_open_file_and_o_trunc(d):
    p = d / "ft"
    with open(p, "w+b") as f:
        f.write(b"x" * 50_000)
        f.truncate(1000)
        f.seek(0)
        assert f.read() == b"x" * 1000
        assert os.fstat(f.fileno()).st_size == 1000
    with open(p, "wb") as f:  # O_TRUNC
        f.write(b"new")
    assert p.read_bytes() == b"new"


def test_unlink_and_open_file_survives_unlink(d):
    p = d / "gone"
    p.write_bytes(b"x" * 100_000)
    with open(p, "r+b") as f:
        p.unlink()
        assert not p.exists()
        f.seek(50_000)
        f.write(b"still here")
        f.seek(50_000)
        assert f.read(10) == b"still here"
    assert sorted(os.listdir(d)) == []


def test_rename_and_rename_over_existing(d):
    (d / "a").write_bytes(b"A" * 5000)
    (d / "b").write_bytes(b"B")
    os.rename(d / "a", d / "c")
    assert (d / "c").read_bytes() == b"A" * 5000 and not (d / "a").exists()
    os.rename(d / "c", d / "b")
    assert (d / "b").read_bytes() == b"A" * 5000
    assert sorted(os.listdir(d)) == ["b"]


def test_renameat2_noreplace_refuses_existing_target(d):
    (d / "a").write_bytes(b"A")
    (d / "b").write_bytes(b"B")
    with pytest.raises(OSError) as e:
        renameat2(d / "a", d / "b", RENAME_NOREPLACE)
    assert e.value.errno == errno.EEXIST
    assert (d / "a").read_bytes() == b"A" and (d / "b").read_bytes() == b"B"
    renameat2(d / "a", d / "c", RENAME_NOREPLACE)
    assert (d / "c").read_bytes() == b"A" and not (d / "a").exists()


def test_renameat2_exchange_swaps_both(d):
    (d / "a").write_bytes(b"content of a")
    (d / "sub").mkdir()
    (d / "sub" / "x").write_bytes(b"in sub")
    renameat2(d / "a", d / "sub", RENAME_EXCHANGE)
    assert (d / "sub").read_bytes() == b"content of a"
    assert (d / "a" / "x").read_bytes() == b"in sub"
    with pytest.raises(OSError) as e:
        renameat2(d / "a", d / "missing", RENAME_EXCHANGE)
    assert e.value.errno == errno.ENOENT


def test_mkdir_rmdir_readdir(d):
    (d / "x" / "y").mkdir(parents=True)
    for i in range(30):
        (d / "x" / f"f{i}").write_bytes(b"%d" % i)
    assert sorted(os.listdir(d / "x")) == sorted(["y"] + [f"f{i}" for i in range(30)])
    assert {e.name: e.is_dir() for e in os.scandir(d / "x")}["y"] is True
    with pytest.raises(OSError) as e:
        os.rmdir(d / "x")
    assert e.value.errno == errno.ENOTEMPTY
    shutil.rmtree(d / "x")
    assert os.listdir(d) == []


def test_symlink_readlink(d):
    (d / "target").write_bytes(b"pointed at")
    os.symlink("target", d / "link")
    assert os.readlink(d / "link") == "target"
    assert (d / "link").read_bytes() == b"pointed at"
    assert stat.S_ISLNK(os.lstat(d / "link").st_mode)
    os.symlink("/nowhere/at/all", d / "dangling")
    assert os.readlink(d / "dangling") == "/nowhere/at/all"


def test_hard_links_inode_numbers_and_link_counts(d):
    a, b, c = d / "a", d / "b", d / "c"
    a.write_bytes(b"shared")
    ino = os.stat(a).st_ino
    assert os.stat(a).st_nlink == 1
    os.link(a, b)
    assert os.stat(b).st_ino == ino
    assert os.stat(a).st_nlink == 2 and os.stat(b).st_nlink == 2
    with open(b, "ab") as f:
        f.write(b" and more")
    assert a.read_bytes() == b"shared and more"
    os.rename(b, c)
    assert os.stat(c).st_ino == ino and os.stat(c).st_nlink == 2
    os.unlink(a)
    assert os.stat(c).st_nlink == 1
    assert c.read_bytes() == b"shared and more"
    assert os.stat(d).st_nlink == 2  # a directory without subdirectories
    (d / "sub").mkdir()
    assert os.stat(d).st_nlink == 3


def test_chmod_chown_utimens(d):
    p = d / "m"
    p.write_bytes(b"x")
    os.chmod(p, 0o640)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
    os.chown(p, 1234, 5678)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.utime(p, ns=(1_000_000_000_123, 2_000_000_000_456))
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000_123, 2_000_000_000_456)
    with open(p, "r+b") as f:  # on an open file (futimens, fchmod)
        os.utime(f.fileno(), ns=(3_000_000_000, 4_000_000_000))
        os.chmod(f.fileno(), 0o600)
    st = os.stat(p)
    assert st.st_mtime_ns == 4_000_000_000 and stat.S_IMODE(st.st_mode) == 0o600


def test_utime_omit_keeps_the_other_time(d):
    p = d / "omit"
    p.write_bytes(b"x")
    os.utime(p, ns=(5_000_000_000, 6_000_000_000))
    subprocess.run(["touch", "-a", "-d", "@7", str(p)], check=True)  # atime only: mtime UTIME_OMIT
    st = os.stat(p)
    assert st.st_atime_ns == 7_000_000_000 and st.st_mtime_ns == 6_000_000_000


def test_statfs(shared_mount):
    sv = os.statvfs(shared_mount.point)
    real = os.statvfs(shared_mount.cipher)
    assert sv.f_blocks == real.f_blocks and sv.f_bsize == real.f_bsize and sv.f_blocks > 0


def test_fsync_and_fdatasync(d):
    p = d / "synced"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"durable" * 1000)
        os.fsync(fd)
        os.write(fd, b"!")
        os.fdatasync(fd)
    finally:
        os.close(fd)
    assert p.read_bytes() == b"durable" * 1000 + b"!"


def test_shutil_copytree_and_compare(d, tmp_path):
    src = tmp_path / "src"
    (src / "deep" / "er").mkdir(parents=True)
    for i, n in enumerate((0, 1, 4095, 32768, 32769, 100_000)):
        (src / "deep" / f"f{i}").write_bytes(os.urandom(n))
    (src / "deep" / "er" / "g").write_bytes(b"g")
    shutil.copytree(src, d / "copy")
    for p in src.rglob("*"):
        if p.is_file():
            assert (d / "copy" / p.relative_to(src)).read_bytes() == p.read_bytes()


def test_config_file_is_hidden_and_protected(shared_mount):
    assert "keyhold-fsmount.conf" not in os.listdir(shared_mount.point)
    with pytest.raises(OSError) as e:
        open(shared_mount.point / "keyhold-fsmount.conf", "wb")
    assert e.value.errno == errno.EPERM


def test_getxattr_is_not_supported(d):
    (d / "x").write_bytes(b"x")
    with pytest.raises(OSError) as e:
        os.getxattr(d / "x", "user.test")
    assert e.value.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENODATA)


def test_files_created_by_another_user_belong_to_that_user(shared_mount, d):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    nobody = pwd.getpwnam("nobody")
    os.chmod(d, 0o777)
    script = (
        "import os\n"
        f"os.setgid({nobody.pw_gid}); os.setgroups([]); os.setuid({nobody.pw_uid})\n"
        "os.umask(0o022)\n"
        f"d = {str(d)!r}\n"
        "with open(os.path.join(d, 'mine'), 'w') as f: f.write('by nobody')\n"
        "os.mkdir(os.path.join(d, 'mydir'), 0o777)\n"
        "os.symlink('mine', os.path.join(d, 'mylink'))\n"
        "fd = os.open(os.path.join(d, 'private'), os.O_CREAT | os.O_WRONLY, 0o600); os.close(fd)\n"
        "try:\n"
        f"    open(os.path.join({str(shared_mount.point)!r}, 'root-dir-file'), 'w')\n"
        "    print('WROTE')\n"
        "except PermissionError:\n"
        "    print('DENIED')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "DENIED"  # the mount root is 0755 root: permissions as on ext4
    for name, mode in (("mine", 0o644), ("mydir", 0o755), ("private", 0o600)):
        st = os.lstat(d / name)
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid), name
        assert stat.S_IMODE(st.st_mode) == mode, name
    assert os.lstat(d / "mylink").st_uid == nobody.pw_uid
    assert (d / "mine").read_text() == "by nobody"


def test_concurrent_writers_same_file_disjoint_regions(d):
    p = d / "shared"
    region, writers, rounds = 20_000, 8, 20
    p.write_bytes(bytes(region * writers))

    def work(n: int) -> None:
        with open(p, "r+b") as f:
            for r in range(rounds):
                f.seek(n * region)
                f.write(bytes([n + 1 + r % 3]) * region)
                f.flush()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = p.read_bytes()
    for n in range(writers):
        assert data[n * region : (n + 1) * region] == bytes([n + 1 + (rounds - 1) % 3]) * region


def test_concurrent_writers_different_files(d):
    payloads = {f"f{n}": os.urandom(50_000 + n * 777) for n in range(8)}

    def work(name: str) -> None:
        with open(d / name, "wb") as f:
            data = payloads[name]
            for i in range(0, len(data), 3000):
                f.write(data[i : i + 3000])

    threads = [threading.Thread(target=work, args=(n,)) for n in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, data in payloads.items():
        assert (d / name).read_bytes() == data


def test_large_file_past_4_gib(d):
    """Offsets past 2**32 (frame indexes, backing offsets) through truncate and pwrite."""
    p = d / "large"
    end = (1 << 32) + 3 * 32768 + 123
    with open(p, "wb") as f:
        f.truncate(end)
        os.pwrite(f.fileno(), b"far out", end - 7)
        os.pwrite(f.fileno(), b"middle", 1 << 31)
    assert os.stat(p).st_size == end
    with open(p, "rb") as f:
        assert os.pread(f.fileno(), 100, end - 100) == bytes(93) + b"far out"
        assert os.pread(f.fileno(), 10, (1 << 31) - 2) == b"\0\0middle\0\0"
        assert os.pread(f.fileno(), 4096, 12345) == bytes(4096)


def test_mknod_regular_file_and_fifo(d):
    os.mknod(d / "reg", 0o640 | stat.S_IFREG)
    assert (d / "reg").read_bytes() == b"" and stat.S_IMODE(os.stat(d / "reg").st_mode) == 0o640
    (d / "reg").write_bytes(b"now with content")
    assert (d / "reg").read_bytes() == b"now with content"
    os.mkfifo(d / "fifo")
    assert stat.S_ISFIFO(os.stat(d / "fifo").st_mode)
