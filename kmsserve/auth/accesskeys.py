"""Access keys that keyhold issues: an id, a secret shown once, a name for people (not
necessarily unique: the id is the handle), a policy.

Kept in their own SQLite file beside the key store (`access-keys.db` in the KMS home,
0600, WAL so that `kms access-key` can write while a server reads). Each row is sealed
under the root key (AES-256-GCM, the access key id as associated data), so whoever can
write the file cannot read a secret, forge a key, or move a policy from one key to
another. A sealed *head* covers the whole set — a generation number and the digest of
every row — so rows cannot be rolled back one at a time, deleted, duplicated or mixed
from two copies of the file either: a set that does not match its head is refused
whole (every request then fails authentication, and `kms access-key list` says why).
Every change is also recorded in the key store's hash-chained, anchored audit log with
the head's new generation (`AccessKeyChange  ok: disable KHAK… (app1), generation 12`,
kmsserve.cli); a set whose head is older than the newest generation the audit log has
seen (read once per process, then every generation this process saw) was put back from
an older copy of the file, and is refused whole too. What a writer can still do
is roll back the key store (and its anchor) together with this file
(docs/SECURITY.md, "kms serve"). After a deliberate restore from a backup,
`kms access-key reanchor` accepts the file as it is.

A running server sees every change at its next request: it keeps the opened set in
memory and re-reads it when SQLite's `data_version` says another connection committed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from kmscore.errors import InvalidRequest, NotFound, StoreError
from kmsserve.auth.policy import Policy

FILE_NAME = "access-keys.db"
ID_PREFIX = "KHAK"
_AAD = b"keyhold/access-key/"
_HEAD_AAD = b"keyhold/access-keys-head"
NAME_MAX = 64
AUDIT_OPERATION = "AccessKeyChange"
"""The audit operation of every change (kmsserve.cli): its outcome ends in `generation N`."""
_GENERATION = re.compile(r", generation (\d+)$")

log = logging.getLogger("kmsserve")


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    name: str
    secret: str
    enabled: bool
    policy: Policy
    created_at: float
    rotated_at: float | None = None

    def __repr__(self) -> str:  # never the secret
        return f"<AccessKey {self.access_key_id} ({self.name}){'' if self.enabled else ' disabled'}>"

    def public(self) -> dict:
        """What `list`/`show` print: everything but the secret."""
        return {"access_key_id": self.access_key_id, "name": self.name, "enabled": self.enabled,
                "created_at": self.created_at, "rotated_at": self.rotated_at,
                "policy": json.loads(self.policy.to_json())}


def new_id() -> str:
    return ID_PREFIX + base64.b32encode(secrets.token_bytes(10)).decode()


def new_secret() -> str:
    return secrets.token_urlsafe(30)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > NAME_MAX or not all(
            c.isalnum() or c in "-_.@" for c in name):
        raise InvalidRequest(f"an access key name is 1-{NAME_MAX} letters, digits and - _ . @, not {name!r}")
    if name.startswith(ID_PREFIX):
        raise InvalidRequest(f"an access key name must not start with {ID_PREFIX} (that is how ids look)")
    return name


def _digest(sealed: bytes) -> str:
    return hashlib.sha256(sealed).hexdigest()


class AccessKeys:
    """The access keys of one KMS home. Thread-safe; several processes may share the file."""

    def __init__(self, kms) -> None:
        self._kms = kms
        self._root = getattr(kms, "_root", None)  # the embedded Kms's root key seals the rows
        if self._root is None or getattr(kms, "home", None) is None:  # e.g. kmscore.remote's Kms
            raise StoreError("access keys live beside the key store: manage them (and run kms serve) on the KMS host")
        self.path = Path(kms.home) / FILE_NAME
        self._lock = threading.Lock()
        if not self.path.exists():  # created 0600 from the start, never world-readable
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self.path.chmod(0o600)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS access_keys(id TEXT PRIMARY KEY, sealed BLOB NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS head(one INTEGER PRIMARY KEY CHECK (one = 1), sealed BLOB NOT NULL)")
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StoreError(f"{self.path} is not an access-key store: {e}") from None
        self._version: int | None = None
        self._keys: dict[str, AccessKey] = {}
        self._problem: str | None = None
        self._reported: str | None = None
        self.generation = 0
        """The head's generation after this object's last write (for the audit record)."""
        self._floor: int | None = None  # the newest generation seen (audit log, then this process)

    def close(self) -> None:
        self._db.close()

    # -- sealing ----------------------------------------------------------------------
    def _seal(self, key: AccessKey) -> bytes:
        record = {"name": key.name, "secret": key.secret, "enabled": key.enabled,
                  "policy": json.loads(key.policy.to_json()), "created_at": key.created_at,
                  "rotated_at": key.rotated_at}
        return self._root.seal(json.dumps(record).encode(), _AAD + key.access_key_id.encode())

    def _open(self, access_key_id: str, sealed: bytes) -> AccessKey:
        try:
            record = json.loads(self._root.unseal(sealed, _AAD + access_key_id.encode()))
            return AccessKey(access_key_id, record["name"], record["secret"], record["enabled"],
                             Policy.model_validate(record["policy"]), record["created_at"], record.get("rotated_at"))
        except Exception:
            raise StoreError(f"access key {access_key_id}: its row fails authentication (changed outside keyhold)") from None

    def _head(self, rows: dict[str, bytes]) -> tuple[int, str | None]:
        """(generation, problem): the head's generation if it covers exactly these rows."""
        found = self._db.execute("SELECT sealed FROM head WHERE one = 1").fetchone()
        if found is None:
            return 0, (None if not rows else f"{self.path}: access keys without a head (changed outside keyhold)")
        try:
            head = json.loads(self._root.unseal(found[0], _HEAD_AAD))
        except Exception:
            return 0, f"{self.path}: the head fails authentication (changed outside keyhold, or another root key)"
        if head["rows"] != {i: _digest(s) for i, s in rows.items()}:
            return head["generation"], (f"{self.path}: the access keys do not match their head "
                                        "(a row was changed, rolled back or deleted outside keyhold)")
        return head["generation"], None

    def audited_generation(self) -> int:
        """The newest head generation the audit log has seen (0 if none): one read of the
        log, from its end back to the newest access-key change."""
        best = 0
        for record in self._kms.audit_records(3, operation=AUDIT_OPERATION):
            m = _GENERATION.search(record["outcome"])
            if m:
                best = max(best, int(m[1]))
        return best

    def _rolled_back(self, generation: int, *, ask_the_log: bool = False) -> str | None:
        """Why a head of this generation is older than one already seen (None if it is not).
        The audit log is read on the first call (and when asked: before a write); after
        that the newest generation this process saw is the floor."""
        try:
            if ask_the_log or self._floor is None:
                self._floor = max(self._floor or 0, self.audited_generation())
        except Exception as e:  # noqa: BLE001 - the audit log cannot be read: fail closed (floor stays unknown)
            return f"{self.path}: cannot compare with the audit log: {e}"
        if self._floor > generation:
            return (f"{self.path} is older than the audit log says (generation {generation}, the audit log has "
                    f"seen {self._floor}): it was put back from an older copy. If that restore was deliberate, "
                    "`kms access-key reanchor` accepts it")
        self._floor = generation
        return None

    # -- reading -------------------------------------------------------------------------
    @contextmanager
    def _read(self) -> Iterator[dict[str, bytes]]:
        self._db.execute("BEGIN")
        try:
            yield {i: s for i, s in self._db.execute("SELECT id, sealed FROM access_keys")}
        finally:
            self._db.execute("COMMIT")

    def _snapshot(self) -> dict[str, AccessKey]:
        """Every access key, opened; re-read only when another connection committed.
        StoreError when the set fails its head (then no key is usable). Under self._lock."""
        try:
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if version != self._version:
                with self._read() as rows:
                    generation, problem = self._head(rows)
                if problem is None:
                    problem = self._rolled_back(generation)
                    if problem is not None and self._floor is None:  # the log could not be read:
                        version = None  # not a verdict on the file; ask again at the next request
                keys: dict[str, AccessKey] = {}
                if problem is None:
                    try:
                        keys = {i: self._open(i, s) for i, s in rows.items()}
                    except StoreError as e:
                        problem = str(e)
                self._version, self._keys, self._problem = version, keys, problem
        except sqlite3.Error as e:
            self._version, self._keys, self._problem = None, {}, f"{self.path}: cannot be read: {e}"
        if self._problem is not None:
            raise StoreError(self._problem)
        return self._keys

    def get(self, access_key_id: str) -> AccessKey | None:
        """The access key, None if there is none (or the set fails authentication: logged
        once, and then no key is usable until the file is fixed)."""
        with self._lock:
            try:
                keys = self._snapshot()
            except StoreError as e:
                if self._reported != str(e):
                    self._reported = str(e)
                    log.error("kms serve: every access key refused: %s", e)
                return None
            self._reported = None
            return keys.get(access_key_id)

    def all(self) -> list[AccessKey]:
        """Every access key, oldest first; StoreError if the set fails authentication."""
        with self._lock:
            return sorted(self._snapshot().values(), key=lambda k: k.created_at)

    def require(self, name_or_id: str) -> AccessKey:
        """An access key by id or name; NotFound if none."""
        with self._lock:
            keys = self._snapshot()
        key = keys.get(name_or_id)
        if key is not None:
            return key
        named = [k for k in keys.values() if k.name == name_or_id]
        if not named:
            raise NotFound(f"no access key {name_or_id!r}")
        if len(named) > 1:
            raise InvalidRequest(f"{len(named)} access keys are named {name_or_id!r}: name one by its id "
                                 f"({', '.join(k.access_key_id for k in named)})")
        return named[0]

    # -- writing -------------------------------------------------------------------------
    @contextmanager
    def _write(self, *, reanchor: bool = False) -> Iterator[dict[str, bytes]]:
        """A write transaction over a verified set: the caller changes `rows` in place; the
        rows and a new head (generation + 1) are committed together. `reanchor`: accept
        rows that are authentic but older than the audit log (a deliberate restore)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = {i: s for i, s in self._db.execute("SELECT id, sealed FROM access_keys")}
                generation, problem = self._head(rows)
                if problem is None and not reanchor:
                    problem = self._rolled_back(generation, ask_the_log=True)
                elif problem is None:
                    generation = max(generation, self.audited_generation())
                if problem is not None:
                    raise StoreError(problem)
                before = dict(rows)
                yield rows
                for gone in before.keys() - rows.keys():
                    self._db.execute("DELETE FROM access_keys WHERE id = ?", (gone,))
                for i, s in rows.items():
                    if before.get(i) != s:
                        self._db.execute("INSERT OR REPLACE INTO access_keys(id, sealed) VALUES(?, ?)", (i, s))
                head = {"generation": generation + 1, "rows": {i: _digest(s) for i, s in rows.items()}}
                self._db.execute("INSERT OR REPLACE INTO head(one, sealed) VALUES(1, ?)",
                                 (self._root.seal(json.dumps(head).encode(), _HEAD_AAD),))
                self._db.execute("COMMIT")
                self.generation = self._floor = generation + 1
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._version = None  # our own commits do not move data_version

    def _change(self, name_or_id: str, **changes) -> AccessKey:
        current = self.require(name_or_id)
        with self._write() as rows:
            if current.access_key_id not in rows:
                raise NotFound(f"no access key {name_or_id!r}")
            fresh = self._open(current.access_key_id, rows[current.access_key_id])
            key = replace(fresh, **changes)
            rows[key.access_key_id] = self._seal(key)
        return key

    def create(self, name: str, policy: Policy) -> AccessKey:
        check_name(name)
        key = AccessKey(new_id(), name, new_secret(), True, policy, time.time())
        with self._write() as rows:
            rows[key.access_key_id] = self._seal(key)
        return key

    def set_enabled(self, name_or_id: str, enabled: bool) -> AccessKey:
        return self._change(name_or_id, enabled=enabled)

    def set_policy(self, name_or_id: str, policy: Policy) -> AccessKey:
        return self._change(name_or_id, policy=policy)

    def rotate(self, name_or_id: str) -> AccessKey:
        """A new secret; the old one stops working at the server's next request."""
        return self._change(name_or_id, secret=new_secret(), rotated_at=time.time())

    def reanchor(self) -> int:
        """Accept the file as it is (after a deliberate restore from a backup): its rows must
        still be authentic; the head moves past the newest generation the audit log has
        seen. Returns the number of access keys."""
        with self._write(reanchor=True) as rows:
            for i, sealed in rows.items():
                self._open(i, sealed)
            count = len(rows)
        return count

    def delete(self, name_or_id: str) -> AccessKey:
        key = self.require(name_or_id)
        with self._write() as rows:
            if rows.pop(key.access_key_id, None) is None:
                raise NotFound(f"no access key {name_or_id!r}")
        return key
