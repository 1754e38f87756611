"""The replay table the workers of a pool share (sidecar.sharedreplay): sans-IO on a
bytearray, and two mappings of one file in two real processes."""

from __future__ import annotations

import hashlib
import multiprocessing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.replay import ReplayCacheFull
from sidecar.sharedreplay import SLOT, WINDOW, ReplayTable, SharedReplayGuard


def token(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest()[:16]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=200))
def test_each_nonce_is_accepted_once_within_its_window(nonces):
    table = ReplayTable(bytearray(SLOT.size * 4096))
    seen = set()
    for n in nonces:
        assert table.claim(token(n), until=100.0, now=1.0) is (n not in seen)
        seen.add(n)


def test_an_expired_claim_frees_its_slot_and_the_nonce():
    table = ReplayTable(bytearray(SLOT.size * WINDOW))
    assert table.claim(token(1), until=10.0, now=1.0)
    assert not table.claim(token(1), until=10.0, now=9.0)
    assert table.claim(token(1), until=30.0, now=11.0)  # its window closed: a new claim


def test_a_full_window_refuses_instead_of_forgetting():
    table = ReplayTable(bytearray(SLOT.size * WINDOW))  # every nonce shares one window
    for n in range(WINDOW):
        assert table.claim(token(n), until=100.0, now=1.0)
    with pytest.raises(ReplayCacheFull):
        table.claim(token(WINDOW), until=100.0, now=1.0)
    assert not table.claim(token(0), until=100.0, now=1.0)  # still remembered


def _claim_in_child(path: str, out) -> None:
    out.put(SharedReplayGuard(path, capacity=1000).claim("k", "nonce-1", 100.0, 1.0))


def test_two_processes_share_one_table(tmp_path):
    path = tmp_path / "replay"
    here = SharedReplayGuard(path, capacity=1000)
    assert here.claim("k", "nonce-1", 100.0, 1.0)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_claim_in_child, args=(str(path), out))
    child.start()
    try:
        assert out.get(timeout=60) is False  # the other process sees the claim: a replay
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
