"""Pure frame math, and the open-file data path against a bytearray model.

The model test drives `OpenFile` (no FUSE) on a real temporary file with random
writes, truncates, flushes and reopenings, and checks every read against a plain
bytearray, and the closed backing file against the envelope layout.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from kmscore import envelope
from kmscore.envelope import VERSION, FrameCipher, Header

from fsmount.layout import FRAME_OVERHEAD, Layout, splice
from fsmount.openfile import OpenFile

layouts = st.builds(Layout, st.integers(30, 300), st.sampled_from([4096, 8192, 32768]))


@given(layouts, st.integers(0, 10**7))
def test_backing_length_and_plaintext_size_invert(lay, size):
    n = lay.backing_length(size)
    assert lay.plaintext_size(n) == size
    assert n == lay.frame_offset(lay.last_index(size)) + size - lay.frame_start(lay.last_index(size)) + FRAME_OVERHEAD


@given(layouts, st.integers(0, 10**7))
def test_agrees_with_the_envelope_layout(lay, size):
    assert lay.backing_length(size) == lay.header_size + envelope.ciphertext_length(size, lay.frame_size)
    for i in range(3):
        assert lay.frame_offset(i) == envelope.frame_offset(lay.header_size, lay.frame_size, i)


@given(layouts, st.integers(0, 10**7))
def test_every_length_is_one_envelope_or_none(lay, n):
    size = lay.plaintext_size(n)
    assert size is None or lay.backing_length(size) == n


@given(layouts, st.integers(0, 10**6), st.integers(1, 10**5))
def test_frames_cover_exactly_the_range(lay, offset, length):
    r = lay.frames(offset, length)
    assert lay.frame_start(r[0]) <= offset < lay.frame_start(r[0]) + lay.frame_size
    end = offset + length
    assert lay.frame_start(r[-1]) < end <= lay.frame_start(r[-1]) + lay.frame_size


@given(st.binary(max_size=50), st.integers(0, 80), st.binary(max_size=50))
def test_splice(base, at, data):
    out = splice(base, at, data)
    model = bytearray(base) + bytes(max(0, at - len(base)))
    model[at : at + len(data)] = data
    assert out == model


def make_file(path, frame_size: int) -> OpenFile:
    dek = os.urandom(32)
    # the wrapped DEK stands for a KMS blob; it is never unwrapped here
    header = Header(VERSION, 0, frame_size, os.urandom(16), os.urandom(81))
    cipher = FrameCipher(dek, header)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.pwrite(fd, header.encode() + cipher.seal(0, b"", True), 0)
    f = OpenFile(fd, header, cipher, 0, "model", lambda: None)
    f.dek = dek  # for reopening in the test
    return f


ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 40_000), st.integers(1, 20_000)),
        st.tuples(st.just("truncate"), st.integers(0, 40_000), st.just(0)),
        st.tuples(st.just("flush"), st.just(0), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(ops, st.sampled_from([4096, 8192]))
def test_openfile_matches_a_bytearray(tmp_path_factory, steps, frame_size):
    path = tmp_path_factory.mktemp("model") / "f"
    f = make_file(path, frame_size)
    model = bytearray()
    try:
        for op, a, b in steps:
            if op == "write":
                data = os.urandom(b)
                f.write(a, data)
                model[len(model) : a] = bytes(max(0, a - len(model)))
                model[a : a + b] = data
            elif op == "truncate":
                f.truncate(a)
                model = (model + bytes(max(0, a - len(model))))[:a]
            elif op == "flush":
                f.flush()
                assert f.layout.plaintext_size(os.path.getsize(path)) == len(model)
            else:
                dek, header = f.dek, f.header
                f.close()
                fd = os.open(path, os.O_RDWR)
                size = f.layout.plaintext_size(os.fstat(fd).st_size)
                assert size == len(model)
                f = OpenFile(fd, header, FrameCipher(dek, header), size, "model", lambda: None)
                f.dek = dek
            assert f.size == len(model)
            assert f.read(0, len(model) + 10) == bytes(model)
            if len(model) > 3:
                assert f.read(len(model) // 3, len(model) // 2) == bytes(model[len(model) // 3 : len(model) // 3 + len(model) // 2])
    finally:
        f.close()
    assert f.layout.plaintext_size(os.path.getsize(path)) == len(model)
