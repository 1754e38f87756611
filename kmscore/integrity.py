"""Integrity of the key store: key rows, the log head and the state digest, MAC'd.

Why: whoever can write `keys.db` (but lacks the root key) must not be able to change
what a key is or may do, nor hide records from the audit log. So:

- every key row carries `row_mac` = MAC(integrity key, canonical row), over *all* its
  columns (state, usage, spec, origin, alias, description, dates, rotation settings,
  fingerprint, expiry, deletion marks, nonce counts) and the list of its material
  versions. A row that does not verify is refused (`StoreError`), never used or re-MAC'd.
- the log head (meta `audit_head`) binds the newest audit record (seq, chain MAC) *and* a
  digest over every key's row MAC. Replaying an older copy of one row (valid MAC, old
  content: a key re-enabled, a rotation undone) or deleting a row changes the digest;
  replaying the old head as well cuts records off the log, which the head check sees.
- the anchor (`kmscore.anchor`, a file outside the store) holds the newest head it has
  seen, so replacing the whole store with an older copy, or wiping the log, is seen too.

Pure functions over rows and bytes; the store and the keyring call them.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kmscore.errors import StoreError
from kmscore.rootkey import RootKey

HEAD = "audit_head"
GENESIS = b"\x00" * 32
_HEAD_SIZE = 8 + 32 + 32 + 32  # seq, newest chain MAC, state digest, tag
LEGACY_HEAD_SIZE = 72  # schema 1: seq, chain MAC, tag (no state digest)

BOUND_COLUMNS = (
    "key_id alias description spec usage origin state created_at deletion_date "
    "rotation_interval_days last_rotated_at material_expires_at material_fingerprint "
    "current_version resume_state deletion_due_seen nonce_uses"
).split()
"""Every column of a key row the MAC covers (all of them but the MAC itself)."""


def _canonical(row: Mapping[str, Any], versions: Iterable[int]) -> bytes:
    fields = [row.get(c) for c in BOUND_COLUMNS] + [sorted(versions)]
    return b"keyhold/key-row/1" + json.dumps(fields, separators=(",", ":")).encode()


def row_mac(root: RootKey, row: Mapping[str, Any], versions: Iterable[int]) -> bytes:
    """The MAC that binds one key row and its version numbers to the root key."""
    return root.integrity_mac(_canonical(row, versions))


def row_ok(root: RootKey, row: Mapping[str, Any], versions: Iterable[int]) -> bool:
    mac = row.get("row_mac")
    return isinstance(mac, bytes) and hmac.compare_digest(mac, row_mac(root, row, versions))


def row_refusal(key_id: str) -> StoreError:
    return StoreError(
        f"key {key_id}: its row in the key store fails authentication (it was changed outside "
        "keyhold, or replaced by an older copy); the key is refused. Run `kms store verify`"
    )


def state_digest(root: RootKey, macs: Iterable[tuple[str, bytes | None]]) -> bytes:
    """A MAC over the set of keys and their row MACs, ordered by key id."""
    body = b"".join(k.encode() + b"\0" + (m or b"") + b"\n" for k, m in sorted(macs))
    return root.integrity_mac(b"keyhold/state/1" + body)


@dataclass(frozen=True)
class Head:
    """The log head: newest audit record and the state digest at that time."""

    seq: int
    mac: bytes
    digest: bytes

    def encode(self, root: RootKey) -> bytes:
        body = self.seq.to_bytes(8, "big") + self.mac + self.digest
        return body + root.integrity_mac(b"keyhold/head/1" + body)

    @classmethod
    def decode(cls, root: RootKey, raw: bytes | None) -> "Head | None":
        """The head, or None if there is none; StoreError if it is not one we wrote."""
        if raw is None:
            return None
        if len(raw) != _HEAD_SIZE or not hmac.compare_digest(
            raw[-32:], root.integrity_mac(b"keyhold/head/1" + raw[:-32])
        ):
            raise StoreError(
                "the audit log head in the key store was altered: records may have been cut "
                "or key rows replaced. Run `kms store verify`"
            )
        return cls(int.from_bytes(raw[:8], "big"), raw[8:40], raw[40:72])


def check_state(root: RootKey, head: Head | None, last: tuple[int, bytes] | None,
                macs: list[tuple[str, bytes | None]]) -> list[str]:
    """Problems of one consistent snapshot: head vs newest record, head vs key rows."""
    problems = []
    seq, mac = last if last else (0, GENESIS)
    if head is None:
        if seq or macs:
            problems.append("the audit log head is missing: the log or the store was replaced")
        return problems
    if head.seq != seq or not hmac.compare_digest(head.mac, mac):
        if seq < head.seq:
            problems.append(f"audit records {seq + 1}..{head.seq} are missing: the log was cut at the end")
        else:
            problems.append(
                f"the newest audit record ({seq}) is not the log head ({head.seq}): records were "
                "added or replaced outside keyhold"
            )
    if not hmac.compare_digest(head.digest, state_digest(root, macs)):
        problems.append(
            "the key rows do not match the log head: a key row was added, deleted or replaced "
            "by an older copy outside keyhold"
        )
    return problems


class RowSealer:
    """Attached to a Store by the keyring once the root key opened it (see store.RowSealer)."""

    __slots__ = ("_root",)

    def __init__(self, root: RootKey) -> None:
        self._root = root

    def verify(self, row: dict[str, Any], versions: list[int]) -> None:
        if not row_ok(self._root, row, versions):
            raise row_refusal(row["key_id"])

    def mac(self, row: dict[str, Any], versions: list[int]) -> bytes:
        return row_mac(self._root, row, versions)
