"""sidecar.decoding: bounded Content-Encoding decoding (pure, no network).

Round trips for every coding, stacked codings, the size and ratio bounds (a bomb is
refused without its output ever being held), and cut or trailing-garbage inputs.
"""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import decoding
from sidecar.errors import BadBody, TooLarge

try:
    from compression import zstd
except ImportError:
    from backports import zstd

MiB = 1 << 20
ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstd.compress,
}


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=20000), st.sampled_from(sorted(ENCODERS)))
def test_round_trip(data, coding):
    assert decoding.decode(ENCODERS[coding](data), coding, MiB) == data


def test_raw_deflate_and_stacked_codings():
    data = b'{"a": "' + b"x" * 3000 + b'"}'
    raw = zlib.compress(data)[2:-4]  # deflate without the zlib wrapper, as some servers send it
    assert decoding.decode(raw, "deflate", MiB) == data
    stacked = gzip.compress(brotli.compress(data))  # "br, gzip": brotli first, then gzip
    assert decoding.decode(stacked, "br, gzip", MiB) == data
    assert decoding.decode(data, "identity", MiB) == data


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_a_bomb_is_refused(coding):
    bomb = ENCODERS[coding](b"\0" * (64 * MiB))
    with pytest.raises(TooLarge):
        decoding.decode(bomb, coding, 16 * MiB)


def test_the_ratio_bound_refuses_before_the_size_limit():
    bomb = gzip.compress(b"\0" * (8 * MiB))  # ~8 KB in, 8 MiB out: far past 100x
    assert len(bomb) * decoding.MAX_RATIO < 8 * MiB
    with pytest.raises(TooLarge, match="compression bomb"):
        decoding.decode(bomb, "gzip", 64 * MiB)
    small = gzip.compress(b"\0" * (MiB // 2))  # under the 1 MiB floor: allowed however well it compresses
    assert decoding.decode(small, "gzip", 64 * MiB) == b"\0" * (MiB // 2)


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_cut_or_garbage_input_is_bad_body(coding):
    good = ENCODERS[coding](b"hello world " * 100)
    for bad in (good[: len(good) // 2], b"\xff" * 40):
        with pytest.raises(BadBody):
            decoding.decode(bad, coding, MiB)


def test_unknown_coding_is_refused():
    with pytest.raises(BadBody, match="not supported"):
        decoding.decode(b"abc", "compress", MiB)
