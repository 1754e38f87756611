"""Nonce reservations that could not reach the key store at once go to the audit journal.

Why: the nonce budget (`kmscore.nonces`) counts random-nonce encryptions in the key's
row, so every process adds to one count. But an encryption must not wait for another
process's write lock, nor fail because the disk is full (docs/SECURITY.md, "No process
stalls the others"). So a reservation is tried on the store without waiting; if the
store cannot take it now (locked, full, read-only), it is counted in this process's
mapped audit journal instead (group `ReserveNonces`, outcome `ok: version V`, count = the
number of nonces), exactly as durable as an audit record: it survives kill -9 and is
merged by whichever process sweeps the journal. The merge adds it to the row's count in
the same transaction as its audit record (`fold`), through that connection's row sealer
and store guard.

The limit check then uses the stored count plus what this process journaled and has not
seen merged yet (`Ledger.pending`, read before the store, so a merge between the two
reads is counted twice, never missed). Other processes' unmerged reservations are not
seen; each process may hold at most `PENDING_CAP` of them before an encryption needs
the store again (a synchronous merge, AuditError if it fails: fail closed), so the count
is behind by at most `PENDING_CAP` per process whose store writes are failing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from kmscore import nonces

OPERATION = "ReserveNonces"
PENDING_CAP = 4 * nonces.MAX_BLOCK
_PREFIX = "ok: version "


def outcome(version: int) -> str:
    return f"{_PREFIX}{version}"


def version_of(text: str) -> int | None:
    if not text.startswith(_PREFIX):
        return None
    try:
        return int(text[len(_PREFIX):])
    except ValueError:
        return None


def reservations(groups: Iterable) -> dict[tuple[str, int], int]:
    """(key id, version) -> nonces, from merged journal groups."""
    found: dict[tuple[str, int], int] = {}
    for g in groups:
        if g.operation == OPERATION and g.key_id:
            version = version_of(g.outcome)
            if version is not None:
                found[(g.key_id, version)] = found.get((g.key_id, version), 0) + g.count
    return found


def fold(store, groups: Iterable) -> None:
    """Add journaled reservations to their rows (inside the merge's write transaction)."""
    for (key_id, version), n in sorted(reservations(groups).items()):
        row = store.key_by_id(key_id)  # verified: a forged row is never re-MAC'd
        if row is None:
            continue  # the key was destroyed meanwhile: nothing left to count for
        uses = nonces.parse_uses(row["nonce_uses"])
        uses[version] = uses.get(version, 0) + n
        store.update_key(key_id, bump=False, nonce_uses=nonces.format_uses(uses))


class Ledger:
    """This process's journaled reservations: taken, and seen merged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken: dict[tuple[str, int], int] = {}
        self._merged: dict[tuple[str, int], int] = {}

    def pending(self, key_id: str, version: int) -> int:
        with self._lock:
            k = (key_id, version)
            return self._taken.get(k, 0) - self._merged.get(k, 0)

    def pending_total(self) -> int:
        with self._lock:
            return sum(self._taken.values()) - sum(self._merged.values())

    def took(self, key_id: str, version: int, n: int) -> None:
        with self._lock:
            self._taken[(key_id, version)] = self._taken.get((key_id, version), 0) + n

    def merged(self, groups: Iterable) -> None:
        """After this process's own journal bank was committed to the store."""
        with self._lock:
            for k, n in reservations(groups).items():
                self._merged[k] = self._merged.get(k, 0) + n
