"""The key store's file: made complete or not at all, and refused unless it is SQLite.

Why: `sqlite3.connect` creates a 0-byte file, and a 0-byte file opens as an empty
database; so a process that found a half-made store, or a store truncated to 0 bytes,
would silently start over with no keys (and an audit log that verifies). Here a new
store is built in a temp file and linked into place whole, and an existing file must
start with SQLite's magic; anything else is refused and left as it is.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path

from kmscore.durable import sync_folder
from kmscore.errors import StoreError

SQLITE_MAGIC = b"SQLite format 3\x00"


def refuse_non_store(path: Path) -> None:
    """A store file that exists must look like SQLite; never replace it with a new one."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(SQLITE_MAGIC))
    except OSError as e:
        raise StoreError(f"cannot read key store {path}: {e.strerror}") from None
    if not magic:
        raise StoreError(
            f"key store {path} is empty (0 bytes): it is not a key store and was left as it is. "
            "Restore it from a backup; remove it only if you mean to start over without any key"
        )
    if magic != SQLITE_MAGIC:
        raise StoreError(f"{path} is not a key store (not an SQLite database); it was left as it is")


def create_file(path: Path, schema: str, version: int) -> bool:
    """Make a new store complete in a temp file, then link it into place, so no process
    ever sees a half-made (0-byte) store. False if another process made it first."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{threading.get_ident()}")
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            os.chmod(tmp, 0o600)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN")
            for stmt in schema.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.execute("INSERT INTO meta(name, value) VALUES('schema_version', ?)", (str(version).encode(),))
            db.execute("COMMIT")
        finally:
            db.close()
        os.link(tmp, path)
        created = True
    except FileExistsError:
        created = False
    except OSError as e:
        raise StoreError(f"cannot create key store {path}: {e.strerror}") from None
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            with contextlib.suppress(OSError):
                leftover.unlink()
    with contextlib.suppress(OSError):
        sync_folder(path.parent)
    return created
