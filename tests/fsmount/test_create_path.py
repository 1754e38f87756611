"""The create path of a mount with encrypted names, driven in-process (a real KMS and a
real cipher directory; the FUSE operations called as libfuse would call them): what a
create learns is kept for the calls the kernel sends right after it, and nothing that
is kept weakens what is checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fsmount import cipherdir, name_map
from fsmount.filesystem import KeyholdFS
from fsmount.keys import DEFAULT_FRAME_SIZE, FileKeys


@pytest.fixture
def fs(kms, tmp_path: Path):
    cipher = tmp_path / "cipher"
    cipher.mkdir()
    config = cipherdir.prepare(kms, cipher, None, DEFAULT_FRAME_SIZE)
    assert config.encrypted_names
    name_key = cipherdir.name_key(kms, config)
    ops = KeyholdFS(str(cipher), FileKeys(kms, config.key_id, config.frame_size),
                    lambda backing: name_map.for_config(backing, config, name_key))
    yield ops
    ops.handles.close_all()
    ops.backing.close()


def _create(fs: KeyholdFS, path: str, data: bytes) -> None:
    fh = fs.create(path, 0o644, os.O_WRONLY | os.O_CREAT)
    fs.write(None, data, 0, fh)
    fs.flush(None, fh)
    fs.release(None, fh)


def test_stat_after_create_and_close_needs_no_header_read(fs: KeyholdFS) -> None:
    """The kernel stats a new file once it is closed; its geometry is known from the header
    the create wrote. Proof: with the backing header destroyed right after the close, the
    size is still right (a header read would find no envelope and report 0)."""
    fs.mkdir("/d", 0o755)
    _create(fs, "/d/new", b"x" * 5000)
    with fs.backing.at(fs.backing_path("/d/new")) as (d, name):
        fd = os.open(name, os.O_WRONLY, dir_fd=d)
        try:
            os.pwrite(fd, b"\0" * 64, 0)
        finally:
            os.close(fd)
    assert fs.getattr("/d/new")["st_size"] == 5000
    with pytest.raises(OSError):  # but the data is still checked: the header is gone
        fs.open("/d/new", os.O_RDONLY)


@pytest.mark.parametrize("times", [
    (1_700_000_000_123_456_789, 1_700_000_001_000_000_001, 1_700_000_002_999_999_999),
    (-1, -1_500_000_000, 0),  # before 1970: negative seconds, nanoseconds still 0..999999999
])
def test_packed_struct_stat_is_byte_for_byte_mfusepys(tmp_path: Path, times) -> None:
    """getattr packs struct stat in one go (a create sends three getattrs); the bytes are
    exactly those of mfusepy's field-by-field fill, for every field FsBase.attrs gives."""
    from fsmount.filesystem import _stat_bytes
    from fsmount.libfuse import mfusepy

    st = os.lstat(tmp_path)
    attrs = {"st_mode": st.st_mode, "st_ino": 2**63 + 12345, "st_nlink": 7, "st_uid": 4_000_000_000,
             "st_gid": 65534, "st_rdev": 2**40 + 3, "st_size": 2**62 + 5, "st_blocks": 123_456, "st_blksize": 4096,
             "st_atime": times[0], "st_mtime": times[1], "st_ctime": times[2]}
    theirs = mfusepy.c_stat()
    mfusepy.set_st_attrs(theirs, attrs, use_ns=True)
    assert _stat_bytes(dict(attrs)) == bytes(theirs)


@pytest.mark.parametrize("outcome", [None, 7, OSError(2, "gone"), OSError(13, "no"), OSError(-5, "odd"),
                                     ValueError("bug")])
def test_callback_entry_answers_as_mfusepys_handler(outcome) -> None:
    """KeyholdFUSE makes each callback's call itself (the hot path of 8 callbacks per
    create) and hands only failures to mfusepy's handler: every outcome maps to the
    return value mfusepy's own handler gives."""
    from fsmount.filesystem import KeyholdFUSE
    from fsmount.libfuse import mfusepy

    def getattr_fuse_3(*args):  # a callback name mfusepy's handler reads
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    fuse = object.__new__(KeyholdFUSE)
    assert fuse._wrapper(getattr_fuse_3, b"/x") == mfusepy.FUSE._wrapper(fuse, getattr_fuse_3, b"/x")
