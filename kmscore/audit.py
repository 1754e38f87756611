"""The audit log: every key operation, append-only and hash-chained.

Each record carries MAC = HMAC(audit key, previous MAC || canonical record), with the
audit key derived from the root key, so a record cannot be edited, removed or
inserted without the root key. The newest (seq, MAC) is also kept in the store's
authenticated log head (with a digest of every key row, see kmscore.integrity), so
cutting records off the end is detected too; and in the anchor file outside the store
(kmscore.anchor), so a wipe of log and head, or an older copy of the store, is detected.

Two ways in, one rule: no operation returns its result before its record is durable.

- Lifecycle changes (`append_now`) write their record in the same transaction as the
  change: a change that rolls back leaves no record, a committed one always has it.
- Cryptographic operations (`record`) are counted in this process's audit journal
  (`kmscore.auditjournal`, a file mapped MAP_SHARED) before they return, and merged
  into the chain every `flush_interval` seconds by a thread with its own store
  connection (it never holds the connection the operations use while it waits for
  the write lock). Identical operations (same operation, key, caller and outcome) of
  one merge become one record with a count and the times of the first and last.
  A process killed with SIGKILL loses nothing: its journal is merged by the next
  process that sweeps (every Kms at open and in maintenance). A merge that fails
  (store locked, disk full) keeps the journal bank and retries; once both banks are
  full of distinct records (2 x 256) operations fail closed with AuditError.
  Power loss can lose the counts of the last `flush_interval` (they are msync'ed
  every tick).

Both ways append through the `StoreGuard` of the connection the transaction runs on
(the caller's for `append_now`, the merger's own for journal merges and housekeeping):
`head_position` first checks that the key rows still match the authenticated head
(unless this transaction changed them), `write_head` binds the new newest record and
the rows' digest, and the guard's commit hook moves the anchor.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import dataclasses
import json
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kmscore import auditjournal as aj
from kmscore.errors import AuditError, KmsError
from kmscore.integrity import GENESIS, HEAD  # noqa: F401  (re-exported)
from kmscore.rootkey import RootKey
from kmscore.store import Store
from kmscore.storeguard import StoreGuard

_pack_count = aj.COUNT_LAST.pack_into  # (mapped journal, slot offset, count, last time)
_now = time.time

_CALLER: contextvars.ContextVar[str | None] = contextvars.ContextVar("keyhold_audit_caller", default=None)


@contextlib.contextmanager
def calling_as(caller: str) -> Iterator[None]:
    """Operations inside are audited as `caller` instead of the Kms's own caller: a
    server records each request's access key (contextvars follow it into worker threads)."""
    token = _CALLER.set(caller)
    try:
        yield
    finally:
        _CALLER.reset(token)


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


JOURNALS = "audit_journals"  # meta: {journal id: newest merged epoch}
JOURNAL_DIR = "audit-journal"


class AuditLog:
    def __init__(
        self,
        store: Store,
        root: RootKey,
        caller: str,
        flush_interval: float = 0.2,
        housekeeping: tuple[Callable[[Store], None], float] | None = None,
        *,
        guard: StoreGuard,
        fold: Callable[[Store, list[aj.Group]], None] | None = None,
        merged: Callable[[list[aj.Group]], None] | None = None,
    ) -> None:
        """`housekeeping`: (job, interval) run by the audit thread on its own connection.
        `guard`: the StoreGuard attached to `store`; the merger's connection gets its own.
        `fold(store, groups)`: applies merged groups to key rows in the merge's own
        transaction; `merged(groups)`: told after this process's own groups committed
        (both: journaled nonce reservations, kmscore.nonceledger)."""
        self._fold = fold
        self._on_merged = merged
        self._store = store
        self._root = root
        self._guard = guard  # kmscore.storeguard.StoreGuard: reads and writes the log head
        self.caller = caller
        self._interval = flush_interval
        self._folder = Path(store.path).parent / JOURNAL_DIR
        self._journal: aj.Journal | None = None
        self._mm = None
        self._lock = threading.Lock()  # the active bank: slots and counts
        self._merge_lock = threading.Lock()  # one merge at a time; never taken by operations
        self._slots: dict[tuple, list] = {}  # (op, key, outcome, caller) -> [offset, count]
        self._active = 0
        self._full: int | None = None  # a bank waiting to be merged
        self._merger: Store | None = None
        self._merger_guard: StoreGuard | None = None
        self.merge_attempts = 0
        self._merge_error: BaseException | None = None  # the last merge's failure
        self.merge_failures = 0
        self._housekeeping = housekeeping
        self._next_housekeeping = time.monotonic() + (housekeeping[1] if housekeeping else 0.0)
        self._closed = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kms-audit", daemon=True)
        self._thread.start()
        ref = weakref.ref(self)
        atexit.register(lambda: (a := ref()) is not None and a._close_at_exit())
        os.register_at_fork(after_in_child=lambda: (a := ref()) is not None and a._after_fork())

    def _after_fork(self) -> None:
        """A forked child must not count into its parent's journal (nor hold its lock):
        it starts a journal of its own on its first record."""
        if self._journal is not None:
            os.close(self._journal.fd)  # the parent's flock stays: it has its own descriptor
        self._journal, self._mm, self._slots, self._active, self._full = None, None, {}, 0, None
        self._merger = self._merger_guard = None  # a SQLite connection must not cross a fork
        self._lock, self._merge_lock = threading.Lock(), threading.Lock()
        self._wake = threading.Event()
        self.caller = re.sub(r"pid=\d+", f"pid={os.getpid()}", self.caller)
        self._thread = threading.Thread(target=self._run, name="kms-audit", daemon=True)
        self._thread.start()

    # -- recording ---------------------------------------------------------------------
    def record(self, operation: str, key_id: str | None, outcome: str = "ok", caller: str | None = None) -> None:
        """Count an operation in the journal; raises AuditError (fail closed) if it cannot.

        The hot path of every cryptographic operation: a dict lookup and one 16-byte
        store into the mapped journal; no system call."""
        key = (operation, key_id, outcome, caller or _CALLER.get())
        lock = self._lock
        lock.acquire()  # explicit: `with` costs a third of this method
        try:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._new_slot(key)
            n = slot[1] = slot[1] + 1
            _pack_count(self._mm, slot[0], n, _now())
        finally:
            lock.release()

    def add(self, operation: str, key_id: str | None, outcome: str, n: int) -> None:
        """Count `n` of one operation at once (a nonce reservation the store could not
        take now); AuditError if the journal cannot hold it."""
        key = (operation, key_id, outcome, None)
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._new_slot(key)
            slot[1] += n
            _pack_count(self._mm, slot[0], slot[1], _now())

    def _new_slot(self, key: tuple) -> list:
        """A slot for a new group in the active bank (lock held); flips a full bank."""
        if self._closed:
            raise AuditError("the audit log is closed: the Kms was closed")
        if self._journal is None:
            try:
                self._journal = aj.Journal(self._folder, self.caller)
                self._mm = self._journal.mm
            except OSError as e:
                raise AuditError(
                    f"cannot create the audit journal in {self._folder}: {e.strerror}; "
                    "refusing the operation (nothing is done without its audit record)"
                ) from None
        if len(self._slots) >= aj.SLOTS:
            if self._full is not None:
                raise AuditError(
                    f"the audit log cannot be written to {self._store.path} "
                    f"({self.merge_failures} failed merges: store locked, full or read-only) and "
                    "this process's audit journal is full: refusing operations until it can be"
                )
            self._flip()
            self._wake.set()
        off = self._journal.new_slot(self._active, len(self._slots), aj.slot_text(*key), time.time())
        slot = self._slots[key] = [off, 0]
        return slot

    def _flip(self) -> None:
        """Writers move to the other (empty) bank; the full one waits for the merger."""
        journal = self._journal
        assert journal is not None and self._full is None
        other = 1 - self._active
        journal.start_bank(other, journal.epoch(self._active) + 1)
        self._full, self._active, self._slots = self._active, other, {}

    def append_now(
        self, operation: str, key_id: str | None, outcome: str = "ok", caller: str | None = None,
        store: Store | None = None,
    ) -> None:
        """Append a record to the chain now, inside the caller's write transaction (so a
        rolled-back change leaves no record and a committed one always has its record)."""
        now = time.time()
        store = store or self._store
        with store.write():
            self._append(store, [aj.Group(operation, key_id, outcome, caller or _CALLER.get(), 1, now, now)])

    # -- the chain -----------------------------------------------------------------------
    def _append(self, store: Store, groups: list[aj.Group]) -> None:
        """Chain `groups` onto the log (inside a write transaction of `store`)."""
        if not groups:
            return
        guard = self._guard_of(store)
        seq, prev = guard.head_position()  # also checks the rows against the head
        rows = []
        for g in sorted(groups, key=lambda g: g.first):
            seq += 1
            caller = g.caller or self.caller
            record = canonical(seq, g.first, g.operation, g.key_id, caller, g.outcome, g.count, g.last)
            prev = chain_mac(self._root, prev, record)
            rows.append((seq, g.first, g.operation, g.key_id, caller, g.outcome, g.count, g.last, prev))
        store.audit_append(rows)
        guard.write_head(seq, prev)

    def _guard_of(self, store: Store) -> StoreGuard:
        """The StoreGuard of the connection a transaction runs on (the head is read and
        written, and the anchor moved after COMMIT, through the connection actually used)."""
        if store is self._store:
            return self._guard
        if store is self._merger and self._merger_guard is not None:
            return self._merger_guard
        raise AuditError("an audit append on a connection that has no store guard")  # a bug

    def _connect(self) -> tuple[Store, StoreGuard]:
        """The merger's own connection, with its own StoreGuard (row sealer, head and
        anchor hooks), so journal merges and housekeeping keep the store's integrity."""
        store = Store(self._store.path, create=False)
        try:
            guard = StoreGuard(store, self._root, self._guard.anchor_path)
            guard.attach()
        except BaseException:
            store.close()
            raise
        return store, guard

    @staticmethod
    def _merged(store: Store) -> dict[str, int]:
        raw = store.get_meta(JOURNALS)
        try:
            return {str(k): int(v) for k, v in json.loads(raw).items()} if raw else {}
        except (ValueError, AttributeError, TypeError):
            return {}

    def _commit_bank(self, store: Store, journal_id: str, epoch: int, groups: list[aj.Group], caller: str) -> None:
        """Append one journal bank and mark its epoch merged, in one transaction."""
        with store.write():
            merged = self._merged(store)
            if epoch <= merged.get(journal_id, 0):
                return  # merged before a crash kept it from being cleared
            self._append(store, [g if g.caller else dataclasses.replace(g, caller=caller) for g in groups])
            if self._fold is not None:
                self._fold(store, groups)
            merged[journal_id] = epoch
            store.set_meta(JOURNALS, json.dumps(merged, sort_keys=True).encode())

    # -- merging -------------------------------------------------------------------------
    def flush(self) -> None:
        """Merge everything this process has journaled into the chain (AuditError if the
        store cannot take it now; the records stay in the journal and are retried)."""
        with self._merge_lock:
            self._merge_full()
            with self._lock:
                if self._slots and self._full is None:
                    self._flip()
            self._merge_full()

    def _merge_full(self) -> None:
        """Merge the bank that waits for it, if any (merge lock held)."""
        bank = self._full
        if bank is None:
            return
        journal = self._journal
        assert journal is not None
        self.merge_attempts += 1
        epoch, groups = aj.read_bank(journal.mm, bank)
        try:
            if self._merger is None:
                self._merger, self._merger_guard = self._connect()
            self._commit_bank(self._merger, journal.id, epoch, groups, self.caller)
        except (KmsError, OSError, sqlite3.Error) as e:
            self.merge_failures += 1
            self._merge_error = e
            raise AuditError(f"cannot write the audit log to {self._store.path}: {e}") from None
        self._merge_error = None
        if self._on_merged is not None:
            self._on_merged(groups)
        journal.clear_bank(bank)
        with self._lock:
            self._full = None

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._closed:
                return
            try:
                self.flush()
                if self._journal is not None:
                    self._journal.sync()
            except (KmsError, ValueError):  # store busy, full or closed: kept, retried next tick
                continue
            if self._housekeeping and time.monotonic() >= self._next_housekeeping:
                job, every = self._housekeeping
                self._next_housekeeping = time.monotonic() + every
                try:
                    with self._merge_lock:
                        if self._merger is not None and not self._closed:
                            job(self._merger)
                except (KmsError, sqlite3.Error, OSError):
                    pass  # the next tick (or the next process to open the store) retries

    def recover(self, store: Store | None = None) -> int:
        """Merge the journals of dead processes (and forget merged ones); returns how many.

        Runs outside any transaction: every orphan is merged in its own one."""
        store = store or self._store
        done = 0
        for orphan in aj.orphans(self._folder):
            try:
                for epoch, groups in orphan.banks:
                    if groups:
                        self._commit_bank(store, orphan.id, epoch, groups, orphan.caller)
            except KmsError:
                orphan.release()  # retried by the next sweep
                continue
            orphan.remove()
            done += 1
        mine = self._journal.id if self._journal else None
        present = aj.live_ids(self._folder)
        if not any(j not in present and j != mine for j in self._merged(store)):
            return done  # nothing to forget: no write transaction (every open runs this)
        with store.write():
            merged = self._merged(store)
            present = aj.live_ids(self._folder)
            stale = [j for j in merged if j not in present and j != mine]
            for j in stale:
                del merged[j]
            store.set_meta(JOURNALS, json.dumps(merged, sort_keys=True).encode())
        return done

    def close(self) -> None:
        """Merge what is left and remove the journal; if the store cannot take it, the
        journal stays on disk and the next sweep merges it, and the store's error is
        raised (e.g. StoreError: its last records are not written over a tampered store)."""
        if self._closed:
            return
        failed: KmsError | None = None
        try:
            self.flush()
        except KmsError as e:
            failed = self._merge_error if isinstance(self._merge_error, KmsError) else e
        merged = failed is None
        self._closed = True
        self._wake.set()
        with self._merge_lock, self._lock:
            if self._journal is not None:
                self._journal.remove() if merged else self._journal.close()
            if self._merger is not None:
                self._merger.close()
                self._merger = self._merger_guard = None
        if failed is not None:
            raise failed

    def _close_at_exit(self) -> None:
        """The atexit hook: what is not merged stays in the journal; no traceback at exit."""
        try:
            self.close()
        except KmsError:
            pass

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

    def records(self, limit: int | None = None, filters: dict[str, object] | None = None,
                since: float | None = None) -> list[dict]:
        """The newest `limit` records (all with None) that match `filters`, oldest first."""
        self.flush()
        rows = self._store.audit_query(limit, filters or {}, since)
        return [
            {"seq": s, "time": _iso(t), "operation": op, "key_id": k, "caller": c, "outcome": o,
             "count": n, "last_time": _iso(last)}
            for s, t, op, k, c, o, n, last, _ in rows
        ]


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
