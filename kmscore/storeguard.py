"""StoreGuard: keeps a store's key rows, log head and anchor consistent, and checks them.

The pure parts (row MACs, head, digest) are in `kmscore.integrity`, the anchor file in
`kmscore.anchor`; this class wires them to one open store:

- on open: a new store gets an id and an anchor; a schema-1 store (made before row
  MACs) is upgraded and its rows MAC'd as they are (trust on first open by a holder of
  the root key — refused if an anchor says the store was already secured);
- `head_position` / `write_head` / `reseal_head`: the audit log and every commit that
  changed key rows write the head with the current state digest; an audit-only flush
  first checks that the rows still match the head, so a running process notices edits
  within a flush;
- `advance_anchor`: after a commit, at once if key rows changed, else at most every
  `ANCHOR_INTERVAL` seconds (so a rollback can hide at most that much of the newest
  crypto-operation records, never a key change);
- `problems()`: the cheap consistency check (one snapshot: head, newest record, row
  MACs digest, anchor), run on open and on every cache refresh.
"""

from __future__ import annotations

import hmac
import os
import time
from pathlib import Path

from kmscore import integrity
from kmscore.anchor import Anchor, AnchorState, rollback_error
from kmscore.errors import StoreError
from kmscore.integrity import GENESIS, HEAD, Head, RowSealer
from kmscore.rootkey import RootKey
from kmscore.store import Store

ANCHOR_INTERVAL = 1.0


class StoreGuard:
    def __init__(self, store: Store, root: RootKey, anchor_path: Path) -> None:
        self.store = store
        self.root = root
        self.anchor_path = anchor_path
        self.anchor: Anchor | None = None
        self.notices: list[str] = []
        self._next_anchor = 0.0

    # -- opening -----------------------------------------------------------------------
    def attach(self) -> None:
        """Give the store its sealer and hooks; secure a new or schema-1 store."""
        store = self.store
        secured = False
        with store.write():
            store_id = store.get_meta("store_id")
            if store_id is None:
                self._secure(first=store.schema_version == 1)
                store_id, secured = store.get_meta("store_id"), True
            else:
                store.sealer = RowSealer(self.root)
        self.anchor = Anchor(self.anchor_path, self.root, store_id.decode(errors="replace"))  # type: ignore[union-attr]
        store.before_commit = self.reseal_head
        store.after_begin = self.check_rows
        store.after_commit = self.advance_anchor
        if secured or (not self.anchor.exists() and self._pristine()):
            # a store secured just now; or new and a crash came before its anchor
            seq, mac = self.head_position()
            self.anchor.reset(seq, mac)

    def _secure(self, first: bool) -> None:
        """Inside the opening transaction: a store with no id is new or schema 1."""
        store = self.store
        legacy_records = store.audit_last() is not None or bool(store.row_macs())
        if store.schema_version != 1 and legacy_records:
            raise StoreError(
                f"key store {store.path} has key rows or audit records but no store id: it was altered"
            )
        if self.anchor_path.exists():
            raise StoreError(
                f"key store {store.path} looks older than its anchor {self.anchor_path} (no store "
                "id, or schema 1): it was replaced by an older copy. Restore the newest backup"
            )
        if store.schema_version == 1:
            store.upgrade_schema()
        store.set_meta("store_id", os.urandom(16).hex().encode())
        store.sealer = RowSealer(self.root)
        store.reseal_all()
        last = store.audit_last() or (0, GENESIS)
        self._write(last[0], last[1])
        if first:
            self.notices.append(
                f"upgraded key store {store.path} to schema 2: key rows are now MAC'd as they "
                f"were found, and anchored in {self.anchor_path}"
            )

    def _pristine(self) -> bool:
        return self.store.audit_last() is None and not self.store.row_macs()

    # -- the head ------------------------------------------------------------------------
    def read_head(self) -> Head | None:
        return Head.decode(self.root, self.store.get_meta(HEAD))

    def _write(self, seq: int, mac: bytes) -> None:
        digest = integrity.state_digest(self.root, self.store.row_macs())
        self.store.set_meta(HEAD, Head(seq, mac, digest).encode(self.root))

    def head_position(self) -> tuple[int, bytes]:
        """(seq, MAC) of the newest record, from the authenticated head (inside a write).

        Unless this transaction changed key rows itself, the rows must still be what the
        head says: so every audit flush is also a check, made before it takes records."""
        head = self.read_head()
        if head is None:
            return 0, GENESIS
        if not self.store.keys_changed and not hmac.compare_digest(
            head.digest, integrity.state_digest(self.root, self.store.row_macs())
        ):
            raise StoreError(
                "the key rows no longer match the audit log head: a key row was added, "
                "deleted or replaced outside keyhold. Run `kms store verify`"
            )
        return head.seq, head.mac

    def check_rows(self) -> None:
        """At the start of every write transaction (km-merge): the rows must still be what
        the head says. Else a commit that changes a row (a lifecycle change, a nonce
        reservation, maintenance) would reseal the head over a row deleted or replayed
        outside keyhold, and so launder it."""
        self.head_position()

    def write_head(self, seq: int, mac: bytes) -> None:
        """After appending audit records (inside the same write transaction)."""
        self._write(seq, mac)

    def reseal_head(self) -> None:
        """Before COMMIT of a transaction that changed key rows: a new state digest."""
        seq, mac = self.head_position()
        self._write(seq, mac)

    # -- the anchor ------------------------------------------------------------------------
    def _holds(self, anchored: AnchorState) -> bool:
        if anchored.seq == 0:
            return hmac.compare_digest(anchored.mac, GENESIS)
        mac = self.store.audit_mac_at(anchored.seq)
        return mac is not None and hmac.compare_digest(mac, anchored.mac)

    def advance_anchor(self, keys_changed: bool = True) -> None:
        now = time.monotonic()
        if self.anchor is None or (not keys_changed and now < self._next_anchor):
            return
        self._next_anchor = now + ANCHOR_INTERVAL
        with self.store.snapshot():
            head = self.read_head()
        if head is not None:
            self.anchor.advance(head.seq, head.mac, self._holds)

    def reanchor(self, record) -> tuple[int, int]:
        """Accept the store as it is now (after a rollback the operator chose, or a lost
        anchor): a new head over the current rows and newest record, `record()` writes the
        audit record saying so, and the anchor is reset. Rows that fail their MAC are never
        accepted. Returns (anchored seq before, anchored seq now)."""
        assert self.anchor is not None
        bad = self.bad_rows()
        if bad:
            raise StoreError(
                f"{len(bad)} key row(s) fail authentication and cannot be accepted: {', '.join(bad)}"
            )
        try:
            before = self.anchor.read()
        except StoreError:
            before = None
        hook, self.store.after_commit = self.store.after_commit, None
        check, self.store.after_begin = self.store.after_begin, None  # the rows are accepted as they are
        try:
            with self.store.write():
                last = self.store.audit_last() or (0, GENESIS)
                self._write(*last)
                record()
            with self.store.snapshot():
                head = self.read_head()
            assert head is not None
            self.anchor.reset(head.seq, head.mac)
        finally:
            self.store.after_commit = hook
            self.store.after_begin = check
        return (before.seq if before else 0), head.seq

    # -- checking --------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Everything inconsistent between head, newest record, key rows and the anchor."""
        store = self.store
        try:
            # the anchor first: it only moves after a commit, so a snapshot taken after
            # reading it holds the anchored record unless the store went back in time
            anchored = self.anchor.read() if self.anchor else None
            with store.snapshot():
                raw_head = store.get_meta(HEAD)
                last = store.audit_last()
                macs = store.row_macs()
                holds = anchored is None or self._holds(anchored)
        except StoreError as e:
            return [str(e)]
        try:
            head = Head.decode(self.root, raw_head)
        except StoreError as e:
            return [str(e)]
        found = integrity.check_state(self.root, head, last, macs)
        if anchored is None:
            if last is not None or macs:
                found.append(
                    f"the anchor file {self.anchor_path} is missing: a rollback of the store "
                    "could not be detected (restore it, or `kms store reanchor`)"
                )
        elif not holds:
            found.append(str(rollback_error(self.anchor_path, anchored.seq)))
        return found

    def check(self) -> None:
        """Raise StoreError with the first problem, if any (fail closed)."""
        found = self.problems()
        if found:
            raise StoreError(found[0])

    def bad_rows(self) -> list[str]:
        """Ids of key rows whose MAC does not verify."""
        return [
            r["key_id"] for r in self.store.all_keys(verify=False)
            if not integrity.row_ok(self.root, r, r["versions"])
        ]
