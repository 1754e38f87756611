"""The anchor: the newest audit log head we have seen, kept outside the key store.

Why: the head inside `keys.db` detects a log cut at the end, but an attacker who can
write the store can also replace the whole file with an older copy (old head, old rows,
all MACs valid) or wipe the log and the head together. The anchor file remembers the
newest (seq, chain MAC) any process committed, MAC'd with the root key; on every open
the store's log must still contain that record, so a rollback or a wipe shows.

Where: next to the root key file (default `HOME/keys.anchor` when the root key is
`HOME/root.key` or comes from the environment). Keep the root key and the anchor in a
folder the store's attacker cannot write (e.g. a root-owned /etc/keyhold with the store
on a data volume): an attacker who can delete the anchor can roll back as far as the
last copy they hold, once. See docs/SECURITY.md ("kmscore: store and audit log threat model").

The file is replaced atomically (temp file, fsync, rename, fsync of the folder) under
an flock, and only ever moves forward: a process with a stale view cannot move it back.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kmscore.durable import sync_folder
from kmscore.errors import StoreError
from kmscore.rootkey import RootKey

ANCHOR_NAME = "keys.anchor"
FORMAT = "keyhold-anchor/1"


@dataclass(frozen=True)
class AnchorState:
    seq: int
    mac: bytes


class Anchor:
    """One anchor file, for one store, MAC'd with that store's root key."""

    def __init__(self, path: Path, root: RootKey, store_id: str) -> None:
        self.path = path
        self._root = root
        self._store_id = store_id

    def exists(self) -> bool:
        return self.path.exists()

    def _tag(self, seq: int, mac: bytes) -> bytes:
        body = json.dumps([FORMAT, self._store_id, seq, mac.hex()], separators=(",", ":")).encode()
        return self._root.integrity_mac(body)

    def read(self) -> AnchorState | None:
        """The anchored head, None if there is no anchor file; StoreError if it is not ours."""
        try:
            data = json.loads(self.path.read_bytes())
            seq, mac, tag = int(data["seq"]), bytes.fromhex(data["mac"]), bytes.fromhex(data["tag"])
            ok = data.get("format") == FORMAT and hmac.compare_digest(tag, self._tag(seq, mac))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read the anchor file {self.path}: {e.strerror}") from None
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise StoreError(
                f"the anchor file {self.path} was altered or belongs to another key store"
            )
        return AnchorState(seq, mac)

    def advance(self, seq: int, mac: bytes, confirm: Callable[[AnchorState], bool]) -> None:
        """Move the anchor to (seq, mac) if that is newer. `confirm(old)` must say the store
        still holds the anchored record; if not, the store went back in time: refuse."""
        with self._locked():
            old = self.read()
            if old is not None:
                if old.seq >= seq:
                    return
                if not confirm(old):
                    raise rollback_error(self.path, old.seq)
            self._write(seq, mac)

    def reset(self, seq: int, mac: bytes) -> None:
        """Anchor the store as it is now (first open, or an operator accepting a rollback)."""
        with self._locked():
            self._write(seq, mac)

    # -- files -----------------------------------------------------------------------
    def _locked(self):
        class _Lock:
            def __enter__(inner):
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                inner.fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(inner.fd, fcntl.LOCK_EX)
                return inner

            def __exit__(inner, *exc):
                os.close(inner.fd)  # releases the flock

        return _Lock()

    def _write(self, seq: int, mac: bytes) -> None:
        data = {"format": FORMAT, "seq": seq, "mac": mac.hex(), "tag": self._tag(seq, mac).hex()}
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(data) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            sync_folder(self.path.parent)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write the anchor file {self.path}: {e.strerror}") from None


def rollback_error(path: Path, seq: int) -> StoreError:
    return StoreError(
        f"the key store was rolled back or its audit log wiped: the anchor {path} saw audit "
        f"record {seq}, which the store no longer holds. Restore the newest backup, or accept "
        "the store as it is with `kms store reanchor --accept-rollback` (see `kms store verify`)"
    )
