"""Replay memory: a signature is accepted once inside its clock-skew window.

Bounded: at most `capacity` signatures are remembered. Each is kept until its window
closes (signed at + window); when the memory is full the signatures whose windows close
first are forgotten, and the latest such closing time becomes a *floor*: a request
whose window closes at or before the floor is refused (ReplayWindowFull), because it
could be one of the forgotten ones. Fresh requests close later than anything forgotten,
so a flood of valid requests never locks out honest callers; only old signatures are
refused early. The memory is per process and starts empty: after a restart a request
captured in the last window could be replayed once (docs/SECURITY.md, "kms serve").
"""

from __future__ import annotations

import heapq
import threading

from kmsserve.errors import Replayed, ReplayWindowFull

CAPACITY = 100_000


class ReplayMemory:
    def __init__(self, window: float, capacity: int = CAPACITY) -> None:
        self.window = window
        self.capacity = capacity
        self._closes: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []
        self._floor = float("-inf")
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._closes)

    def check(self, signer: str, signature: str, signed_at: float, now: float) -> None:
        """Remember the signature; Replayed if it was seen inside its window,
        ReplayWindowFull if it is older than what the memory had to forget."""
        closes = signed_at + self.window
        slot = (signer, signature)
        with self._lock:
            self._forget(lambda c: c <= now)
            if slot in self._closes:
                raise Replayed("this signature was already used")
            if closes <= self._floor:
                raise ReplayWindowFull("this signature was already used")
            self._forget(lambda c: len(self._closes) >= self.capacity, raise_floor=True)
            self._closes[slot] = closes
            heapq.heappush(self._heap, (closes, slot))

    def _forget(self, while_, raise_floor: bool = False) -> None:
        heap = self._heap
        while heap and while_(heap[0][0]):
            closes, slot = heapq.heappop(heap)
            self._closes.pop(slot, None)
            if raise_floor:
                self._floor = max(self._floor, closes)
