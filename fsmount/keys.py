"""The keys of one mount: the CMK new files are wrapped under, and the data-key cache.

Turns kmscore's verdicts into errno values a file system can return: a revoked CMK is
ENOKEY (as fscrypt answers when a key is gone), a damaged wrapped DEK is EIO. The
cache's `check` runs on every read and write, so revoking a CMK reaches files that are
already open within the cache's revocation bound.

New files take their data key from a `DataKeyPool`: DEKs generated and wrapped ahead of
time by a background thread, in the gaps a burst of creates leaves, so a create does
not wait for the KMS. Every file still gets its own DEK and message id; the pool only
moves the KMS call earlier (and an unused pooled key is simply forgotten).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from kmscore.blob import peek_key
from kmscore.dkcache import DataKeyCache
from kmscore.envelope import VERSION, FrameCipher, Header, envelope_context, new_envelope, open_envelope
from kmscore.envelope.format import MESSAGE_ID_SIZE
from kmscore.errors import InvalidCiphertext, KeyUnavailable, KmsError, NotFound
from kmscore.facade import Kms

from fsmount.openfile import fs_error

log = logging.getLogger("fsmount")

DEFAULT_FRAME_SIZE = 32 * 1024


class DataKeyPool:
    """Fresh (message id, DEK, wrapped DEK) triples for new envelopes, made ahead.

    Thread-safe. `take()` never blocks on the KMS: it returns None when the pool is
    empty (the caller then makes a key itself) and wakes the filler, which keeps up to
    `size` keys. Keys older than `max_age` are dropped, so a rotated CMK's new version
    is used within that time; `clear()` drops all (on revocation).
    """

    def __init__(self, kms: Kms, key: str, size: int = 64, max_age: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kms, self.key, self.size, self.max_age, self._clock = kms, key, size, max_age, clock
        self._keys: deque[tuple[float, bytes, bytes, bytes]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:  # never a key
        return f"<DataKeyPool of {self.key}: {len(self._keys)} keys>"

    def __reduce__(self):
        raise TypeError("a DataKeyPool holds data keys and cannot be pickled")

    def take(self) -> tuple[bytes, bytes, bytes] | None:
        now = self._clock()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._fill_forever, name="fsmount-datakeys", daemon=True)
                self._thread.start()
            while self._keys:
                born, message_id, dek, wrapped = self._keys.popleft()
                if now - born < self.max_age:
                    if len(self._keys) < self.size // 2:
                        self._wake.set()
                    return message_id, dek, wrapped
        self._wake.set()
        return None

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()

    def make(self) -> tuple[bytes, bytes, bytes]:
        """One new (message id, DEK, wrapped DEK), from the KMS now."""
        message_id = os.urandom(MESSAGE_ID_SIZE)
        dk = self.kms.create_datakey(self.key, 256, envelope_context(message_id))
        return message_id, dk.plaintext, dk.ciphertext

    def _fill_forever(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                while len(self._keys) < self.size:
                    made = self.make()
                    with self._lock:
                        self._keys.append((self._clock(), *made))
            except KmsError as e:  # revoked or unavailable: creates ask the KMS and fail there
                log.debug("data key pool of %s not refilled: %s", self.key, e)
                self.clear()
            except Exception:  # never let the filler die silently
                log.exception("data key pool of %s failed; creates make their own keys", self.key)


class FileKeys:
    """Creates and opens file envelopes for one mount; thread-safe."""

    def __init__(
        self, kms: Kms, key: str, frame_size: int = DEFAULT_FRAME_SIZE, revocation_bound: float = 5.0
    ) -> None:
        self.kms = kms
        self.key = key
        self.frame_size = frame_size
        self.cache = DataKeyCache(kms, revocation_bound=revocation_bound)
        self.pool = DataKeyPool(kms, key)
        self._revoked: set[str] = set()
        self._lock = threading.Lock()

    def new(self, name: str, frame_size: int | None = None) -> tuple[Header, FrameCipher]:
        """A fresh envelope (own DEK, wrapped under the mount's CMK) for a new file
        (or, with its own frame size, for an extended attribute's value)."""
        with _translated(name, self.key):
            if frame_size is not None and frame_size != self.frame_size:  # an xattr value's envelope
                return new_envelope(self.cache, self.key, frame_size)
            Header(VERSION, 0, self.frame_size, bytes(MESSAGE_ID_SIZE), b"\0")  # a bad frame size fails before a KMS call
            try:
                self.cache.check(self.key)  # a pooled key must not outlive a revocation
            except KmsError:
                self.pool.clear()
                raise
            message_id, dek, wrapped = self.pool.take() or self.pool.make()
            header = Header(VERSION, 0, self.frame_size, message_id, wrapped)
            return header, FrameCipher(dek, header)

    def open(self, header: Header, name: str) -> FrameCipher:
        with _translated(name, key_of(header)):
            return open_envelope(self.cache, header)

    def checker(self, header: Header, name: str) -> Callable[[], None]:
        """A cheap call that raises OSError(ENOKEY) while the file's CMK is unusable."""
        key_id = key_of(header)

        def check() -> None:
            try:
                self.cache.check(key_id)
            except KmsError as e:
                self._report(key_id, name, e)
                raise fs_error(errno.ENOKEY) from None
            if key_id in self._revoked:
                with self._lock:
                    self._revoked.discard(key_id)
                log.warning("key %s is usable again", key_id)

        return check

    def _report(self, key_id: str, name: str, error: Exception) -> None:
        with self._lock:
            first = key_id not in self._revoked
            self._revoked.add(key_id)
        if first:  # one line per revocation, not one per read
            log.error("key %s is unusable, refusing access (first seen on %s): %s", key_id, name, error)


@contextlib.contextmanager
def _translated(name: str, key: str) -> Iterator[None]:
    """KMS errors while creating or opening a file become errno values, logged."""
    try:
        yield
    except (KeyUnavailable, NotFound) as e:
        log.error("%s: key %s is unusable: %s", name, key, e)
        raise fs_error(errno.ENOKEY) from None
    except InvalidCiphertext as e:
        log.error("integrity: %s: the wrapped data key does not open: %s", name, e)
        raise fs_error(errno.EIO) from None
    except KmsError as e:
        log.error("%s: %s", name, e)
        raise fs_error(errno.EIO) from None


def key_of(header: Header) -> str:
    """The id of the CMK a header's data key is wrapped under."""
    return peek_key(header.wrapped_dek)[0]
