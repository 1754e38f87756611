"""The SQLite key store: one file, WAL mode, safe for several processes on one host.

Only rows live here; what they mean is decided by the facade and `kmscore.rules`.
Key material is stored sealed under the root key (see `kmscore.rootkey`).
Every write runs in `BEGIN IMMEDIATE`, so concurrent writers queue instead of
losing updates, and bumps a generation counter that tells other processes to drop
their cached keys.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kmscore.errors import StoreError

SCHEMA_VERSION = 1
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
    current_version INTEGER NOT NULL DEFAULT 0
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

KEY_COLUMNS = (
    "key_id alias description spec usage origin state created_at deletion_date "
    "rotation_interval_days last_rotated_at material_expires_at material_fingerprint current_version"
).split()


class Store:
    """A connection to the key store, shareable between threads (calls are serialised)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created = not path.exists()
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(
                path, timeout=60, isolation_level=None, check_same_thread=False
            )
            if self.created:
                os.chmod(path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=60000")
            self._lock = threading.RLock()
            with self.write():
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                version = self.get_meta("schema_version")
                if version is None:
                    self.set_meta("schema_version", str(SCHEMA_VERSION).encode())
                elif int(version) != SCHEMA_VERSION:
                    raise StoreError(
                        f"key store {path} has schema version {int(version)}; this keyhold reads "
                        f"version {SCHEMA_VERSION}"
                    )
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open key store {path}: {e}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- transactions ------------------------------------------------------------
    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """A write transaction (BEGIN IMMEDIATE); nested calls join the outer one."""
        with self._lock:
            if self._db.in_transaction:
                yield
                return
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise StoreError(f"key store {self.path} is busy or locked: {e}") from None
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def bump_generation(self) -> None:
        """Tell every process sharing the store that key rows changed."""
        self._db.execute(
            "INSERT INTO meta(name, value) VALUES('generation', 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1"
        )

    def generation(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name='generation'").fetchone()
        return int(row[0]) if row else 0

    # -- meta --------------------------------------------------------------------
    def get_meta(self, name: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def set_meta(self, name: str, value: bytes) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO meta(name, value) VALUES(?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                (name, value),
            )

    # -- keys --------------------------------------------------------------------
    def _key_row(self, where: str, arg: Any) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {', '.join(KEY_COLUMNS)} FROM keys WHERE {where}", (arg,)
            ).fetchone()
        return dict(zip(KEY_COLUMNS, row)) if row else None

    def key_by_id(self, key_id: str) -> dict[str, Any] | None:
        return self._key_row("key_id = ?", key_id)

    def key_by_alias(self, alias: str) -> dict[str, Any] | None:
        return self._key_row("alias = ?", alias)

    def all_keys(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(KEY_COLUMNS)} FROM keys ORDER BY created_at, key_id"
            ).fetchall()
        return [dict(zip(KEY_COLUMNS, r)) for r in rows]

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
        self.bump_generation()

    def update_key(self, key_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{c} = ?" for c in fields)
        try:
            self._db.execute(f"UPDATE keys SET {sets} WHERE key_id = ?", [*fields.values(), key_id])
        except sqlite3.IntegrityError:
            from kmscore.errors import AlreadyExists

            raise AlreadyExists(f"alias {fields.get('alias')!r} is already in use") from None
        self.bump_generation()

    def delete_key(self, key_id: str) -> None:
        for table in ("keys", "key_versions", "import_tokens"):
            self._db.execute(f"DELETE FROM {table} WHERE key_id = ?", (key_id,))
        self.bump_generation()

    # -- versions ----------------------------------------------------------------
    def add_version(self, key_id: str, version: int, sealed: bytes, now: float) -> None:
        self._db.execute(
            "INSERT INTO key_versions(key_id, version, sealed, created_at) VALUES(?, ?, ?, ?)",
            (key_id, version, sealed, now),
        )
        self.bump_generation()

    def versions(self, key_id: str) -> dict[int, bytes]:
        with self._lock:
            rows = self._db.execute(
                "SELECT version, sealed FROM key_versions WHERE key_id = ?", (key_id,)
            ).fetchall()
        return dict(rows)

    def delete_versions(self, key_id: str) -> None:
        self._db.execute("DELETE FROM key_versions WHERE key_id = ?", (key_id,))
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
        with self._lock:
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
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, time, operation, key_id, caller, outcome, count, last_time, mac FROM audit "
                "WHERE seq > ? ORDER BY seq",
                (after,),
            ).fetchall()
        return iter(rows)

    def audit_last(self) -> tuple[int, bytes] | None:
        with self._lock:
            return self._db.execute(
                "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1"
            ).fetchone()
