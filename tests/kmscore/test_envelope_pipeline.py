"""The buffer-to-buffer frame functions and the read / seal / write pipeline of
`kms encrypt-file` / `decrypt-file` (issue 14): the same bytes as the streaming
encoder, frame for frame, at every chunk boundary; the same refusals."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmscore.cli.envelope import CHUNK
from kmscore.envelope import (
    FRAME_OVERHEAD,
    FrameAuthError,
    FrameCipher,
    Header,
    StreamDecryptor,
    StreamEncryptor,
    ciphertext_length,
    frame_span,
    open_frames,
    seal_frames,
)

DEK = bytes(range(32))
HEADER = Header(1, 0, 1024, b"m" * 16, b"w" * 81)


def counting_random():
    """A deterministic nonce source (the FrameCipher seam), so two encoders can be compared."""
    counter = itertools.count()
    return lambda n: b"".join(next(counter).to_bytes(4, "big") for _ in range(n // 4))


def by_stream(plain: bytes) -> bytes:
    enc = StreamEncryptor(FrameCipher(DEK, HEADER, random=counting_random()))
    return bytes(enc.update(plain)) + enc.finalize()


def by_chunks(plain: bytes, frames_per_chunk: int) -> bytes:
    """What encrypt-file does: whole-frame chunks, each sealed once the next one exists."""
    c = FrameCipher(DEK, HEADER, random=counting_random())
    size = frames_per_chunk * c.frame_size
    chunks = [plain[i : i + size] for i in range(0, len(plain), size)] or [b""]
    out, index = bytearray(), 0
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        buf = bytearray(frames_per_chunk * frame_span(c.frame_size))
        n = seal_frames(c, index, chunk, buf, last_is_final=last)
        out += buf[:n]
        index += len(chunk) // c.frame_size
    return bytes(out)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 9 * 1024 + 3), st.integers(1, 4))
def test_seal_frames_gives_the_streaming_encoders_bytes(length, per_chunk):
    plain = os.urandom(length)
    assert by_chunks(plain, per_chunk) == by_stream(plain)
    assert len(by_stream(plain)) == ciphertext_length(length, 1024)


@pytest.mark.parametrize("length", [0, 1, 1023, 1024, 1025, 4096, 4097])
def test_open_frames_then_the_stream_decryptor_for_the_last_chunk(length):
    plain = os.urandom(length)
    sealed = by_stream(plain)
    c = FrameCipher(DEK, HEADER)
    span, per_chunk = frame_span(1024), 2
    size = per_chunk * span
    pieces = [sealed[i : i + size] for i in range(0, len(sealed), size)]
    out, index = bytearray(), 0
    for piece in pieces[:-1]:
        buf = bytearray(per_chunk * 1024)
        out += buf[: open_frames(c, index, piece, buf)]
        index += per_chunk
    last = StreamDecryptor(c, first_frame=index)
    out += last.feed(pieces[-1]) + last.finalize()
    assert bytes(out) == plain


def test_a_frame_altered_in_an_early_chunk_names_its_index():
    sealed = bytearray(by_stream(os.urandom(5000)))
    sealed[frame_span(1024) * 1 + 40] ^= 1  # frame 1, inside the first chunk of 2 frames
    buf = bytearray(2 * 1024)
    with pytest.raises(FrameAuthError) as e:
        open_frames(FrameCipher(DEK, HEADER), 0, sealed[: 2 * frame_span(1024)], buf)
    assert e.value.index == 1


def test_seal_frames_refuses_a_partial_frame_that_is_not_final():
    with pytest.raises(ValueError):
        seal_frames(FrameCipher(DEK, HEADER), 0, b"x" * 1000, bytearray(4096), last_is_final=False)


# -- through the real `kms` command ----------------------------------------------------------
@pytest.fixture
def files(tmp_path, run_kms):
    run_kms("create-key", "--alias", "app/f")
    return tmp_path


@pytest.mark.parametrize("length", [CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 4096])
@pytest.mark.parametrize("through", ["files", "pipes"])
def test_round_trip_at_chunk_boundaries(files, run_kms, length, through):
    plain = os.urandom(length)
    (files / "p").write_bytes(plain)
    if through == "files":
        assert run_kms("encrypt-file", "app/f", str(files / "p"), str(files / "e"),
                       "--frame-size", "4096").returncode == 0
        sealed = (files / "e").read_bytes()
        assert run_kms("decrypt-file", str(files / "e"), str(files / "d")).returncode == 0
        assert (files / "d").read_bytes() == plain
    else:  # a pipe gives short reads: chunks are still filled to whole frames
        enc = run_kms("encrypt-file", "app/f", "-", "-", "--frame-size", "4096", input=plain)
        assert enc.returncode == 0, enc.stderr
        sealed = enc.stdout
        dec = run_kms("decrypt-file", "-", "-", input=sealed)
        assert dec.returncode == 0 and dec.stdout == plain
    header = Header.decode(sealed[: len(sealed) - ciphertext_length(length, 4096)])
    assert header.frame_size == 4096
    assert len(sealed) == header.size + ciphertext_length(length, 4096)  # the format is unchanged


def test_an_envelope_cut_at_a_chunk_boundary_is_refused_without_output(files, run_kms):
    (files / "p").write_bytes(os.urandom(3 * CHUNK))
    assert run_kms("encrypt-file", "app/f", str(files / "p"), str(files / "e"), "--frame-size", "4096").returncode == 0
    data = (files / "e").read_bytes()
    header_size = len(data) - ciphertext_length(3 * CHUNK, 4096)
    span = frame_span(4096)
    per_chunk = CHUNK // 4096
    (files / "cut").write_bytes(data[: header_size + 2 * per_chunk * span])  # whole chunks, no final frame
    r = run_kms("decrypt-file", str(files / "cut"), str(files / "d"))
    assert r.returncode != 0 and b"cut short" in r.stderr and b"Traceback" not in r.stderr
    assert not (files / "d").exists()
    bad = bytearray(data)
    bad[header_size + 5 * span + FRAME_OVERHEAD] ^= 1  # a frame of the first chunk
    (files / "bad").write_bytes(bad)
    r = run_kms("decrypt-file", str(files / "bad"), str(files / "d"))
    assert r.returncode != 0 and b"frame 5" in r.stderr and not (files / "d").exists()

