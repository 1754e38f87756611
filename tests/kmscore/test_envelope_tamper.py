"""The tamper matrix: every single-byte change, every truncation, swapped, duplicated,
dropped or spliced frames of a small envelope are refused (never wrong plaintext)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmscore.dkcache import DataKeyCache, ReusePolicy
from kmscore.envelope import (
    EnvelopeError,
    FrameCipher,
    Header,
    StreamDecryptor,
    StreamEncryptor,
    frame_offset,
    frame_span,
    header_length,
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


# -- hypothesis: arbitrary and mutated inputs to the decoders ------------------------------------

@given(st.binary(max_size=200))
def test_header_decoder_on_any_bytes_raises_only_envelope_errors(data):
    for candidate in (data, b"KHEV\x01" + data):
        try:
            h = Header.decode(candidate)
        except EnvelopeError:
            continue
        assert h.encode() == candidate[: h.size]
        assert header_length(candidate) == h.size


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_envelopes_are_refused_or_unchanged(sample, data):
    """Random edits (overwrite a run, insert, delete, cut) fed in random pieces: the
    decoder either refuses or the edit was a no-op."""
    kms, h, c, wire = sample
    edited = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        at = data.draw(st.integers(0, len(edited)), label="at")
        kind = data.draw(st.sampled_from(["overwrite", "insert", "delete", "cut"]), label="kind")
        blob = data.draw(st.binary(min_size=1, max_size=40), label="bytes")
        if kind == "overwrite":
            edited[at : at + len(blob)] = blob
        elif kind == "insert":
            edited[at:at] = blob
        elif kind == "delete":
            del edited[at : at + len(blob)]
        else:
            del edited[at:]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(edited)), max_size=5), label="pieces"))
    pieces = [bytes(edited[a:b]) for a, b in zip([0, *cuts], [*cuts, len(edited)])]
    memo: dict = {}

    def opener(header: Header) -> FrameCipher:
        raw = header.encode()
        if raw not in memo:
            memo[raw] = open_envelope(kms, header)
        return memo[raw]

    dec = StreamDecryptor(opener)
    try:
        out = b"".join(bytes(dec.update(p)) for p in pieces) + bytes(dec.finalize())
    except KmsError:
        return
    assert bytes(edited) == wire and out == PLAIN
