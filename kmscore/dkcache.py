"""Data-key cache: unwrapped DEKs in memory, bounded in number and age, revocable.

Unwrapping a DEK is a KMS call; a file system reading block after block, or a proxy
opening many envelopes, should not pay it every time. The price of caching is that a
revoked CMK (disabled, scheduled for deletion, material expired) could keep serving
DEKs; `check` bounds that: every use of a cached DEK asks `Kms.key_usable`, whose view of
the key store is at most `kms.refresh_interval` old, and answers are remembered for the
rest of `revocation_bound`. So a revocation made by any process sharing the store stops
the cache within `revocation_bound` seconds (a bound below the Kms's refresh interval
cannot be kept: the Kms's own view is that old; open the Kms with a smaller
`refresh_interval` for tighter bounds).

The optional reuse policy (`ReusePolicy`) lets new envelopes share a freshly generated
DEK for a while, like the AWS Encryption SDK's caching CMM, for when each generation is
a remote call: limited by age, number of messages and bytes.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kmscore.blob import encode_context, peek_key
from kmscore.envelope.format import MIN_FRAME
from kmscore.envelope.frames import DEK_NONCE_LIMIT
from kmscore.errors import InvalidRequest, KmsError, as_kms_error

Context = Mapping[str, str] | None
_NEVER = float("inf")


@dataclass(frozen=True)
class ReusePolicy:
    """How long a generated DEK may serve new messages (all limits apply)."""

    max_age: float = 300.0
    max_messages: int = 2**20
    max_bytes: int = 2**40

    def __post_init__(self) -> None:
        if self.max_age <= 0 or self.max_messages < 1 or self.max_bytes < 1:
            raise InvalidRequest("data-key reuse limits must be positive")
        # every message and every MIN_FRAME bytes under one shared DEK is a random nonce
        if 2 * self.max_messages + self.max_bytes // MIN_FRAME > DEK_NONCE_LIMIT:
            raise InvalidRequest(
                "data-key reuse limits allow more than 2^32 AES-GCM nonces under one data key "
                "(NIST SP 800-38D): lower max_messages or max_bytes"
            )


class _Entry:
    __slots__ = ("key_id", "dek", "wrapped", "born", "messages", "bytes")

    def __init__(self, key_id: str, dek: bytes, wrapped: bytes, born: float) -> None:
        self.key_id, self.dek, self.wrapped, self.born = key_id, dek, wrapped, born
        self.messages = 0
        self.bytes = 0

    def __repr__(self) -> str:  # never the DEK
        return f"<cached data key of {self.key_id}>"


class DataKeyCache:
    """Thread-safe. Give it where a Kms is taken by `new_envelope` / `open_envelope`."""

    def __init__(
        self,
        kms,
        max_entries: int = 4096,
        max_age: float = 300.0,
        revocation_bound: float = 5.0,
        reuse: ReusePolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_age <= 0 or revocation_bound < 0:
            raise InvalidRequest("data-key cache limits must be positive")
        self.kms = kms
        self.max_entries = max_entries
        self.max_age = max_age
        self.revocation_bound = revocation_bound
        self.reuse = reuse
        self._clock = clock
        self._wall = getattr(kms, "clock", time.time)  # the clock the Kms judges expiry by
        # a store change is seen by the Kms within its refresh interval; the rest of the
        # bound is how long a "usable" answer may be remembered
        self._trust = max(0.0, revocation_bound - getattr(kms, "refresh_interval", revocation_bound))
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._shared: dict[tuple[str, bytes], _Entry] = {}
        self._usable_until: dict[str, float] = {}
        self._expires: dict[str, float] = {}  # CMK id -> material expiry (wall clock)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        """Always true: a cache is a service, not a container whose emptiness means
        "none". Without this, `__len__` made a new (empty) cache falsy, and callers'
        `cache or kms` chose the bare Kms every time, so the cache never filled and every
        envelope cost a DecryptDataKey call (tests/serve/test_remote_bench_found.py)."""
        return True

    def __repr__(self) -> str:
        return f"<DataKeyCache {len(self._entries)} keys, revocation bound {self.revocation_bound}s>"

    # -- revocation --------------------------------------------------------------------
    def check(self, key_id: str) -> None:
        """Raise KeyUnavailable (or NotFound) if CMK `key_id` may not serve data keys now.

        Cheap: a dict lookup while a recent answer holds, else `Kms.key_usable` (no store
        access while the Kms's own cache is fresh). A refusal also drops that CMK's DEKs.
        An answer is never remembered past the CMK's material expiry: expired material
        is not served from the cache, not even for a moment.
        """
        now = self._clock()
        if self._usable_until.get(key_id, 0.0) > now and self._wall() < self._expires.get(key_id, _NEVER):
            return
        try:
            expires = self.kms.key_usable(key_id, "decrypt")
        except KmsError:
            self.forget(key_id)
            raise
        # the answer is never trusted past the material's expiry, judged by the Kms's
        # own (wall) clock: a clock step forward ends the trust too
        self._expires[key_id] = _NEVER if expires is None else expires
        self._usable_until[key_id] = now + self._trust

    def forget(self, key_id: str | None = None) -> None:
        """Drop the cached DEKs of one CMK, or all of them."""
        with self._lock:
            for k in [k for k, e in self._entries.items() if key_id is None or e.key_id == key_id]:
                del self._entries[k]
            for k in [k for k, e in self._shared.items() if key_id is None or e.key_id == key_id]:
                del self._shared[k]
            self._usable_until.pop(key_id, None) if key_id else self._usable_until.clear()

    # -- unwrap ------------------------------------------------------------------------
    def unwrap(self, wrapped: bytes, context: Context = None) -> bytes:
        """The DEK of a wrapped blob: from the cache if fresh and its CMK usable, else the KMS."""
        try:
            key_id = peek_key(wrapped)[0]
            slot = hashlib.sha256(bytes(wrapped) + b"\0" + encode_context(context)).digest()
        except KmsError:
            raise
        except Exception as e:  # not bytes, a context that is no mapping: kmscore's errors only
            raise as_kms_error(e) from None
        self.check(key_id)
        now = self._clock()
        with self._lock:
            entry = self._entries.get(slot)
            if entry is not None and now - entry.born < self.max_age:
                self._entries.move_to_end(slot)
                return entry.dek
        dek = self.kms.decrypt_datakey(wrapped, context)
        self._put(slot, _Entry(key_id, dek, bytes(wrapped), now))
        return dek

    def _put(self, slot: bytes, entry: _Entry) -> None:
        with self._lock:
            self._entries[slot] = entry
            self._entries.move_to_end(slot)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    # -- reuse of generated DEKs --------------------------------------------------------
    def shared_datakey(self, key: str, context: Context = None, expected_bytes: int = 0) -> tuple[bytes, bytes]:
        """(DEK, wrapped DEK) for a new message under CMK `key`: a recent one while the
        reuse policy allows, else a freshly generated one."""
        policy = self.reuse
        if policy is None:
            raise InvalidRequest("this data-key cache has no reuse policy")
        part = (key, encode_context(context))
        now = self._clock()
        with self._lock:
            entry = self._shared.get(part)
            fits = (
                entry is not None
                and now - entry.born < policy.max_age
                and entry.messages < policy.max_messages
                and entry.bytes + expected_bytes <= policy.max_bytes
            )
        if fits:
            try:
                self.check(entry.key_id)
            except KmsError:
                fits = False
        if not fits:
            dk = self.kms.create_datakey(key, 256, context)
            entry = _Entry(dk.key_id, dk.plaintext, dk.ciphertext, now)
            with self._lock:
                self._shared[part] = entry
            self._put(hashlib.sha256(entry.wrapped + b"\0" + encode_context(context)).digest(), _Entry(dk.key_id, dk.plaintext, dk.ciphertext, now))
        with self._lock:
            entry.messages += 1
            entry.bytes += expected_bytes
        return entry.dek, entry.wrapped
