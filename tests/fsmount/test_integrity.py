"""A damaged backing file reads as EIO, never as wrong bytes, and the damage is logged
with the file and frame; other files and other frames stay readable."""

from __future__ import annotations

import errno
import os
import struct

import pytest

FRAME = 32 * 1024  # default frame size of a new cipher directory
STRIDE = FRAME + 28


def header_size(path) -> int:
    with open(path, "rb") as f:
        head = f.read(30)
    return 30 + struct.unpack(">H", head[28:30])[0]


def frame_at(path, index: int) -> int:
    return header_size(path) + index * STRIDE


def expect_eio(path, offset: int = 0, length: int = -1) -> None:
    with pytest.raises(OSError) as e:
        with open(path, "rb") as f:
            f.seek(offset)
            f.read(length)
    assert e.value.errno == errno.EIO


@pytest.fixture
def damaged(mount):
    """Four files of 4+ frames written through the mount, then the mount restarted
    (so that no page of them is cached) after `tamper` changed backing files."""
    data = {n: os.urandom(4 * FRAME + 1000) for n in ("a", "b", "c", "d")}
    for n, d in data.items():
        mount.path(n).write_bytes(d)
    mount.stop()
    return mount, data


def test_flipped_bit_in_a_frame_is_eio_and_logged(damaged):
    mount, data = damaged
    with open(mount.backing("a"), "r+b") as f:
        f.seek(frame_at(mount.backing("a"), 2) + 100)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    mount.start()
    expect_eio(mount.path("a"))
    with open(mount.path("a"), "rb") as f:  # frames before and after still read
        assert os.pread(f.fileno(), 4096, 0) == data["a"][:4096]
        assert os.pread(f.fileno(), 4096, 3 * FRAME) == data["a"][3 * FRAME : 3 * FRAME + 4096]
    assert mount.path("b").read_bytes() == data["b"]
    log = mount.log.read_text()
    # named by its backing path (the plaintext path with plain names): `kms fs info` maps it back
    assert f"/{mount.backing('a').name}: frame 2 failed authentication" in log


def test_swapped_frames_are_eio(damaged):
    mount, data = damaged
    p = mount.backing("b")
    raw = bytearray(p.read_bytes())
    f0, f1 = frame_at(p, 0), frame_at(p, 1)
    raw[f0:f1], raw[f1 : f1 + STRIDE] = raw[f1 : f1 + STRIDE], raw[f0:f1]
    p.write_bytes(bytes(raw))
    mount.start()
    expect_eio(mount.path("b"))
    assert mount.path("a").read_bytes() == data["a"]


def test_frame_from_another_file_is_eio(damaged):
    mount, data = damaged
    src, dst = mount.backing("c"), mount.backing("d")
    frame = src.read_bytes()[frame_at(src, 1) : frame_at(src, 2)]
    with open(dst, "r+b") as f:
        f.seek(frame_at(dst, 1))
        f.write(frame)
    mount.start()
    expect_eio(mount.path("d"))
    assert mount.path("c").read_bytes() == data["c"]


@pytest.mark.parametrize("cut", ["last frame", "mid frame"])
def test_truncated_file_is_eio(damaged, cut):
    mount, data = damaged
    p = mount.backing("a")
    length = frame_at(p, 4) if cut == "last frame" else frame_at(p, 2) + 500
    os.truncate(p, length)
    mount.start()
    expect_eio(mount.path("a"))
    assert mount.path("b").read_bytes() == data["b"]


def test_altered_header_is_eio(damaged):
    mount, data = damaged
    p = mount.backing("c")
    with open(p, "r+b") as f:
        f.seek(12)  # inside the message id: every frame's AAD changes
        f.write(b"\xff")
    mount.start()
    expect_eio(mount.path("c"))
    assert mount.path("d").read_bytes() == data["d"]


def test_not_an_envelope_is_eio(damaged):
    mount, data = damaged
    mount.backing("plain-intruder").write_bytes(b"I was never encrypted")
    mount.start()
    expect_eio(mount.path("plain-intruder"))
    assert f"{mount.backing('plain-intruder').name}: not a valid envelope" in mount.log.read_text()


def test_marker_never_reaches_the_backing_directory(mount):
    marker = b"KEYHOLD-PLAINTEXT-MARKER-7f3a9c"
    for i in range(200):
        size = (i * 997) % 100_000
        body = (marker + b" %d " % i) * (size // 40 + 1)
        mount.path(f"m{i}").write_bytes(body[: size + len(marker)])
    (mount.point / "sub").mkdir()
    with open(mount.path("sub/appended"), "ab") as f:
        for _ in range(500):
            f.write(marker)
    mount.stop()  # everything written out
    found = [p for p in mount.cipher.rglob("*") if p.is_file() and marker in p.read_bytes()]
    assert found == []
    # and the marker is really there when read back through the mount
    mount.start()
    assert marker in mount.path("m5").read_bytes()
