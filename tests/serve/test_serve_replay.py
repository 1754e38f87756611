"""The replay memory on its own (sans-IO, a fake clock passed in): one use per signature
inside its window (bar an honest same-second repeat), bounded memory that never locks
out fresh requests, and only expired signatures forgotten while there is room."""

from __future__ import annotations

import pytest

from kmsserve.auth.replay import ReplayMemory
from kmsserve.errors import Replayed, ReplayWindowFull

WINDOW = 900.0


def test_a_signature_is_refused_after_the_grace_and_until_its_window_closes():
    m = ReplayMemory(WINDOW, grace=2.0)
    m.check("ak", "sig", signed_at=1000.0, now=1000.0)
    m.check("ak", "sig", signed_at=1000.0, now=1001.5)  # the same call twice in one second
    with pytest.raises(Replayed):
        m.check("ak", "sig", signed_at=1000.0, now=1003.0)
    with pytest.raises(Replayed):
        m.check("ak", "sig", signed_at=1000.0, now=1000.0 + WINDOW)
    m.check("other-ak", "sig", signed_at=1000.0, now=1003.0)  # per access key


def test_expired_signatures_are_forgotten():
    m = ReplayMemory(WINDOW)
    for i in range(100):
        m.check("ak", f"s{i}", signed_at=1000.0, now=1000.0)
    m.check("ak", "late", signed_at=3000.0, now=3000.0)
    assert len(m) == 1


def test_a_full_memory_refuses_old_signatures_never_fresh_ones():
    m = ReplayMemory(WINDOW, capacity=10)
    for i in range(10):
        m.check("ak", f"old{i}", signed_at=1000.0 + i, now=1010.0)
    for i in range(50):  # a flood of fresh, valid requests
        m.check("ak", f"new{i}", signed_at=1100.0 + i, now=1150.0)
    assert len(m) == 10
    with pytest.raises(ReplayWindowFull):  # could be one it forgot: refused
        m.check("ak", "old3", signed_at=1003.0, now=1200.0)
    with pytest.raises(ReplayWindowFull):  # also a never-seen one signed as early
        m.check("ak", "unseen", signed_at=1005.0, now=1200.0)
    m.check("ak", "fresh", signed_at=1199.0, now=1200.0)
