"""The nonce budget of AES-256-GCM keys with random 96-bit nonces.

NIST SP 800-38D (8.3) allows at most 2^32 invocations of the authenticated encryption
function with random 96-bit IVs under one key: beyond that the chance of a repeated
nonce (which leaks the XOR of two plaintexts and lets an attacker forge tags) exceeds
2^-32. keyhold keeps random nonces and counts:

- every CMK version (`LoadedKey.seal`: encrypt-data, create-datakey, encrypt-datakey)
  takes a ticket from its `NonceBudget`; tickets are reserved in blocks in the key's
  row (`nonce_uses`, one count per version, MAC'd with the row), so all processes
  sharing the store add to one count, and a process killed with unused tickets only
  over-counts (the safe side). Blocks start small (a CLI process wastes at most
  `FIRST_BLOCK`) and grow fourfold up to `MAX_BLOCK`.
- at `ROTATE_AT` (2^31) a KMS-generated AES_256 key rotates itself (new version, new
  count); at `LIMIT` (2^32) a version refuses to encrypt: imported (EXTERNAL) material
  cannot rotate, so such a key must be replaced by a new key before then.
- envelope DEKs: `kmscore.envelope.frames.FrameCipher` counts the frames it seals and
  refuses past `LIMIT` (per FrameCipher, in memory: see docs/SECURITY.md).

The root key's own sealing (a handful of uses per key version) is not counted.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable

from kmscore.errors import KeyUnavailable

LIMIT = 2**32
ROTATE_AT = 2**31
FIRST_BLOCK = 256
MAX_BLOCK = 2**20


class NonceBudget:
    """Tickets for one key version; `take()` is one counter step on the hot path."""

    __slots__ = ("tickets", "allowed", "_block", "_lock", "_reserve")

    def __init__(self, reserve: Callable[[int], None], first_block: int = FIRST_BLOCK) -> None:
        self.tickets = itertools.count()  # next() is atomic under the GIL
        self.allowed = 0
        self._block = first_block
        self._lock = threading.Lock()
        self._reserve = reserve

    def __repr__(self) -> str:
        return f"<NonceBudget {self.allowed} reserved>"

    def take(self) -> None:
        """Count one encryption; KeyUnavailable if the version's budget is spent.
        (`LoadedKey.seal` inlines these two lines: it is the hot path.)"""
        ticket = next(self.tickets)
        if ticket >= self.allowed:
            self.refill(ticket)

    def refill(self, ticket: int) -> None:
        with self._lock:
            while ticket >= self.allowed:
                self._reserve(self._block)
                self.allowed += self._block
                self._block = min(self._block * 4, MAX_BLOCK)


def parse_uses(text: str | None) -> dict[int, int]:
    return {int(k): int(v) for k, v in json.loads(text or "{}").items()}


def format_uses(uses: dict[int, int]) -> str:
    return json.dumps({str(k): v for k, v in sorted(uses.items())}, separators=(",", ":"))


def check_reserve(name: str, version: int, used: int, n: int) -> int:
    """The count after reserving n more; KeyUnavailable past the NIST bound."""
    if used + n > LIMIT:
        raise KeyUnavailable(
            f"key {name} version {version} has used its budget of encryptions with random nonces "
            f"({used} counted, the limit for one AES-GCM key is 2^32, NIST SP 800-38D): rotate it "
            "with `kms rotate-key`, or move to a new key if its material is imported"
        )
    return used + n


def should_rotate(total: int) -> bool:
    return total >= ROTATE_AT
