"""The audit log: every key operation, append-only and hash-chained.

Each record carries MAC = HMAC(audit key, previous MAC || canonical record), with the
audit key derived from the root key, so a record cannot be edited, removed or
inserted without the root key. The newest (seq, MAC) is also kept in the store's
authenticated log head (with a digest of every key row, see kmscore.integrity), so
cutting records off the end is detected too; and in the anchor file outside the store
(kmscore.anchor), so a wipe of log and head, or an older copy of the store, is detected.

Lifecycle changes are recorded in the same transaction as the change. Cryptographic
operations are queued in memory and written in batches (every `flush_interval`
seconds and at exit): an audit insert per 4 KiB encryption would cost ten times the
encryption itself. Within a batch, identical operations (same operation, key, caller
and outcome) are written as one record with a count and the times of the first and
last of them. A process killed with SIGKILL loses at most one batch window.
"""

from __future__ import annotations

import atexit
import collections
import json
import threading
import time
import weakref
from dataclasses import dataclass

from kmscore.integrity import GENESIS, HEAD  # noqa: F401  (re-exported)
from kmscore.rootkey import RootKey
from kmscore.store import Store


def canonical(
    seq: int, when: float, operation: str, key_id: str | None, caller: str, outcome: str, count: int, last: float
) -> bytes:
    fields = [seq, when, operation, key_id or "", caller, outcome, count, last]
    return json.dumps(fields, separators=(",", ":")).encode()


def chain_mac(root: RootKey, prev: bytes, record: bytes) -> bytes:
    return root.audit_mac(prev + record)


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    records: int
    problem: str = ""


class AuditLog:
    def __init__(self, store: Store, root: RootKey, caller: str, flush_interval: float = 0.2,
                 guard=None) -> None:
        self._store = store
        self._root = root
        self._guard = guard  # kmscore.storeguard.StoreGuard: reads and writes the log head
        self.caller = caller
        self._pending: collections.deque = collections.deque()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._interval = flush_interval
        self._thread = threading.Thread(target=self._run, name="kms-audit", daemon=True)
        self._thread.start()
        ref = weakref.ref(self)
        atexit.register(lambda: (a := ref()) is not None and a.close())

    def record(self, operation: str, key_id: str | None, outcome: str = "ok", caller: str | None = None) -> None:
        """Queue a record; it reaches the store within `flush_interval` seconds."""
        self._pending.append((time.time(), operation, key_id, caller or self.caller, outcome))

    def flush(self) -> None:
        """Write every queued record (joins the caller's write transaction if any)."""
        if not self._pending:
            return
        # Lock order is always store, then queue: lifecycle changes flush from inside
        # their own write transaction while the background thread may be flushing too.
        with self._store.write(), self._flush_lock:
            seq, prev = self._guard.head_position()
            groups: dict[tuple, list] = {}  # (op, key, caller, outcome) -> [first, last, count]
            while self._pending:
                when, *what = self._pending.popleft()
                group = groups.get(tuple(what))
                if group is None:
                    groups[tuple(what)] = [when, when, 1]
                else:
                    group[1], group[2] = when, group[2] + 1
            rows = []
            for (op, key_id, caller, outcome), (first, last, count) in groups.items():
                seq += 1
                record = canonical(seq, first, op, key_id, caller, outcome, count, last)
                prev = chain_mac(self._root, prev, record)
                rows.append((seq, first, op, key_id, caller, outcome, count, last, prev))
            self._store.audit_append(rows)
            self._guard.write_head(seq, prev)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._interval)
            try:
                self.flush()
            except Exception:  # the store is closed or busy: retry on the next tick
                if self._closed:
                    return

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._wake.set()

    def verify(self) -> VerifyReport:
        """Walk the chain; report the first missing or altered record."""
        self.flush()
        prev, expected, count = GENESIS, 1, 0
        for seq, when, op, key_id, caller, outcome, n, last, mac in self._store.audit_rows():
            if seq != expected:
                return VerifyReport(False, count, f"record {expected} is missing (next present is {seq})")
            prev = chain_mac(self._root, prev, canonical(seq, when, op, key_id, caller, outcome, n, last))
            if prev != mac:
                return VerifyReport(False, count, f"record {seq} ({op} at {_iso(when)}) was altered")
            expected, count = seq + 1, count + 1
        problems = self._guard.problems()
        if problems:
            return VerifyReport(False, count, "; ".join(problems))
        return VerifyReport(True, count)

    def records(self, limit: int | None = None) -> list[dict]:
        self.flush()
        rows = list(self._store.audit_rows())
        if limit:
            rows = rows[-limit:]
        return [
            {"seq": s, "time": _iso(t), "operation": op, "key_id": k, "caller": c, "outcome": o,
             "count": n, "last_time": _iso(last)}
            for s, t, op, k, c, o, n, last, _ in rows
        ]


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
