"""fsmount._fastpath: the C entry of the hot FUSE callbacks (getattr, create, write,
read, flush, release, getxattr).

The C entry points are called here through ctypes exactly as libfuse calls them (the
function pointers installed in a struct fuse_operations), with Python handlers that
record what they were given; then on real mounts, with the fast path on (the default,
which every other fsmount test and pjdfstest also run) and off (the ctypes fallback).
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

from fsmount import _fastpath  # ./setup.sh builds it (gcc, libfuse3-dev): a test run never lacks it
from fsmount.libfuse import mfusepy

OPS = mfusepy.fuse_operations
FIELDS = ("getattr", "create", "write", "read", "flush", "release", "getxattr")


def test_struct_layout_is_mfusepys() -> None:
    """The C side writes at offsets from <fuse3/fuse.h>; libfuse reads mfusepy's struct."""
    assert _fastpath.offsets() == {name: getattr(OPS, name).offset for name in FIELDS}


class Recorder:
    """Handlers that note their calls and answer what a test set."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.answers: dict[str, object] = {}

    def handler(self, name: str):
        def call(*args):
            self.calls.append((name, *[bytes(a) if isinstance(a, memoryview) else a for a in args]))
            answer = self.answers.get(name, 0)
            if isinstance(answer, BaseException):
                raise answer
            return answer(*args) if callable(answer) else answer
        return call

    def failed(self, name: str, error: BaseException) -> int:
        from fsmount.filesystem import KeyholdFUSE

        self.calls.append(("failed", name, type(error).__name__))
        return KeyholdFUSE.fast_failed(object.__new__(KeyholdFUSE), name, error)


@pytest.fixture
def installed():
    """A struct fuse_operations with every field set (as mfusepy sets them), the C entry
    points installed over it; mfusepy's getxattr stand-in records the names it is asked."""
    rec = Recorder()
    ops = OPS()
    asked: list[bytes] = []

    def python_getxattr(path, name, value, size, *rest):
        asked.append(name)
        return -errno.EPERM

    originals = {}
    for name, prototype in OPS._fields_:
        if name in FIELDS:
            fn = prototype(python_getxattr) if name == "getxattr" else prototype(lambda *a: -errno.ENOSYS)
            originals[name] = fn
            setattr(ops, name, fn)
    handlers = {name: rec.handler(name) for name in FIELDS if name != "getxattr"}
    handlers["failed"] = rec.failed
    _fastpath.install(ctypes.addressof(ops), handlers)
    try:
        yield ops, rec, asked, originals
    finally:
        _fastpath.uninstall()


def entry(ops, name: str):
    """The function pointer now in field `name`, callable as libfuse calls it."""
    prototype = dict(OPS._fields_)[name]
    address = ctypes.c_void_p.from_buffer(ops, getattr(OPS, name).offset).value
    return prototype(address)


def file_info(fh: int = 0, flags: int = 0):
    fi = mfusepy.fuse_file_info()
    fi.fh, fi.flags = fh, flags
    return fi


def test_every_field_now_points_into_c(installed) -> None:
    ops, _, _, originals = installed
    for name in FIELDS:
        now = ctypes.c_void_p.from_buffer(ops, getattr(OPS, name).offset).value
        assert now != ctypes.cast(originals[name], ctypes.c_void_p).value, name


def test_getattr_copies_the_packed_stat_and_passes_path_and_handle(installed) -> None:
    ops, rec, _, _ = installed
    st = mfusepy.c_stat()
    st.st_mode, st.st_size, st.st_nlink = 0o100644, 12345, 3
    rec.answers["getattr"] = bytes(st)
    out = mfusepy.c_stat()
    fi = file_info(fh=42)
    assert entry(ops, "getattr")("/dir/caf\xe9".encode(), ctypes.byref(out), ctypes.pointer(fi)) == 0
    assert bytes(out) == bytes(st)
    assert entry(ops, "getattr")(None, ctypes.byref(out), None) == 0  # nullpath_ok: no path, no handle
    # a name that is not UTF-8 arrives as Python's os functions spell it (surrogateescape)
    assert entry(ops, "getattr")(b"/\xff", ctypes.byref(out), None) == 0
    assert rec.calls == [("getattr", "/dir/caf\xe9", 42), ("getattr", None, None), ("getattr", "/\udcff", None)]


@pytest.mark.parametrize("answer, expect", [
    (-errno.ENOENT, -errno.ENOENT),  # the handler's own errno
    (OSError(errno.EACCES, "no"), -errno.EACCES),  # a raised one, mapped as mfusepy maps it
    (ValueError("bug"), -errno.EINVAL),  # a bug: mfusepy's mapping (logged there)
    (b"short", -errno.EINVAL),  # not a whole struct stat: refused, never half-copied
])
def test_getattr_failures_map_to_an_errno(installed, answer, expect) -> None:
    ops, rec, _, _ = installed
    rec.answers["getattr"] = answer
    out = mfusepy.c_stat()
    ctypes.memset(ctypes.byref(out), 0x5A, ctypes.sizeof(out))
    assert entry(ops, "getattr")(b"/x", ctypes.byref(out), None) == expect
    if not isinstance(answer, int):
        assert rec.calls[-1][0] == "failed"
    assert bytes(out) == b"\x5a" * ctypes.sizeof(out)  # untouched


def test_create_sets_the_handle(installed) -> None:
    ops, rec, _, _ = installed
    rec.answers["create"] = 2**40 + 7
    fi = file_info(flags=os.O_WRONLY | os.O_CREAT)
    assert entry(ops, "create")(b"/new", 0o100640, ctypes.pointer(fi)) == 0
    assert fi.fh == 2**40 + 7
    assert rec.calls == [("create", "/new", 0o100640, os.O_WRONLY | os.O_CREAT)]
    rec.answers["create"] = FileExistsError(errno.EEXIST, "there")
    fi = file_info()
    assert entry(ops, "create")(b"/new", 0o100640, ctypes.pointer(fi)) == -errno.EEXIST
    assert fi.fh == 0


def test_write_hands_over_the_kernel_buffer_for_the_call_only(installed) -> None:
    ops, rec, _, _ = installed
    kept: list[memoryview] = []
    rec.answers["write"] = lambda view, offset, fh: (kept.append(view), view.readonly and len(view))[1]
    data = ctypes.create_string_buffer(b"secret bytes", 12)
    fi = file_info(fh=9)
    assert entry(ops, "write")(b"/f", ctypes.cast(data, ctypes.POINTER(ctypes.c_byte)), 12, 4096, ctypes.pointer(fi)) == 12
    assert rec.calls == [("write", b"secret bytes", 4096, 9)]
    with pytest.raises(ValueError):  # released after the call: no dangling pointer into libfuse's buffer
        bytes(kept[0])


def test_read_fills_the_kernel_buffer(installed) -> None:
    ops, rec, _, _ = installed

    def read(view, offset, fh):
        view[:5] = b"plain"
        return 5

    rec.answers["read"] = read
    buf = ctypes.create_string_buffer(16)
    fi = file_info(fh=3)
    assert entry(ops, "read")(b"/f", ctypes.cast(buf, ctypes.POINTER(ctypes.c_byte)), 16, 0, ctypes.pointer(fi)) == 5
    assert buf.raw[:5] == b"plain"
    rec.answers["read"] = OSError(errno.EIO, "tampered")
    assert entry(ops, "read")(b"/f", ctypes.cast(buf, ctypes.POINTER(ctypes.c_byte)), 16, 0, ctypes.pointer(fi)) == -errno.EIO


def test_flush_and_release_pass_path_and_handle(installed) -> None:
    ops, rec, _, _ = installed
    fi = file_info(fh=5)
    assert entry(ops, "flush")(None, ctypes.pointer(fi)) == 0
    assert entry(ops, "release")(b"/f", ctypes.pointer(fi)) == 0
    rec.answers["flush"] = OSError(errno.ENOSPC, "full")
    assert entry(ops, "flush")(b"/f", ctypes.pointer(fi)) == -errno.ENOSPC  # close(2) reports a full disk
    assert rec.calls[:2] == [("flush", None, 5), ("release", "/f", 5)]


def test_getxattr_outside_user_is_answered_in_c(installed) -> None:
    """security.capability is asked before every write(2): no Python for it; user.*
    names go on to mfusepy's getxattr."""
    ops, rec, asked, _ = installed
    buf = ctypes.create_string_buffer(64)
    get = entry(ops, "getxattr")
    for name in (b"security.capability", b"trusted.x", b"system.posix_acl_access", b"use"):
        assert get(b"/f", name, ctypes.cast(buf, ctypes.POINTER(ctypes.c_byte)), 64) == -errno.ENODATA
    assert asked == [] and rec.calls == []
    assert get(b"/f", b"user.tag", ctypes.cast(buf, ctypes.POINTER(ctypes.c_byte)), 64) == -errno.EPERM
    assert asked == [b"user.tag"]


def test_fields_a_file_system_lacks_stay_absent() -> None:
    """A read-only file system (no create, no write in mfusepy's struct) gains none."""
    ops = OPS()
    ops.getattr = dict(OPS._fields_)["getattr"](lambda *a: 0)
    ops.getxattr = dict(OPS._fields_)["getxattr"](lambda *a: 0)
    rec = Recorder()
    handlers = {name: rec.handler(name) for name in FIELDS if name != "getxattr"}
    handlers["failed"] = rec.failed
    _fastpath.install(ctypes.addressof(ops), handlers)
    try:
        for name in ("create", "write", "read", "flush", "release"):
            assert ctypes.c_void_p.from_buffer(ops, getattr(OPS, name).offset).value is None, name
    finally:
        _fastpath.uninstall()


def test_one_mount_per_process_at_a_time(installed) -> None:
    rec = Recorder()
    handlers = {name: rec.handler(name) for name in FIELDS if name != "getxattr"}
    handlers["failed"] = rec.failed
    with pytest.raises(RuntimeError, match="another mount"):
        _fastpath.install(ctypes.addressof(OPS()), handlers)


def test_install_refuses_a_missing_handler() -> None:
    with pytest.raises(ValueError, match="failed"):
        _fastpath.install(ctypes.addressof(OPS()), {name: None for name in FIELDS if name != "getxattr"})


# -- on real mounts --------------------------------------------------------------------

def _exercise(point: Path) -> None:
    """What a create and a stat do, and the errors around them."""
    f = point / "f.txt"
    f.write_bytes(b"x" * 5000)
    assert f.stat().st_size == 5000
    assert f.read_bytes() == b"x" * 5000
    with open(f, "r+b") as h:
        h.seek(4096)
        h.write(b"tail")
    assert f.read_bytes() == b"x" * 4096 + b"tail" + b"x" * 900
    os.setxattr(f, "user.tag", b"v")
    assert os.getxattr(f, "user.tag") == b"v"
    with pytest.raises(OSError) as e:
        os.getxattr(f, "security.capability")
    assert e.value.errno == errno.ENODATA
    with pytest.raises(FileNotFoundError):
        (point / "missing").stat()
    with pytest.raises(FileExistsError):
        os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)


def test_a_mount_runs_on_the_fast_path(mount_with) -> None:
    m = mount_with("--debug")
    _exercise(m.point)
    assert "FUSE fast path: on" in m.log.read_text()


def test_a_mount_without_the_fast_path_behaves_the_same(mount_with, monkeypatch) -> None:
    monkeypatch.setenv("KEYHOLD_FUSE_FASTPATH", "0")
    m = mount_with()
    _exercise(m.point)
    assert "FUSE fast path: off" in m.log.read_text()


def test_concurrent_clients_agree_with_a_model(mount) -> None:
    """Four clients at once, each on its own files: writes at random offsets, reads,
    truncates, unlinks, stats, failed lookups and xattrs, every result checked against
    an in-memory model; the mount's log shows no error afterwards."""
    import random
    import threading
    import time

    failures: list[BaseException] = []
    counts: list[int] = []

    def client(n: int) -> None:
        rnd, model, ops = random.Random(n), {}, 0
        d = mount.point / f"client{n}"
        d.mkdir()
        deadline = time.monotonic() + 3
        try:
            while time.monotonic() < deadline:
                path = str(d / f"f{rnd.randrange(8)}")
                op = rnd.random()
                if op < 0.35:
                    offset, data = rnd.randrange(300_000), rnd.randbytes(rnd.randrange(1, 70_000))
                    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                    try:
                        assert os.pwrite(fd, data, offset) == len(data)
                    finally:
                        os.close(fd)
                    cur = bytearray(model.get(path, b""))
                    cur.extend(bytes(max(0, offset - len(cur))))
                    cur[offset:offset + len(data)] = data
                    model[path] = bytes(cur)
                elif op < 0.6 and path in model:
                    assert Path(path).read_bytes() == model[path]
                elif op < 0.7 and path in model:
                    size = rnd.randrange(400_000)
                    os.truncate(path, size)
                    model[path] = model[path][:size] + bytes(max(0, size - len(model[path])))
                elif op < 0.8 and path in model:
                    os.unlink(path)
                    del model[path]
                elif op < 0.9:
                    assert {p: os.stat(p).st_size for p in model} == {p: len(v) for p, v in model.items()}
                    with pytest.raises(FileNotFoundError):
                        os.stat(path + ".missing")
                elif path in model:
                    os.setxattr(path, "user.n", b"%d" % ops)
                    assert os.getxattr(path, "user.n") == b"%d" % ops
                ops += 1
        except BaseException as e:  # noqa: BLE001 - reported by the test's thread
            failures.append(e)
        counts.append(ops)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert sum(counts) > 1000
    log = mount.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-2000:]
