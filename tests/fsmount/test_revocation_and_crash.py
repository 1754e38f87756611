"""Revoking the CMK reaches open files; kill -9 of the mount loses no fsynced data."""

from __future__ import annotations

import errno
import os
import signal
import time

import pytest

from kmscore import Kms

DEADLINE = 60.0  # generous: the guarantee is the 5 s cache bound; this only stops a hang


def wait_for(predicate, what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"gave up waiting: {what}")
        time.sleep(0.2)


def read_fails_with_enokey(fd: int, size: int) -> bool:
    try:
        os.pread(fd, size, 0)
    except OSError as e:
        assert e.errno == errno.ENOKEY, e
        return True
    return False


def read_works(fd: int, size: int, data: bytes) -> bool:
    try:
        return os.pread(fd, size, 0) == data
    except OSError as e:
        assert e.errno == errno.ENOKEY, e
        return False


@pytest.mark.parametrize("how", ["disable", "schedule deletion"])
def test_revoked_key_makes_open_and_new_reads_fail_then_recovers(home, mount_with, how):
    with Kms(home, caller="test") as kms:
        kms.create_key("app/files")
    m = mount_with("--key", "app/files")
    if True:
        data = os.urandom(100_000)
        m.path("f").write_bytes(data)
        fd = os.open(m.path("f"), os.O_RDONLY)
        try:
            assert os.pread(fd, len(data), 0) == data  # now in the page cache too
            with Kms(home, caller="test") as kms:
                if how == "disable":
                    kms.disable_key("app/files")
                else:
                    kms.schedule_key_deletion("app/files", 7)
            wait_for(lambda: read_fails_with_enokey(fd, len(data)), "the open file to become unreadable")
            with pytest.raises(OSError) as e:
                m.path("f").read_bytes()
            assert e.value.errno == errno.ENOKEY
            with pytest.raises(OSError) as e:
                m.path("new").write_bytes(b"x")
            assert e.value.errno == errno.ENOKEY
            with Kms(home, caller="test") as kms:
                if how != "disable":
                    kms.cancel_key_deletion("app/files")
                kms.enable_key("app/files")
            wait_for(lambda: read_works(fd, len(data), data), "the open file to be readable again")
            assert m.path("f").read_bytes() == data
        finally:
            os.close(fd)
        assert "is unusable" in m.log.read_text()


def test_kill_9_then_remount_keeps_fsynced_files(mount):
    synced = {f"s{i}": os.urandom(i * 10_000 + 7) for i in range(10)}
    for name, data in synced.items():
        with open(mount.path(name), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    closed = os.urandom(150_000)
    mount.path("closed").write_bytes(closed)
    still_open = open(mount.path("open"), "wb")
    still_open.write(b"synced part " * 5000)
    still_open.flush()
    os.fsync(still_open.fileno())
    mount.kill9()
    try:
        still_open.close()
    except OSError:
        pass  # the mount is gone: ENOTCONN
    mount.start()
    for name, data in synced.items():
        assert mount.path(name).read_bytes() == data, name
    assert mount.path("closed").read_bytes() == closed
    assert mount.path("open").read_bytes() == b"synced part " * 5000


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_cleanly_and_writes_tails(mount, sig):
    f = open(mount.path("tail"), "wb")
    f.write(b"in the tail")
    f.flush()  # reaches the mount, not necessarily the disk
    mount.proc.send_signal(sig)
    assert mount.proc.wait(timeout=30) == 0
    mount.proc = None
    try:
        f.close()
    except OSError:
        pass
    from fsmount.mount import is_mounted

    assert not is_mounted(mount.point)
    mount.start()
    assert mount.path("tail").read_bytes() == b"in the tail"


def test_expired_imported_material_makes_open_files_unreadable(home, mount_with):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    with Kms(home, caller="test") as kms:
        kms.create_key("app/imported", origin="EXTERNAL")
        params = kms.get_parameters_for_import("app/imported")
        public = serialization.load_pem_public_key(params.public_key_pem.encode())
        wrapped = public.encrypt(
            os.urandom(32), padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
        )
        kms.import_key_material("app/imported", params.import_token, wrapped, expires_at=time.time() + 10)
    m = mount_with("--key", "app/imported")
    data = os.urandom(50_000)
    m.path("f").write_bytes(data)
    fd = os.open(m.path("f"), os.O_RDONLY)
    try:
        assert os.pread(fd, len(data), 0) == data
        wait_for(lambda: read_fails_with_enokey(fd, len(data)), "expired material to stop reads")
    finally:
        os.close(fd)
