"""The keys of one mount: the CMK new files are wrapped under, and the data-key cache.

Turns kmscore's verdicts into errno values a file system can return: a revoked CMK is
ENOKEY (as fscrypt answers when a key is gone), a damaged wrapped DEK is EIO. The
cache's `check` runs on every read and write, so revoking a CMK reaches files that are
already open within the cache's revocation bound.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
from collections.abc import Callable, Iterator

from kmscore.blob import peek_key
from kmscore.dkcache import DataKeyCache
from kmscore.envelope import FrameCipher, Header, new_envelope, open_envelope
from kmscore.errors import InvalidCiphertext, KeyUnavailable, KmsError, NotFound
from kmscore.facade import Kms

from fsmount.openfile import fs_error

log = logging.getLogger("fsmount")

DEFAULT_FRAME_SIZE = 32 * 1024


class FileKeys:
    """Creates and opens file envelopes for one mount; thread-safe."""

    def __init__(
        self, kms: Kms, key: str, frame_size: int = DEFAULT_FRAME_SIZE, revocation_bound: float = 5.0
    ) -> None:
        self.kms = kms
        self.key = key
        self.frame_size = frame_size
        self.cache = DataKeyCache(kms, revocation_bound=revocation_bound)
        self._revoked: set[str] = set()
        self._lock = threading.Lock()

    def new(self, name: str, frame_size: int | None = None) -> tuple[Header, FrameCipher]:
        """A fresh envelope (own DEK, wrapped under the mount's CMK) for a new file
        (or, with its own frame size, for an extended attribute's value)."""
        with _translated(name, self.key):
            return new_envelope(self.cache, self.key, frame_size or self.frame_size)

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
