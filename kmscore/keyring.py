"""The facade's foundation: opening a home, resolving key names, caching loaded keys.

Loaded keys are cached in memory and dropped when the store's generation counter
moves (checked at most every `refresh_interval` seconds), so a key disabled by
another process stops working here within that bound.

Integrity: the store is opened, the root key checked, then a `StoreGuard` attached
(kmscore.storeguard): key rows are verified on every read, and the store's head, rows
and anchor are checked on open and on every refresh. `integrity="strict"` (the
default) refuses a store that fails (StoreError); `"report"` opens it anyway for
`kms store verify` / `kms store reanchor`, and then does no maintenance at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmscore import rules
from kmscore import nonceledger, nonces
from kmscore.anchor import ANCHOR_NAME
from kmscore.audit import AuditLog
from kmscore.errors import InvalidRequest, KmsError, NotFound, StoreError, as_kms_error
from kmscore.home import resolve_home
from kmscore.integrity import row_ok
from kmscore.material import LoadedKey
from kmscore.metadata import KeyMetadata
from kmscore.rootkey import RootKey, RootKeySource, create_key_file, default_source, load
from kmscore.specs import DEFAULT_SERVICES, KeySpec, KeyState, KeyUsage, Origin
from kmscore.store import DB_NAME, Store
from kmscore.storeguard import StoreGuard

DAY = 86400.0
MAINTENANCE_INTERVAL = 60.0
_ROOT_CHECK_AAD = b"keyhold/root-check"


@dataclass(eq=False)
class CachedKey:
    facts: rules.KeyFacts
    row: dict[str, Any]
    versions: dict[int, LoadedKey] = field(repr=False)

    @property
    def current(self) -> LoadedKey:
        return self.versions[self.row["current_version"]]


def facts_of(row: dict[str, Any]) -> rules.KeyFacts:
    return rules.KeyFacts(
        key_id=row["key_id"],
        alias=row["alias"],
        spec=KeySpec(row["spec"]),
        usage=KeyUsage(row["usage"]),
        origin=Origin(row["origin"]),
        state=KeyState(row["state"]),
        material_expires_at=row["material_expires_at"],
    )


def metadata_of(row: dict[str, Any]) -> KeyMetadata:
    interval = row["rotation_interval_days"]
    anchor = row["last_rotated_at"] or row["created_at"]
    return KeyMetadata(
        key_id=row["key_id"],
        alias=row["alias"],
        description=row["description"],
        state=KeyState(row["state"]),
        spec=KeySpec(row["spec"]),
        usage=KeyUsage(row["usage"]),
        origin=Origin(row["origin"]),
        created_at=row["created_at"],
        current_version=row["current_version"],
        rotation_enabled=interval is not None,
        rotation_interval_days=interval,
        next_rotation_at=anchor + interval * DAY if interval else None,
        deletion_date=row["deletion_date"],
        material_expires_at=row["material_expires_at"],
        is_default=rules.is_default_alias(row["alias"]),
    )


def _is_uuid(name: str) -> bool:
    try:
        uuid.UUID(name)
        return True
    except ValueError:
        return False


class Keyring:
    """Opens the store and root key; resolves names to cached, loaded keys."""

    def __init__(
        self,
        home: str | os.PathLike | None = None,
        *,
        root_key: RootKeySource | None = None,
        caller: str = "api",
        clock: Callable[[], float] = time.time,
        refresh_interval: float = 1.0,
        integrity: str = "strict",
    ) -> None:
        if integrity not in ("strict", "report"):
            raise InvalidRequest(f"integrity must be 'strict' or 'report', not {integrity!r}")
        self.home = resolve_home(home)
        self.clock = clock
        self.refresh_interval = refresh_interval
        self.strict = integrity == "strict"
        self.notices: list[str] = []  # things a CLI should tell the user (store created, ...)
        source = root_key or default_source(self.home)
        self.root_key_source = source
        """Where the root key came from (never the key): lets another process of the same
        deployment open the same store (the sidecar's worker processes)."""
        anchor_path = anchor_path_for(self.home, source)
        db = self.home / DB_NAME
        if not db.exists() and anchor_path.exists():
            raise StoreError(
                f"key store {db} is missing but its anchor {anchor_path} exists: the store was "
                "deleted or moved. Restore it from a backup (remove the anchor only to start over)"
            )
        self._store = Store(db)
        try:
            self._root = self._open_root(source)
            self._guard = StoreGuard(self._store, self._root, anchor_path)
            self._guard.attach()
            self.notices += self._guard.notices
            self.problems = self._guard.problems()
            if self.problems and self.strict:
                raise StoreError(self.problems[0])
        except BaseException:
            self._store.close()
            raise
        self._nonce_ledger = nonceledger.Ledger()
        self._audit = AuditLog(
            self._store, self._root, f"{caller} uid={os.getuid()} pid={os.getpid()}", guard=self._guard,
            housekeeping=(self.maintain, MAINTENANCE_INTERVAL) if self.strict else None,
            fold=nonceledger.fold, merged=self._nonce_ledger.merged,
        )
        self._cache: dict[str, CachedKey] = {}
        self._generation = self._store.generation()
        self._next_refresh = time.monotonic() + refresh_interval
        if self.strict:  # then every MAINTENANCE_INTERVAL in the audit thread, off the hot path
            self.maintain(tokens=False)
        elif not self.problems:  # "report" does no maintenance, but merges dead processes' records
            self._audit.recover()

    # -- opening -------------------------------------------------------------------
    def _open_root(self, source: RootKeySource) -> RootKey:
        with self._store.write():
            salt = self._store.get_meta("kdf_salt")
            if salt is None:
                salt = os.urandom(16)
                self._store.set_meta("kdf_salt", salt)
            check = self._store.get_meta("root_check")
            if check is None and source.kind == "file" and not Path(source.value).exists():
                create_key_file(Path(source.value))
                self.notices.append(f"created a new root key in {source.value}")
            root = load(source, salt)
            if check is None:
                self._store.set_meta("root_check", root.seal(b"keyhold", _ROOT_CHECK_AAD))
                self.notices.append(f"created a new key store in {self._store.path}")
            else:
                try:
                    root.unseal(check, _ROOT_CHECK_AAD)
                except StoreError:
                    raise StoreError(
                        f"the root key from {source.describe()} does not open the key store "
                        f"{self._store.path}"
                    ) from None
        return root

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        try:
            self._audit.close()
            if self.strict:
                self._guard.advance_anchor()
        finally:
            self._audit._closed = True  # a failed close is not retried at exit, over a closed store
            self._store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- cache -----------------------------------------------------------------------
    def _refresh(self) -> None:
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + self.refresh_interval
        if self.strict:
            self._guard.check()  # rows, head, anchor: fail closed if the store was tampered with
        generation = self._store.generation()
        if generation != self._generation:
            self._generation = generation
            self._cache = {}

    def _invalidate(self) -> None:
        self._cache = {}
        self._generation = self._store.generation()

    def _row(self, name: str) -> dict[str, Any]:
        """The key's row, read from the store now; default keys are made on first use."""
        if not isinstance(name, str) or not name:
            raise NotFound("no key named: give a key id or an alias")
        rules.check_text(name, "the key name")
        row = self._store.key_by_id(str(uuid.UUID(name))) if _is_uuid(name) else self._store.key_by_alias(name)
        if row is None:
            service = name[: -len("/default")] if name.endswith("/default") else None
            if service in DEFAULT_SERVICES:
                return self._create_default(name)
            raise NotFound(f"no key with id or alias {name!r}")
        return row

    def _create_default(self, alias: str) -> dict[str, Any]:
        raise NotImplementedError  # provided by LifecycleMixin

    def _cached(self, name: str) -> CachedKey:
        """The key, loaded; from the cache unless the store changed since."""
        self._refresh()
        key = self._cache.get(name)
        if key is None:
            row = self._row(name)
            spec = KeySpec(row["spec"])
            versions = {
                v: LoadedKey(row["key_id"], v, spec, self._unseal(row["key_id"], v, sealed),
                             budget=self._nonce_budget(row["key_id"], v) if spec is KeySpec.AES_256 else None)
                for v, sealed in self._store.versions(row["key_id"]).items()
            }
            key = CachedKey(facts_of(row), row, versions)
            self._cache[row["key_id"]] = key
            if row["alias"]:
                self._cache[row["alias"]] = key
        return key

    def _use(self, name: str, op: rules.Op, audit_op: str) -> CachedKey:
        """Resolve a key for a cryptographic operation, or record the refusal and raise."""
        key = None
        try:
            key = self._cached(name)
            rules.check_use(key.facts, op, self.clock())
        except Exception as e:
            e = as_kms_error(e)
            key_id = key.facts.key_id if key else self._known_id(name)
            self._audit.record(audit_op, key_id, f"denied: {e}")
            raise e from None
        return key

    def key_name(self, name: str) -> tuple[str | None, str | None]:
        """(key id, alias) of a key named by id or alias: what a server checks a caller's
        policy against before the call. Not audited (the call that follows is), and it
        makes no default key: a default key not made yet is (None, its alias).
        NotFound if no key has that name."""
        try:
            row = self._row(name) if not name.endswith("/default") else (
                self._store.key_by_alias(name) if isinstance(name, str) else None)
        except NotFound:
            raise
        except Exception as e:
            raise as_kms_error(e) from None
        if row is None:
            service = name[: -len("/default")]
            if service in DEFAULT_SERVICES:
                return None, name
            raise NotFound(f"no key with id or alias {name!r}")
        return row["key_id"], row["alias"]

    def _known_id(self, name: str | None) -> str | None:
        """The id of an existing key by id or alias, for audit records of refusals."""
        if not isinstance(name, str) or not name:
            return None
        try:
            uid = str(uuid.UUID(name)) if _is_uuid(name) else None
            row = self._store.key_by_id(uid, verify=False) if uid else self._store.key_by_alias(name, verify=False)
        except (UnicodeError, sqlite3.Error, KmsError):
            return None  # a name the store cannot even look up names no key
        return row["key_id"] if row else None

    def _reload(self, key_id: str) -> CachedKey:
        """Drop a key from the cache and load it again (e.g. another process rotated it)."""
        stale = self._cache.pop(key_id, None)
        if stale is not None and stale.row["alias"]:
            self._cache.pop(stale.row["alias"], None)
        return self._cached(key_id)

    # -- sealing -----------------------------------------------------------------------
    @staticmethod
    def _aad(key_id: str, version: int) -> bytes:
        return f"keyhold/key/{key_id}/{version}".encode()

    def _seal(self, key_id: str, version: int, material: bytes) -> bytes:
        return self._root.seal(material, self._aad(key_id, version))

    def _unseal(self, key_id: str, version: int, sealed: bytes) -> bytes:
        return self._root.unseal(sealed, self._aad(key_id, version))

    # -- nonce budget ------------------------------------------------------------------
    def _nonce_budget(self, key_id: str, version: int) -> nonces.NonceBudget:
        return nonces.NonceBudget(lambda n: self._reserve_nonces(key_id, version, n))

    def _reserve_nonces(self, key_id: str, version: int, n: int) -> None:
        """Count `n` more random-nonce encryptions under one key version, in the store
        (so every process sharing it adds to one count); rotate or refuse near the bound.

        Never waits for another process's write lock: if the store cannot take the count
        now (locked, full, read-only), it goes to this process's audit journal and is
        added to the row when the journal is merged (kmscore.nonceledger)."""
        ledger = self._nonce_ledger
        try:
            with self._store.write(synced=False, wait=False):
                pending = ledger.pending(key_id, version)  # before the row: see nonceledger
                row = self._store.key_by_id(key_id)
                if row is None:
                    raise NotFound(f"key {key_id} was deleted")
                uses = nonces.parse_uses(row["nonce_uses"])
                total = nonces.check_reserve(facts_of(row).name, version, uses.get(version, 0) + pending, n)
                uses[version] = uses.get(version, 0) + n
                self._store.update_key(key_id, bump=False, nonce_uses=nonces.format_uses(uses))
        except StoreError:
            self._guard.check()  # a tampered store is refused, not worked around (a read)
            pending = ledger.pending(key_id, version)
            row = self._store.key_by_id(key_id)  # a read: never waits; verified
            if row is None:
                raise NotFound(f"key {key_id} was deleted") from None
            used = nonces.parse_uses(row["nonce_uses"]).get(version, 0) + pending
            total = nonces.check_reserve(facts_of(row).name, version, used, n)
            self._audit.add(nonceledger.OPERATION, key_id, nonceledger.outcome(version), n)
            ledger.took(key_id, version, n)
            if ledger.pending_total() > nonceledger.PENDING_CAP:
                self._audit.flush()  # the store must take them now: AuditError if not (fail closed)
        if nonces.should_rotate(total) and version == row["current_version"] and rules.rotates(facts_of(row)):
            self._rotate_for_nonces(key_id, version)

    def _guard_row_ok(self, row: dict[str, Any]) -> bool:
        """For rows read with verify=False (maintenance skips rows it cannot trust)."""
        return row_ok(self._root, row, row["versions"])

    def _rotate_for_nonces(self, key_id: str, version: int) -> None:
        raise NotImplementedError  # provided by LifecycleMixin

    # -- lifecycle plumbing ----------------------------------------------------------
    @contextlib.contextmanager
    def _change(self, audit_op: str, name: str | None) -> Iterator[None]:
        """Run a key change in one write transaction together with its audit record
        (`AuditLog.append_now` inside the block); a refusal is recorded after the
        rollback. Never generate key material inside: it would hold the write lock."""
        said = len(self.notices)
        try:
            with self._store.write():
                yield
        except Exception as e:
            del self.notices[said:]  # e.g. "created default key": rolled back too
            e = as_kms_error(e)
            self._audit.record(audit_op, self._known_id(name), f"denied: {e}")
            raise e from None
        finally:
            self._invalidate()

    def maintain(self, store: Store | None = None, *, tokens: bool = True) -> None:
        raise NotImplementedError  # provided by LifecycleMixin


def anchor_path_for(home: Path, source: RootKeySource) -> Path:
    """Where a store's anchor lives: next to its root key file, else in the home.

    A root key file outside the home (e.g. /etc/keyhold/root.key) gets an anchor named
    after the store's path beside it, so several homes can share one root key file."""
    if source.kind == "file":
        key_dir = Path(source.value).expanduser().resolve().parent
        if key_dir != home:
            tag = hashlib.sha256(str(home / DB_NAME).encode()).hexdigest()[:16]
            return key_dir / f"keys-{tag}.anchor"
    return home / ANCHOR_NAME
