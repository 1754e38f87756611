"""Format 2 attacked: what an operator's logs, fsck and a tampered or crashed cipher
directory give away or get wrong. Each test here failed on the code before its fix.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from kmscore import Kms

from fsmount import names as codec
from fsmount import tools

MARKER = "ZQXsecretQXZ"


def _errno(call) -> int:
    try:
        call()
    except OSError as e:
        return e.errno
    raise AssertionError("no error")


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_integrity_log_lines_name_backing_paths_not_plaintext_names(mount):
    """An I/O error is logged against the backing path (`kms fs info` maps it back):
    a log shipped to a log server must not carry the names the cipher dir hides."""
    d = mount.point / f"dir-{MARKER}"
    d.mkdir()
    (d / f"frame-{MARKER}").write_bytes(b"x" * 10000)
    (d / f"header-{MARKER}").write_bytes(b"y" * 100)
    (d / f"attr-{MARKER}").write_bytes(b"z")
    os.setxattr(d / f"attr-{MARKER}", f"user.{MARKER}", b"value")
    os.symlink(f"target-{MARKER}", d / f"link-{MARKER}")
    mount.stop()
    frame = mount.backing(f"/dir-{MARKER}/frame-{MARKER}")
    _flip(frame, frame.stat().st_size - 40)
    header = mount.backing(f"/dir-{MARKER}/header-{MARKER}")
    _flip(header, 5)
    attr = mount.backing(f"/dir-{MARKER}/attr-{MARKER}")
    stored = mount.xattr(f"user.{MARKER}")
    value = bytearray(os.getxattr(attr, stored))
    value[-5] ^= 0xFF
    os.setxattr(attr, stored, bytes(value))
    link = mount.backing(f"/dir-{MARKER}/link-{MARKER}")
    target = os.readlink(link)
    link.unlink()
    os.symlink(target[:-2] + ("AA" if not target.endswith("AA") else "BB"), link)
    mount.start()
    assert _errno(lambda: (d / f"frame-{MARKER}").read_bytes()) == errno.EIO
    assert _errno(lambda: (d / f"header-{MARKER}").read_bytes()) == errno.EIO
    assert _errno(lambda: os.getxattr(d / f"attr-{MARKER}", f"user.{MARKER}")) == errno.EIO
    assert _errno(lambda: os.readlink(d / f"link-{MARKER}")) == errno.EIO
    mount.stop()
    log = mount.log.read_text()
    assert log.count("integrity") >= 4, log
    assert MARKER not in log, log
    assert str(frame.relative_to(mount.cipher)) in log  # what `kms fs info` maps back
    assert "Traceback" not in log
