"""Revocation reaching open files whose pages the kernel has cached.

Reads that reach the mount check the CMK (`FileKeys.checker`); reads served from the
kernel's page cache do not reach it. This watcher checks the CMK of every open file
about once a second and, while a CMK is unusable, makes the kernel drop the cached
pages of its open files, so their next read comes to us and fails with ENOKEY.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

from kmscore.errors import KmsError

from fsmount.handles import Handles
from fsmount.kernel_cache import KernelCache
from fsmount.keys import FileKeys, key_of

log = logging.getLogger("fsmount")


class RevocationWatch:
    def __init__(self, handles: Handles, keys: FileKeys, kernel: KernelCache, interval: float = 1.0) -> None:
        self.handles, self.keys, self.kernel, self.interval = handles, keys, kernel, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fsmount-revocation", daemon=True)
        self._revoked: set[str] = set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except Exception:  # never let the watcher die silently
                log.exception("revocation watch failed; retrying")

    def sweep(self) -> None:
        by_key = defaultdict(list)
        for f in self.handles.snapshot():
            by_key[key_of(f.header)].append(f)
        for key_id, files in by_key.items():
            try:
                self.keys.cache.check(key_id)
            except KmsError as e:
                if key_id not in self._revoked:
                    self._revoked.add(key_id)
                    log.error("key %s is unusable (%s): dropping cached pages of %d open files", key_id, e, len(files))
                for f in files:
                    self.kernel.forget(f.name)
            else:
                self._revoked.discard(key_id)
