"""Replay memory: a signature is not accepted again inside its clock-skew window.

SigV4 as botocore (boto3, the aws CLI) sends it signs no nonce: X-Amz-Date has whole
seconds and amz-sdk-invocation-id is added after signing, so two identical calls made in
the same second carry the same signature, and the scheme cannot tell them from a replay.
So a signature is accepted again only within REPEAT_GRACE seconds (server clock) of its
first use — an honest repeat arrives within that — and refused ever after, until its
window closes. What is left is a replay within REPEAT_GRACE of the original, by someone
who saw the request (through TLS).

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
REPEAT_GRACE = 5.0


class ReplayMemory:
    def __init__(self, window: float, capacity: int = CAPACITY, grace: float = REPEAT_GRACE) -> None:
        self.window = window
        self.grace = grace
        self.capacity = capacity
        self._first: dict[tuple[str, str], float] = {}  # signature -> first use (server time)
        self._heap: list[tuple[float, tuple[str, str]]] = []
        self._floor = float("-inf")
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._first)

    def check(self, signer: str, signature: str, signed_at: float, now: float, *, repeats: bool = True) -> None:
        """Remember the signature; Replayed if it was first used over REPEAT_GRACE ago
        (at all, unless `repeats`: an API whose clients sign a nonce has no honest
        repeats), ReplayWindowFull if it is older than what the memory had to forget."""
        closes = signed_at + self.window
        slot = (signer, signature)
        with self._lock:
            self._forget(lambda c: c < now)  # sigv4 accepts |now - signed at| == window itself
            first = self._first.get(slot)
            if first is not None:
                if repeats and now - first <= self.grace:
                    return  # the same call made twice in one second (see above)
                raise Replayed("this signature was already used")
            if closes <= self._floor:
                raise ReplayWindowFull("this signature was already used")
            self._forget(lambda c: len(self._first) >= self.capacity, raise_floor=True)
            self._first[slot] = now
            heapq.heappush(self._heap, (closes, slot))

    def _forget(self, while_, raise_floor: bool = False) -> None:
        heap = self._heap
        while heap and while_(heap[0][0]):
            closes, slot = heapq.heappop(heap)
            self._first.pop(slot, None)
            if raise_floor:
                self._floor = max(self._floor, closes)
