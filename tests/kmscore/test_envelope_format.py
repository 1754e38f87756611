"""The envelope header and layout math, sans-IO: round trips, refusals, random access."""

from __future__ import annotations

import os
import pickle
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmscore.envelope import (
    FRAME_OVERHEAD,
    MAX_FRAME,
    MIN_FRAME,
    BadMagic,
    EnvelopeError,
    FrameAuthError,
    FrameCipher,
    Header,
    StreamEncryptor,
    Truncated,
    UnsupportedVersion,
    ciphertext_length,
    frame_count,
    frame_offset,
    frame_span,
    header_length,
    plaintext_length,
)
from kmscore.errors import InvalidCiphertext, KmsError

frame_sizes = st.integers(MIN_FRAME, 8192)
headers = st.builds(
    Header,
    st.just(1),
    st.sampled_from([0, 1]),
    st.integers(MIN_FRAME, MAX_FRAME),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=1, max_size=300),
)


def make_header(frame_size: int = 1024, wrapped: bytes = b"w" * 81) -> Header:
    return Header(1, 0, frame_size, os.urandom(16), wrapped)


@given(headers, st.binary(max_size=40))
def test_header_round_trips_and_ignores_what_follows(header, tail):
    raw = header.encode()
    assert len(raw) == header.size == 30 + len(header.wrapped_dek)
    assert raw[:28] == header.fixed
    assert header_length(raw[:30]) == header.size
    assert Header.decode(raw + tail) == header


@given(headers)
def test_header_length_needs_30_bytes(header):
    raw = header.encode()
    for n in range(30):
        assert header_length(raw[:n]) is None
        with pytest.raises(Truncated):
            Header.decode(raw[:n])
    with pytest.raises(Truncated):
        Header.decode(raw[:-1])


def test_header_layout_is_the_documented_one():
    h = Header(1, 0, 65536, bytes(range(16)), b"\xaa" * 81)
    assert h.encode() == b"KHEV" + bytes([1, 0, 0, 0]) + struct.pack(">I", 65536) + bytes(range(16)) + b"\x00\x51" + b"\xaa" * 81


@pytest.mark.parametrize(
    "mutate, error",
    [
        (lambda b: b"KHEW" + b[4:], BadMagic),
        (lambda b: b"%PDF" + b[4:], BadMagic),
        (lambda b: b[:4] + b"\x03" + b[5:], UnsupportedVersion),
        (lambda b: b[:4] + b"\x00" + b[5:], UnsupportedVersion),
        (lambda b: b[:5] + b"\x02" + b[6:], EnvelopeError),  # unknown flag bit
        (lambda b: b[:5] + b"\x80" + b[6:], EnvelopeError),
        (lambda b: b[:6] + b"\x00\x01" + b[8:], EnvelopeError),  # reserved
        (lambda b: b[:8] + struct.pack(">I", 1023) + b[12:], EnvelopeError),  # frame too small
        (lambda b: b[:8] + struct.pack(">I", MAX_FRAME + 1) + b[12:], EnvelopeError),
        (lambda b: b[:28] + b"\x00\x00" + b[30:], EnvelopeError),  # no wrapped DEK
        (lambda b: b[:28] + b"\xff\xff" + b[30:], EnvelopeError),  # absurd length
        (lambda b: b[:28] + b"\x01\x00" + b[30:], Truncated),  # longer than the data
    ],
)
def test_bad_headers_are_refused_with_a_clear_error(mutate, error):
    raw = mutate(make_header().encode())
    with pytest.raises(error) as e:
        Header.decode(raw)
    assert isinstance(e.value, InvalidCiphertext) and isinstance(e.value, KmsError)
    assert "\n" not in str(e.value) and str(e.value)


def test_magic_is_refused_from_the_first_bytes():
    with pytest.raises(BadMagic):
        header_length(b"KX")
    assert header_length(b"KH") is None


def test_with_wrapped_dek_keeps_the_fixed_header():
    h = make_header()
    h2 = h.with_wrapped_dek(b"x" * 90)
    assert h2.fixed == h.fixed and h2.wrapped_dek == b"x" * 90 and h2.size == h.size + 9


# -- layout math ---------------------------------------------------------------------------
@given(st.integers(0, 10**8), frame_sizes)
def test_lengths_invert(n, f):
    c = ciphertext_length(n, f)
    assert plaintext_length(c, f) == n
    assert c == n + FRAME_OVERHEAD * frame_count(n, f)


@given(st.integers(0, 10**7), frame_sizes)
def test_every_ciphertext_length_is_one_plaintext_length_or_truncated(c, f):
    try:
        n = plaintext_length(c, f)
    except Truncated:
        last = c - (max(1, -(-c // frame_span(f))) - 1) * frame_span(f)
        assert last < FRAME_OVERHEAD
    else:
        # canonical, or whole frames followed by an empty final frame (28 bytes): a form
        # the stream writer never makes but a reader must size the same (fsmount's end
        # marker after a last whole frame)
        assert ciphertext_length(n, f) == c or (
            n > 0 and n % f == 0 and c == ciphertext_length(n, f) + FRAME_OVERHEAD
        )


def test_whole_frames_then_an_empty_final_frame_have_the_whole_frames_length():
    f = 1024
    c = 96 * (f + FRAME_OVERHEAD) + FRAME_OVERHEAD  # the example hypothesis once found
    assert plaintext_length(c, f) == 96 * f
    assert ciphertext_length(96 * f, f) == c - FRAME_OVERHEAD


def test_edge_lengths():
    f = 1024
    assert ciphertext_length(0, f) == 28
    assert ciphertext_length(f, f) == f + 28  # a full final frame, no empty one after it
    assert ciphertext_length(f + 1, f) == f + 1 + 56
    assert frame_offset(111, f, 0) == 111 and frame_offset(111, f, 3) == 111 + 3 * (f + 28)
    for bad in (0, 27, f + 28 + 27):
        with pytest.raises(Truncated):
            plaintext_length(bad, f)


# -- frames ----------------------------------------------------------------------------------
def test_frame_cipher_never_shows_or_pickles_its_key():
    dek = os.urandom(32)
    c = FrameCipher(dek, make_header())
    assert dek.hex() not in repr(c) and repr(dek) not in repr(c)
    with pytest.raises(TypeError):
        pickle.dumps(c)
    with pytest.raises(ValueError):
        FrameCipher(os.urandom(16), make_header())


def test_seal_refuses_short_non_final_frames():
    c = FrameCipher(os.urandom(32), make_header())
    with pytest.raises(ValueError):
        c.seal(0, b"x" * 1023, False)
    with pytest.raises(ValueError):
        c.seal(0, b"x" * 1025, True)


def test_frame_is_bound_to_index_final_flag_and_header():
    dek = os.urandom(32)
    h = make_header()
    c = FrameCipher(dek, h)
    frame = c.seal(2, b"a" * 1024, False)
    assert c.open(2, frame, False) == b"a" * 1024
    for index, final, other in [(1, False, h), (3, False, h), (2, True, h), (2, False, make_header())]:
        with pytest.raises(FrameAuthError) as e:
            FrameCipher(dek, other).open(index, frame, final)
        assert e.value.index == index and f"frame {index} failed authentication" in str(e.value)


@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(0, 6000), st.sampled_from([1024, 1500, 4096]))
def test_random_access_rewrite_equals_reencoding(data, length, f):
    """Rewriting frame i in place decrypts to the same plaintext as encoding the edited whole."""
    dek = os.urandom(32)
    h = make_header(f)
    c = FrameCipher(dek, h)
    plain = bytearray(os.urandom(length))
    enc = StreamEncryptor(c)
    wire = bytearray(enc.update(bytes(plain)) + enc.finalize())
    n = frame_count(length, f)
    i = data.draw(st.integers(0, n - 1), label="frame")
    start, stop = i * f, min((i + 1) * f, length)
    new = data.draw(st.binary(min_size=stop - start, max_size=stop - start), label="bytes")
    plain[start:stop] = new
    off = frame_offset(0, f, i)
    wire[off : off + len(new) + FRAME_OVERHEAD] = c.seal(i, new, i == n - 1)
    again = StreamEncryptor(c)
    reencoded = again.update(bytes(plain)) + again.finalize()
    assert len(reencoded) == len(wire)
    decoded = [c.open(j, bytes(w[frame_offset(0, f, j) : frame_offset(0, f, j) + frame_span(f)]), j == n - 1)
               for w in (wire, reencoded) for j in range(n)]
    assert b"".join(decoded[:n]) == b"".join(decoded[n:]) == bytes(plain)
