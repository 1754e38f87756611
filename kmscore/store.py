"""The SQLite key store: one file, WAL mode, safe for several processes on one host.

Only rows live here; what they mean is decided by the facade and `kmscore.rules`.
Key material is stored sealed under the root key (see `kmscore.rootkey`).
Every write runs in `BEGIN IMMEDIATE`, so concurrent writers queue instead of
losing updates, and bumps a generation counter that tells other processes to drop
their cached keys.

Integrity (see `kmscore.integrity`): once a `RowSealer` is attached (the keyring does so
after the root key opened the store), every key row read is verified and every key row
written is re-MAC'd, in the same transaction, after the old row was verified: no write
path can launder a row changed outside keyhold. Commits are fsynced (synchronous=FULL):
a rotation whose ciphertexts were handed out must survive a power loss.

A file that exists but is not a key store (0 bytes, not SQLite, a corrupted page) is
refused, never replaced; every sqlite3 error leaves here as `StoreError`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from kmscore.errors import StoreError
from kmscore.storefile import create_file, refuse_non_store

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: before row MACs; upgraded by kmscore.integrity on first open
DB_NAME = "keys.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    alias TEXT UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    spec TEXT NOT NULL,
    usage TEXT NOT NULL,
    origin TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    deletion_date REAL,
    rotation_interval_days INTEGER,
    last_rotated_at REAL,
    material_expires_at REAL,
    material_fingerprint TEXT,
    current_version INTEGER NOT NULL DEFAULT 0,
    resume_state TEXT,
    deletion_due_seen REAL,
    nonce_uses TEXT NOT NULL DEFAULT '{}',
    row_mac BLOB
);
CREATE TABLE IF NOT EXISTS key_versions (
    key_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (key_id, version)
);
CREATE TABLE IF NOT EXISTS import_tokens (
    token TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    sealed_private BLOB NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    operation TEXT NOT NULL,
    key_id TEXT,
    caller TEXT NOT NULL,
    outcome TEXT NOT NULL,
    count INTEGER NOT NULL,
    last_time REAL NOT NULL,
    mac BLOB NOT NULL
);
"""

KEY_TABLES = ("meta", "keys", "key_versions", "import_tokens")
KEY_COLUMNS = (
    "key_id alias description spec usage origin state created_at deletion_date "
    "rotation_interval_days last_rotated_at material_expires_at material_fingerprint current_version "
    "resume_state deletion_due_seen nonce_uses row_mac"
).split()
SCHEMA_2_COLUMNS = (
    "resume_state TEXT",
    "deletion_due_seen REAL",
    "nonce_uses TEXT NOT NULL DEFAULT '{}'",
    "row_mac BLOB",
)
"""Columns schema 2 added to `keys`."""


class RowSealer(Protocol):
    """What the store needs from kmscore.integrity to verify and MAC key rows."""

    def verify(self, row: dict[str, Any], versions: list[int]) -> None: ...

    def mac(self, row: dict[str, Any], versions: list[int]) -> bytes: ...


_OPEN_FILES: dict[tuple[int, int], int] = {}
"""(st_dev, st_ino) -> connections this process has open to that store file. Closing
*any* descriptor of a file drops every POSIX lock the process holds on it, SQLite's
included: reading the magic of a store this process already has open would drop the
open connection's WAL lock, and another process closing its last connection would then
checkpoint and delete the WAL under it (a corrupted store, lost commits). A store that
is open here was checked when it was first opened."""
_OPEN_LOCK = threading.Lock()


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Store:
    """A connection to the key store, shareable between threads (calls are serialised)."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self.created = not path.exists()
        self.sealer: RowSealer | None = None
        self.before_commit: Callable[[], None] | None = None  # a write changed key rows
        self.after_commit: Callable[[bool], None] | None = None  # arg: a key change others must see
        self.after_begin: Callable[[], None] | None = None  # every write: rows still match the head
        self._keys_changed = self._bumped = False
        self._lock = threading.RLock()
        if self.created and not create:
            raise StoreError(f"key store {path} does not exist")
        try:
            if self.created:
                self.created = create_file(path, SCHEMA, SCHEMA_VERSION)
            with _OPEN_LOCK:
                fid = _file_id(path)
                if fid not in _OPEN_FILES:
                    refuse_non_store(path)  # see _OPEN_FILES: never while a connection of ours is open
                self._db = sqlite3.connect(
                    path, timeout=60, isolation_level=None, check_same_thread=False
                )
                if fid is not None:
                    _OPEN_FILES[fid] = _OPEN_FILES.get(fid, 0) + 1
                self._file = fid
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=60000")
            if not self.created:
                self.quick_check(KEY_TABLES)
            with self.write():
                version = self.get_meta("schema_version") if self._has_table("meta") else None
                if version is None:
                    raise StoreError(f"key store {path} has no schema version: it is not a key store, or was altered")
                try:
                    self.schema_version = int(version)
                except ValueError:
                    self.schema_version = -1
                if self.schema_version not in READABLE_VERSIONS:
                    raise StoreError(
                        f"key store {path} has schema version {version.decode(errors='replace')}; "
                        f"this keyhold reads versions {', '.join(map(str, READABLE_VERSIONS))}"
                    )
        except sqlite3.DatabaseError as e:
            with contextlib.suppress(Exception):
                self._db.close()
            self._release()
            raise StoreError(f"cannot open key store {path}: {e}") from None
        except StoreError:
            with contextlib.suppress(Exception):
                self._db.close()
            self._release()
            raise

    def quick_check(self, tables: tuple[str, ...] = ()) -> None:
        """StoreError if SQLite finds the file damaged: the small key tables on every open
        (quick_check); everything, indexes included, for `kms store verify` (integrity_check).
        The audit log, which can be large, is otherwise read where it is used."""
        try:
            for table in tables or (None,):
                if table is not None and not self._has_table(table):
                    continue
                pragma = f"quick_check({table})" if table else "integrity_check(5)"  # full: indexes too
                found = self._db.execute(f"PRAGMA {pragma}").fetchall()
                if found != [("ok",)]:
                    what = " ".join(str(r[0]) for r in found).replace("\n", " ").replace("*** in database main *** ", "")
                    raise StoreError(
                        f"key store {self.path} is corrupt ({what[:200]}); it was left as it is. "
                        "Restore it from a backup"
                    )
        except sqlite3.DatabaseError as e:
            raise StoreError(f"key store {self.path} is corrupt ({e}); it was left as it is. Restore it from a backup") from None

    @property
    def keys_changed(self) -> bool:
        """Whether the current write transaction changed key rows (so far)."""
        return self._keys_changed

    def _has_table(self, name: str) -> bool:
        return self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None

    def upgrade_schema(self) -> None:
        """Schema 1 -> 2 (inside the caller's write transaction, before rows are MAC'd)."""
        for column in SCHEMA_2_COLUMNS:
            self._db.execute(f"ALTER TABLE keys ADD COLUMN {column}")
        self.set_meta("schema_version", str(SCHEMA_VERSION).encode())
        self.schema_version = SCHEMA_VERSION

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._release()

    def _release(self) -> None:
        with _OPEN_LOCK:
            fid, self._file = getattr(self, "_file", None), None
            if fid is not None and fid in _OPEN_FILES:
                _OPEN_FILES[fid] -= 1
                if not _OPEN_FILES[fid]:
                    del _OPEN_FILES[fid]

    # -- transactions ------------------------------------------------------------
    @contextlib.contextmanager
    def write(self, *, synced: bool = True, wait: bool = True) -> Iterator[None]:
        """A write transaction (BEGIN IMMEDIATE); nested calls join the outer one.

        Before COMMIT, if key rows changed, `before_commit` re-seals the log head; after
        it, `after_commit` moves the anchor. sqlite3 errors become StoreError.
        synced=False: this commit is not fsynced itself but by the next synced one (the
        audit flush within its interval): for nonce reservations, where a loss only
        under-counts by one block, far below the margin kmscore.nonces keeps.
        wait=False: StoreError at once if another connection holds the write lock (a
        hot-path caller that has another place to put its count: the audit journal)."""
        with self._lock:
            if self._db.in_transaction:
                yield
                return
            try:
                if not synced:
                    self._db.execute("PRAGMA synchronous=NORMAL")
                if not wait:
                    self._db.execute("PRAGMA busy_timeout=0")
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                finally:
                    if not wait:
                        self._db.execute("PRAGMA busy_timeout=60000")
            except sqlite3.DatabaseError as e:
                if not synced:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("PRAGMA synchronous=FULL")
                if isinstance(e, sqlite3.OperationalError):
                    raise StoreError(f"key store {self.path} is busy or locked: {e}") from None
                raise self._error(e) from None
            self._keys_changed = self._bumped = False
            try:
                if self.after_begin is not None:
                    self.after_begin()
                yield
                if self._keys_changed and self.before_commit is not None:
                    self.before_commit()
                self._db.execute("COMMIT")
            except BaseException as e:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                if isinstance(e, sqlite3.DatabaseError):
                    raise self._error(e) from None
                raise
            finally:
                if not synced:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("PRAGMA synchronous=FULL")
            bumped, self._keys_changed = self._bumped, False
        if self.after_commit is not None:
            self.after_commit(bumped)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: several reads see one consistent state of the store."""
        with self._lock:
            if self._db.in_transaction:
                yield
                return
            try:
                self._db.execute("BEGIN")
                try:
                    yield
                finally:
                    self._db.execute("COMMIT")
            except sqlite3.DatabaseError as e:
                raise self._error(e) from None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        with self._lock:
            try:
                yield
            except sqlite3.DatabaseError as e:
                raise self._error(e) from None

    def _error(self, e: sqlite3.DatabaseError) -> StoreError:
        return StoreError(f"key store {self.path} cannot be used: {e}")

    def bump_generation(self) -> None:
        """Tell every process sharing the store that key rows changed."""
        self._bumped = True
        self._db.execute(
            "INSERT INTO meta(name, value) VALUES('generation', 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1"
        )

    def generation(self) -> int:
        with self._reading():
            row = self._db.execute("SELECT value FROM meta WHERE name='generation'").fetchone()
        return int(row[0]) if row else 0

    # -- meta --------------------------------------------------------------------
    def get_meta(self, name: str) -> bytes | None:
        with self._reading():
            row = self._db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def set_meta(self, name: str, value: bytes) -> None:
        with self._reading():
            self._db.execute(
                "INSERT INTO meta(name, value) VALUES(?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                (name, value),
            )

    # -- keys --------------------------------------------------------------------
    def _versions_of(self, key_id: str) -> list[int]:
        return [v for (v,) in self._db.execute("SELECT version FROM key_versions WHERE key_id = ?", (key_id,))]

    def _key_row(self, where: str, arg: Any, verify: bool = True) -> dict[str, Any] | None:
        # One read transaction: a rotation committed by another process between reading
        # the row and its versions would otherwise make an honest row fail its MAC.
        with self.snapshot():
            row = self._db.execute(
                f"SELECT {', '.join(KEY_COLUMNS)} FROM keys WHERE {where}", (arg,)
            ).fetchone()
            if row is None:
                return None
            row = dict(zip(KEY_COLUMNS, row))
            if verify and self.sealer is not None:
                self.sealer.verify(row, self._versions_of(row["key_id"]))
        return row

    def key_by_id(self, key_id: str, *, verify: bool = True) -> dict[str, Any] | None:
        """The key's row; StoreError if it fails authentication (unless verify=False)."""
        return self._key_row("key_id = ?", key_id, verify)

    def key_by_alias(self, alias: str, *, verify: bool = True) -> dict[str, Any] | None:
        return self._key_row("alias = ?", alias, verify)

    def all_keys(self, *, verify: bool = True) -> list[dict[str, Any]]:
        """Every key row. verify=True: StoreError naming every row that fails authentication;
        verify=False: rows as stored, each with `versions` (list) for the caller to check."""
        with self.snapshot():  # rows and versions from one state of the store
            rows = [dict(zip(KEY_COLUMNS, r)) for r in self._db.execute(
                f"SELECT {', '.join(KEY_COLUMNS)} FROM keys ORDER BY created_at, key_id"
            ).fetchall()]
            versions: dict[str, list[int]] = {}
            for key_id, version in self._db.execute("SELECT key_id, version FROM key_versions"):
                versions.setdefault(key_id, []).append(version)
        if not verify:
            for row in rows:
                row["versions"] = versions.get(row["key_id"], [])
            return rows
        if self.sealer is not None:
            bad = []
            for row in rows:
                try:
                    self.sealer.verify(row, versions.get(row["key_id"], []))
                except StoreError:
                    bad.append(row["key_id"])
            if bad:
                raise StoreError(
                    f"{len(bad)} key row(s) in the key store fail authentication (changed outside "
                    f"keyhold): {', '.join(bad)}. Run `kms store verify`"
                )
        return rows

    def row_macs(self) -> list[tuple[str, bytes | None]]:
        """(key id, row MAC) of every key: what the state digest covers."""
        with self._reading():
            return self._db.execute("SELECT key_id, row_mac FROM keys").fetchall()

    def _checked(self, key_id: str) -> None:
        """Before changing a key: its row as stored must verify (else we would re-MAC a forgery)."""
        if self.sealer is not None and self.key_by_id(key_id) is None:
            raise StoreError(f"key {key_id} is not in the key store")

    def _reseal(self, key_id: str) -> None:
        """After changing a key: MAC the row again, mark the transaction as a key change."""
        self._keys_changed = True
        if self.sealer is None:
            return
        row = self._key_row("key_id = ?", key_id, verify=False)
        if row is not None:
            self._db.execute(
                "UPDATE keys SET row_mac = ? WHERE key_id = ?",
                (self.sealer.mac(row, self._versions_of(key_id)), key_id),
            )

    def reseal_all(self) -> None:
        """MAC every row as it is (the schema-1 upgrade; an operator accepting the store)."""
        for (key_id,) in self._db.execute("SELECT key_id FROM keys").fetchall():
            self._reseal(key_id)

    def insert_key(self, row: dict[str, Any]) -> None:
        cols = list(row)
        try:
            self._db.execute(
                f"INSERT INTO keys({', '.join(cols)}) VALUES({', '.join('?' * len(cols))})",
                [row[c] for c in cols],
            )
        except sqlite3.IntegrityError:
            from kmscore.errors import AlreadyExists

            raise AlreadyExists(f"alias {row.get('alias')!r} is already in use") from None
        self._reseal(row["key_id"])
        self.bump_generation()

    def update_key(self, key_id: str, *, bump: bool = True, **fields: Any) -> None:
        """Change columns of a verified row. bump=False: a change other processes need not
        reload for (nonce counts), so their caches stay warm."""
        self._checked(key_id)
        sets = ", ".join(f"{c} = ?" for c in fields)
        try:
            self._db.execute(f"UPDATE keys SET {sets} WHERE key_id = ?", [*fields.values(), key_id])
        except sqlite3.IntegrityError:
            from kmscore.errors import AlreadyExists

            raise AlreadyExists(f"alias {fields.get('alias')!r} is already in use") from None
        self._reseal(key_id)
        if bump:
            self.bump_generation()

    def delete_key(self, key_id: str) -> None:
        for table in ("keys", "key_versions", "import_tokens"):
            self._db.execute(f"DELETE FROM {table} WHERE key_id = ?", (key_id,))
        self._keys_changed = True
        self.bump_generation()

    # -- versions ----------------------------------------------------------------
    def add_version(self, key_id: str, version: int, sealed: bytes, now: float) -> None:
        self._checked(key_id)
        self._db.execute(
            "INSERT INTO key_versions(key_id, version, sealed, created_at) VALUES(?, ?, ?, ?)",
            (key_id, version, sealed, now),
        )
        self._reseal(key_id)
        self.bump_generation()

    def versions(self, key_id: str) -> dict[int, bytes]:
        with self._reading():
            rows = self._db.execute(
                "SELECT version, sealed FROM key_versions WHERE key_id = ?", (key_id,)
            ).fetchall()
        return dict(rows)

    def delete_versions(self, key_id: str) -> None:
        self._checked(key_id)
        self._db.execute("DELETE FROM key_versions WHERE key_id = ?", (key_id,))
        self._reseal(key_id)
        self.bump_generation()

    # -- import tokens -----------------------------------------------------------
    def add_token(self, token: str, key_id: str, algorithm: str, sealed: bytes, expires_at: float) -> None:
        with self.write():
            self._db.execute(
                "INSERT INTO import_tokens(token, key_id, algorithm, sealed_private, expires_at) "
                "VALUES(?, ?, ?, ?, ?)",
                (token, key_id, algorithm, sealed, expires_at),
            )

    def token(self, token: str) -> tuple[str, str, bytes, float] | None:
        with self._reading():
            return self._db.execute(
                "SELECT key_id, algorithm, sealed_private, expires_at FROM import_tokens WHERE token = ?",
                (token,),
            ).fetchone()

    def delete_tokens(self, *, token: str | None = None, expired_before: float | None = None) -> None:
        if token is not None:
            self._db.execute("DELETE FROM import_tokens WHERE token = ?", (token,))
        if expired_before is not None:
            self._db.execute("DELETE FROM import_tokens WHERE expires_at <= ?", (expired_before,))

    # -- audit -------------------------------------------------------------------
    def audit_append(self, rows: list[tuple]) -> None:
        self._db.executemany(
            "INSERT INTO audit(seq, time, operation, key_id, caller, outcome, count, last_time, mac) "
            "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def audit_rows(self, after: int = 0) -> Iterator[tuple]:
        with self._reading():
            rows = self._db.execute(
                "SELECT seq, time, operation, key_id, caller, outcome, count, last_time, mac FROM audit "
                "WHERE seq > ? ORDER BY seq",
                (after,),
            ).fetchall()
        return iter(rows)

    def audit_query(self, limit: int | None, filters: dict[str, object], since: float | None) -> list[tuple]:
        """The newest `limit` records matching every filter (column = value), oldest first.

        Reads only what it returns (ORDER BY seq DESC LIMIT), not the whole log."""
        where, params = [], []
        for column, value in filters.items():
            assert column in ("key_id", "operation", "outcome", "caller")  # never user text in the SQL
            where.append(f"{column} = ?")
            params.append(value)
        if since is not None:
            where.append("last_time >= ?")
            params.append(since)
        sql = "SELECT seq, time, operation, key_id, caller, outcome, count, last_time, mac FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._reading():
            rows = self._db.execute(sql, params).fetchall()
        return rows[::-1]

    def audit_last(self) -> tuple[int, bytes] | None:
        with self._reading():
            return self._db.execute(
                "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1"
            ).fetchone()

    def audit_mac_at(self, seq: int) -> bytes | None:
        """The chain MAC of record `seq`, None if the log holds no such record."""
        with self._reading():
            row = self._db.execute("SELECT mac FROM audit WHERE seq = ?", (seq,)).fetchone()
        return row[0] if row else None
