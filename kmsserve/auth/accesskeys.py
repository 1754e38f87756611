"""Access keys that keyhold issues: an id, a secret shown once, a policy.

Kept in their own SQLite file beside the key store (`access-keys.db` in the KMS home).
Each row is sealed under the root key (AES-256-GCM, the access key id as associated
data), so whoever can write the file cannot read a secret, forge a key, move a policy
from one key to another or re-enable a disabled key: a row that fails to open is
refused like a wrong signature.
"""

from __future__ import annotations

import base64
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kmscore.errors import NotFound, StoreError
from kmsserve.auth.policy import Policy

FILE_NAME = "access-keys.db"
ID_PREFIX = "KHAK"
_AAD = b"keyhold/access-key/"


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    name: str
    secret: str
    enabled: bool
    policy: Policy
    created_at: float

    def __repr__(self) -> str:  # never the secret
        return f"<AccessKey {self.access_key_id} ({self.name}){'' if self.enabled else ' disabled'}>"


def new_id() -> str:
    return ID_PREFIX + base64.b32encode(secrets.token_bytes(10)).decode()


class AccessKeys:
    """The access keys of one KMS home. Thread-safe."""

    def __init__(self, kms) -> None:
        self._root = kms._root  # the Kms's root key seals the rows
        self.path = Path(kms.home) / FILE_NAME
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self.path.chmod(0o600)
        self._db.execute("CREATE TABLE IF NOT EXISTS access_keys(id TEXT PRIMARY KEY, sealed BLOB NOT NULL)")

    def close(self) -> None:
        self._db.close()

    def _seal(self, key: AccessKey) -> bytes:
        record = {"name": key.name, "secret": key.secret, "enabled": key.enabled,
                  "policy": json.loads(key.policy.to_json()), "created_at": key.created_at}
        return self._root.seal(json.dumps(record).encode(), _AAD + key.access_key_id.encode())

    def _open(self, access_key_id: str, sealed: bytes) -> AccessKey:
        try:
            record = json.loads(self._root.unseal(sealed, _AAD + access_key_id.encode()))
        except Exception:
            raise StoreError(f"access key {access_key_id}: its row fails authentication (changed outside keyhold)") from None
        return AccessKey(access_key_id, record["name"], record["secret"], record["enabled"],
                         Policy.model_validate(record["policy"]), record["created_at"])

    def _put(self, key: AccessKey) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO access_keys(id, sealed) VALUES(?, ?)", (key.access_key_id, self._seal(key)))

    def create(self, name: str, policy: Policy) -> AccessKey:
        key = AccessKey(new_id(), name, secrets.token_urlsafe(30), True, policy, time.time())
        self._put(key)
        return key

    def get(self, access_key_id: str) -> AccessKey | None:
        """The access key, None if there is none (or its row fails authentication)."""
        with self._lock:
            row = self._db.execute("SELECT sealed FROM access_keys WHERE id = ?", (access_key_id,)).fetchone()
        if row is None:
            return None
        try:
            return self._open(access_key_id, row[0])
        except StoreError:
            return None

    def require(self, access_key_id: str) -> AccessKey:
        key = self.get(access_key_id)
        if key is None:
            raise NotFound(f"no access key {access_key_id}")
        return key
