"""The tamper matrix: every single-byte change, every truncation, swapped, duplicated,
dropped or spliced frames of a small envelope are refused (never wrong plaintext)."""

from __future__ import annotations

import os

import pytest

from kmscore.dkcache import DataKeyCache, ReusePolicy
from kmscore.envelope import (
    FrameCipher,
    Header,
    StreamDecryptor,
    StreamEncryptor,
    frame_offset,
    frame_span,
    new_envelope,
    open_envelope,
)
from kmscore.errors import KmsError

F = 1024
PLAIN = bytes(range(256)) * 10  # 2560 bytes: frames of 1024, 1024, 512


@pytest.fixture
def sample(kms):
    kms.create_key(alias="app/t", spec="AES_256", usage="ENCRYPT_DECRYPT")
    h, c = new_envelope(kms, "app/t", F)
    enc = StreamEncryptor(c)
    wire = h.encode() + enc.update(PLAIN) + enc.finalize()
    return kms, h, c, wire


def decode(kms, wire: bytes, cipher_for: dict) -> bytes:
    """Decode the whole way: header, unwrap (memoized by header bytes), frames."""

    def opener(header: Header) -> FrameCipher:
        raw = header.encode()
        if raw not in cipher_for:
            cipher_for[raw] = open_envelope(kms, header)
        return cipher_for[raw]

    dec = StreamDecryptor(opener)
    return bytes(dec.update(wire)) + bytes(dec.finalize())


def refused(kms, wire: bytes, memo: dict) -> bool:
    try:
        decode(kms, wire, memo)
    except KmsError:
        return True
    return False


def test_the_sample_decodes(sample):
    kms, h, c, wire = sample
    assert decode(kms, wire, {}) == PLAIN


def test_every_single_byte_flip_is_refused(sample):
    kms, h, c, wire = sample
    memo: dict = {}
    accepted = []
    for i in range(len(wire)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(wire)
            bad[i] ^= mask
            if not refused(kms, bytes(bad), memo):
                accepted.append((i, mask))
    assert accepted == []


def test_every_truncation_is_refused(sample):
    kms, h, c, wire = sample
    memo: dict = {}
    assert [n for n in range(len(wire)) if not refused(kms, wire[:n], memo)] == []


def frames_of(h: Header, wire: bytes) -> list[bytes]:
    n = -(-(len(wire) - h.size) // frame_span(F))
    return [wire[frame_offset(h.size, F, i) : frame_offset(h.size, F, i) + frame_span(F)] for i in range(n)]


@pytest.mark.parametrize(
    "edit",
    [
        lambda fr: [fr[1], fr[0], fr[2]],  # swap
        lambda fr: [fr[0], fr[0], fr[2]],  # duplicate (replay) one frame
        lambda fr: [fr[0], fr[2]],  # drop a middle frame
        lambda fr: [fr[0], fr[1]],  # drop the final frame
        lambda fr: [fr[0], fr[1], fr[2], fr[2]],  # repeat the final frame
        lambda fr: [fr[0], fr[1], fr[1], fr[2]],  # insert a copy
        lambda fr: [fr[2]],  # the final frame alone
    ],
)
def test_moved_frames_are_refused(sample, edit):
    kms, h, c, wire = sample
    assert refused(kms, h.encode() + b"".join(edit(frames_of(h, wire))), {})


def test_extra_bytes_after_the_final_frame_are_refused(sample):
    kms, h, c, wire = sample
    for extra in (b"\0", os.urandom(28), c.seal(3, b"more", True)):
        assert refused(kms, wire + extra, {})


def test_frames_spliced_from_another_envelope_under_the_same_dek_are_refused(kms):
    """Two envelopes sharing a DEK (reuse policy): every frame of one, put at the same
    index into the other, fails; so does the other's header on these frames."""
    kms.create_key(alias="app/t", spec="AES_256", usage="ENCRYPT_DECRYPT")
    cache = DataKeyCache(kms, reuse=ReusePolicy(max_messages=10))
    envs = []
    for _ in range(2):
        h, c = new_envelope(cache, "app/t", F)
        enc = StreamEncryptor(c)
        envs.append((h, h.encode() + enc.update(PLAIN) + enc.finalize()))
    (h1, w1), (h2, w2) = envs
    assert h1.wrapped_dek == h2.wrapped_dek and h1.message_id != h2.message_id  # same DEK
    f1, f2 = frames_of(h1, w1), frames_of(h2, w2)
    memo: dict = {}
    assert decode(cache, w1, memo) == decode(cache, w2, memo) == PLAIN
    for i in range(3):
        spliced = list(f1)
        spliced[i] = f2[i]
        assert refused(cache, h1.encode() + b"".join(spliced), memo), i
    assert refused(cache, h1.encode() + w2[h2.size :], memo)  # h2's frames under h1's header


def test_frames_spliced_under_the_same_dek_without_a_kms():
    dek = os.urandom(32)
    h1, h2 = (Header(1, 0, F, os.urandom(16), b"w" * 81) for _ in range(2))
    frame = FrameCipher(dek, h2).seal(0, b"x" * F, False)
    with pytest.raises(KmsError):
        FrameCipher(dek, h1).open(0, frame, False)
