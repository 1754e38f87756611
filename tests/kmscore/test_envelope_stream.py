"""Streaming encode/decode in constant memory, and the envelope with a real Kms."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmscore.dkcache import DataKeyCache
from kmscore.envelope import (
    FrameAuthError,
    FrameCipher,
    Header,
    StreamDecryptor,
    StreamEncryptor,
    Truncated,
    ciphertext_length,
    envelope_context,
    frame_span,
    new_envelope,
    open_envelope,
    rewrap,
)
from kmscore.errors import InvalidCiphertext, KeyUnavailable, NotFound


def cipher(frame_size: int = 1024) -> tuple[FrameCipher, Header, bytes]:
    dek = os.urandom(32)
    h = Header(1, 0, frame_size, os.urandom(16), b"w" * 81)
    return FrameCipher(dek, h), h, dek


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *[c % (len(data) + 1) for c in cuts]})
    return [data[a:b] for a, b in zip(points, points[1:])]


def encrypt(c: FrameCipher, pieces) -> bytes:
    enc = StreamEncryptor(c)
    return b"".join(bytes(enc.update(p)) for p in pieces) + bytes(enc.finalize())


def decrypt(source, pieces) -> bytes:
    dec = StreamDecryptor(source)
    return b"".join(bytes(dec.update(p)) for p in pieces) + bytes(dec.finalize())


@settings(max_examples=150, deadline=None)
@given(st.data(), st.sampled_from([1024, 1025, 2048, 4096]), st.lists(st.integers(0, 10**6), max_size=8))
def test_round_trip_any_length_any_chunking(data, f, cuts):
    length = data.draw(st.one_of(st.sampled_from([0, 1, f - 1, f, f + 1, 2 * f, 3 * f + 7]), st.integers(0, 6 * f)))
    c, h, dek = cipher(f)
    plain = os.urandom(length)
    wire = encrypt(c, split(plain, cuts))
    assert len(wire) == ciphertext_length(length, f)
    assert decrypt(c, split(wire, cuts[::-1])) == plain
    # with the header in the stream and an opener instead of a cipher
    assert decrypt(lambda hdr: FrameCipher(dek, hdr), split(h.encode() + wire, cuts)) == plain


def test_streams_hold_at_most_a_frame():
    c, h, _ = cipher(4096)
    enc, dec = StreamEncryptor(c), StreamDecryptor(c)
    for _ in range(300):
        dec.update(enc.update(os.urandom(10_000)))
        assert len(enc._buf) <= 4096 and len(dec._buf) <= frame_span(4096)
    dec.update(enc.finalize())
    dec.finalize()


def test_empty_message_is_one_empty_final_frame():
    c, _, _ = cipher()
    wire = encrypt(c, [])
    assert len(wire) == 28 and decrypt(c, [wire]) == b""


@pytest.mark.parametrize("frames", [1, 2, 3])
def test_a_cut_at_a_frame_boundary_is_truncated(frames):
    c, _, _ = cipher()
    wire = encrypt(c, [os.urandom(1024 * 3 + 10)])
    with pytest.raises(Truncated, match="not the final frame"):
        decrypt(c, [wire[: frames * frame_span(1024)]])


def test_nothing_after_the_header_is_truncated():
    c, h, dek = cipher()
    with pytest.raises(Truncated):
        decrypt(c, [])
    with pytest.raises(Truncated):
        decrypt(lambda hdr: FrameCipher(dek, hdr), [h.encode()[:20]])


def test_used_up_streams_refuse_more():
    c, _, _ = cipher()
    enc = StreamEncryptor(c)
    enc.finalize()
    with pytest.raises(ValueError):
        enc.update(b"x")


# -- with a Kms ------------------------------------------------------------------------------
@pytest.fixture
def key(kms):
    return kms.create_key(alias="app/env", spec="AES_256", usage="ENCRYPT_DECRYPT").key_id


@pytest.mark.parametrize("through_cache", [False, True])
def test_new_open_rewrap_with_a_kms(kms, key, through_cache):
    src = DataKeyCache(kms) if through_cache else kms
    h, c = new_envelope(src, "app/env", 2048)
    assert h.flags == 0 and h.frame_size == 2048
    wire = h.encode() + encrypt(c, [b"payload" * 1000])
    assert decrypt(lambda hdr: open_envelope(src, hdr), [wire]) == b"payload" * 1000
    # the wrapped DEK is bound to this message id
    with pytest.raises(InvalidCiphertext):
        kms.decrypt_datakey(h.wrapped_dek, {"keyhold:envelope": os.urandom(16).hex()})
    assert kms.decrypt_datakey(h.wrapped_dek, envelope_context(h))

    kms.rotate_key("app/env")
    other = kms.create_key(alias="app/other", spec="AES_256", usage="ENCRYPT_DECRYPT").key_id
    for to_key, expect in [(None, (key, 2)), ("app/other", (other, 1))]:
        h2 = rewrap(kms, h, to_key)
        from kmscore.blob import peek_key

        assert peek_key(h2.wrapped_dek) == expect and h2.fixed == h.fixed
        assert decrypt(lambda hdr: open_envelope(kms, hdr), [h2.encode() + wire[h.size :]]) == b"payload" * 1000


def test_a_foreign_wrapped_dek_fails_every_frame(kms, key):
    h1, c1 = new_envelope(kms, "app/env", 1024)
    h2, _ = new_envelope(kms, "app/env", 1024)
    wire = encrypt(c1, [os.urandom(3000)])
    # h2's wrapped DEK is bound to h2's message id: it does not even unwrap for h1
    with pytest.raises(InvalidCiphertext):
        open_envelope(kms, h1.with_wrapped_dek(h2.wrapped_dek))
    # and a cipher with another DEK fails frame 0
    with pytest.raises(FrameAuthError) as e:
        decrypt(FrameCipher(os.urandom(32), h1), [wire])
    assert e.value.index == 0


def test_disabled_and_unknown_keys_are_refused(kms, key):
    h, _ = new_envelope(kms, "app/env")
    kms.disable_key("app/env")
    with pytest.raises(KeyUnavailable):
        open_envelope(kms, h)
    with pytest.raises(KeyUnavailable):
        new_envelope(kms, "app/env")
    with pytest.raises(NotFound):
        new_envelope(kms, "app/nothing")


def test_bad_frame_sizes_are_refused_before_a_kms_call(kms, key):
    from kmscore.envelope import EnvelopeError

    for f in (0, 1023, 16 * 1024 * 1024 + 1):
        with pytest.raises(EnvelopeError):
            new_envelope(kms, "app/env", f)


def test_feed_is_update_without_the_copy():
    c, h, dek = cipher(1024)
    plain = os.urandom(10_000)
    enc = StreamEncryptor(c)
    parts = [enc.feed(plain[:3000]), enc.feed(memoryview(plain)[3000:]), enc.finalize()]
    assert all(isinstance(p, (bytes, bytearray)) for p in parts)
    wire = b"".join(parts)
    dec = StreamDecryptor(c)
    assert isinstance(dec.update(wire[:5000]), bytes)
    dec = StreamDecryptor(c)
    assert b"".join([dec.feed(wire[:5000]), dec.feed(wire[5000:]), dec.finalize()]) == plain
