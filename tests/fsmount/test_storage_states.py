"""The backing file is a whole envelope at every moment, not only after a flush.

A model test drives `OpenFile` (no FUSE) with random writes (also past the end),
truncates, fallocate calls and flushes; after every call it copies the backing file,
as a kill -9 at that moment would leave it, and opens the copy as the mount would
after a restart: it must open and read without EIO, hold every frame before the
in-memory last frame as the model has it, and equal the model after a flush.
Then the pure parts: end states by length, holes, and the repair plan.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmscore.envelope import FRAME_OVERHEAD, VERSION, FrameAuthError, FrameCipher, Header

from fsmount import repair, slots
from fsmount.errors import DamagedFile
from fsmount.layout import Layout
from fsmount.openfile import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    OpenFile,
)

F = 4096


def new_file(path) -> tuple[OpenFile, bytes]:
    dek = os.urandom(32)
    header = Header(VERSION, 0, F, os.urandom(16), os.urandom(81))  # the wrapped DEK is never unwrapped here
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    return OpenFile.created(fd, header, FrameCipher(dek, header), "model", lambda: None), dek


def reopen_copy(f: OpenFile, dek: bytes, src, dst) -> bytes:
    """What a restarted mount reads from the backing file as it is on disk right now."""
    with open(src, "rb") as a, open(dst, "wb") as b:
        b.write(a.read())
    fd = os.open(dst, os.O_RDWR)
    g = OpenFile.opened(fd, f.header, FrameCipher(dek, f.header), os.fstat(fd).st_size, "copy", lambda: None)
    try:
        return g.read(0, g.size + 1)
    finally:
        g.close()


ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 12 * F), st.integers(1, 3 * F)),
        st.tuples(st.just("truncate"), st.integers(0, 12 * F), st.just(0)),
        st.tuples(st.just("fallocate"), st.integers(0, 12 * F), st.integers(1, 4 * F),
                  st.sampled_from([0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                   FALLOC_FL_ZERO_RANGE, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE])),
        st.tuples(st.just("flush"), st.just(0), st.just(0)),
    ),
    max_size=20,
)


@settings(max_examples=80, deadline=None)
@given(ops)
def test_every_moment_leaves_a_whole_envelope(tmp_path_factory, steps):
    d = tmp_path_factory.mktemp("states")
    f, dek = new_file(d / "f")
    model = bytearray()
    try:
        for step in steps:
            op, a, b = step[:3]
            if op == "write":
                data = os.urandom(b)
                f.write(a, data)
                model[len(model) : a] = bytes(max(0, a - len(model)))
                model[a : a + b] = data
            elif op == "truncate":
                f.truncate(a)
                model = (model + bytes(max(0, a - len(model))))[:a]
            elif op == "fallocate":
                mode = step[3]
                f.fallocate(mode, a, b)
                end = a + b
                if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                    model[a:end] = bytes(max(0, min(end, len(model)) - a))
                if not mode & FALLOC_FL_KEEP_SIZE and end > len(model):
                    model += bytes(end - len(model))
            else:
                f.flush()
            assert f.read(0, len(model) + 1) == model
            on_disk = reopen_copy(f, dek, d / "f", d / "copy")  # never EIO
            before_tail = f.layout.frame_start(f.layout.last_index(len(model)))
            assert len(on_disk) >= before_tail
            assert on_disk[:before_tail] == model[:before_tail]
            if op == "flush":
                assert on_disk == model
    finally:
        f.close()
    assert reopen_copy(f, dek, d / "f", d / "copy") == model


# -- pure parts ------------------------------------------------------------------------------
lay = Layout(111, F)
stride = F + FRAME_OVERHEAD


@given(st.integers(0, 50), st.integers(0, stride - 1))
def test_lengths_name_one_end_state(k, r):
    end = slots.ending(lay, lay.header_size + k * stride + r)
    if 0 < r < FRAME_OVERHEAD or (k == 0 and r < FRAME_OVERHEAD):
        assert end is None
    elif r == FRAME_OVERHEAD and k >= 1:
        assert end == slots.Ending(k * F, k)  # k full frames, then the end marker
    else:
        assert end is not None and end.marker is None
        assert lay.backing_length(end.size) == lay.header_size + k * stride + r


def cipher() -> FrameCipher:
    return FrameCipher(os.urandom(32), Header(VERSION, 0, F, os.urandom(16), b"w"))


def test_a_hole_reads_as_zeros_and_anything_else_must_authenticate():
    c = cipher()
    assert slots.open_slot(c, 3, bytes(stride), False) == bytes(F)
    with pytest.raises(FrameAuthError):
        slots.open_slot(c, 3, bytes(stride), True)  # the last frame is never a hole
    almost = bytearray(stride)
    almost[100] = 1
    with pytest.raises(FrameAuthError):
        slots.open_slot(c, 3, bytes(almost), False)
    sealed = c.seal(3, os.urandom(F), False)
    with pytest.raises(FrameAuthError):
        slots.open_slot(c, 4, sealed, False)  # moved
    slots.open_marker(c, 5, c.seal(5, b"", True))
    with pytest.raises(FrameAuthError):
        slots.open_marker(c, 6, c.seal(5, b"", True))
    with pytest.raises(FrameAuthError):
        slots.open_marker(c, 5, bytes(FRAME_OVERHEAD))


def backing(c: FrameCipher, frames: list[bytes], final: bool, tail: bytes = b"") -> bytes:
    out = bytearray(lay.header_size)
    for i, p in enumerate(frames):
        out += c.seal(i, p, final and i == len(frames) - 1)
    return bytes(out + tail)


def plan_of(c: FrameCipher, data: bytes):
    return repair.plan(c, lay, len(data), lambda offset, n: data[offset : offset + n])


@given(st.integers(1, 6), st.binary(max_size=stride + 10))
def test_repair_plan_keeps_the_authentic_start(n, torn):
    c = cipher()
    frames = [os.urandom(F) for _ in range(n)]
    assert plan_of(c, backing(c, frames, True)) is None  # intact: nothing to do
    broken = backing(c, frames, False, torn)  # a crash before the end marker, maybe a torn write
    plan = plan_of(c, broken)
    assert plan is not None and plan.keep == n and plan.last_plain == frames[-1]
    assert plan.cut == len(torn)


def test_repair_plan_drops_trailing_holes_keeps_inner_ones():
    c = cipher()
    a, b = os.urandom(F), os.urandom(F)
    data = bytearray(lay.header_size) + c.seal(0, a, False) + bytes(stride) + c.seal(2, b, False) + bytes(2 * stride)
    plan = plan_of(c, bytes(data))
    assert (plan.keep, plan.last_plain, plan.cut) == (3, b, 2 * stride)


def test_repair_plan_refuses_damage_inside_the_file():
    c = cipher()
    data = bytearray(backing(c, [os.urandom(F) for _ in range(4)], False))
    data[lay.frame_offset(1) + 50] ^= 1
    with pytest.raises(DamagedFile):
        plan_of(c, bytes(data))


def test_the_data_key_pool_gives_one_fresh_key_per_file_and_never_shows_one(tmp_path):
    import pickle

    from kmscore import Kms

    from fsmount.keys import FileKeys

    with Kms(tmp_path / "home", caller="test") as kms:
        kms.create_key("app/files")
        keys = FileKeys(kms, kms.describe_key("app/files").key_id)
        made = [keys.new(f"/f{i}") for i in range(200)]
        assert len({h.message_id for h, _ in made}) == 200
        assert len({h.wrapped_dek for h, _ in made}) == 200
        for header, cipher in made[::37]:  # the header's wrapped DEK is the cipher's DEK
            assert keys.open(header, "/f").open(0, cipher.seal(0, b"x", True), True) == b"x"
        assert "key" in repr(keys.pool) and "bytes" not in repr(keys.pool)
        with pytest.raises(TypeError):
            pickle.dumps(keys.pool)
