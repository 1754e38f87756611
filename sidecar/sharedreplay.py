"""Replay protection shared by every worker process of one `kms proxy`.

A signature's nonce must be accepted once, whichever worker the replay reaches; the
in-process `ReplayGuard` cannot see the others. This one keeps the claims in a file that
every worker maps (in the pool's private 0700 run directory), under an exclusive
`flock` per claim.

The table is sans-IO (`ReplayTable` works on any writable buffer): fixed slots of a
16-byte digest and a float64 expiry; a nonce lives in one of the `WINDOW` slots that
follow its hash, so a claim reads at most `WINDOW` slots, and an expired slot is reused.
When every slot of a nonce's window holds an unexpired claim the claim is refused
(`ReplayCacheFull`, 503) rather than a remembered nonce forgotten. With twice as many
slots as `DEFAULT_CAPACITY` a full window before the table is nearly full is vanishingly
unlikely.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import struct
import threading
from pathlib import Path

from sidecar.replay import DEFAULT_CAPACITY, ReplayCacheFull

SLOT = struct.Struct("<16sd")
WINDOW = 64


class ReplayTable:
    """Claims in a buffer of `len(buf) // SLOT.size` slots."""

    def __init__(self, buf) -> None:
        self.buf = buf
        self.slots = len(buf) // SLOT.size
        if self.slots < WINDOW:
            raise ValueError(f"a replay table needs at least {WINDOW} slots")

    def claim(self, token: bytes, until: float, now: float) -> bool:
        start = int.from_bytes(token[:8], "little") % self.slots
        free = None
        unpack, buf, slots = SLOT.unpack_from, self.buf, self.slots
        for i in range(WINDOW):
            at = ((start + i) % slots) * SLOT.size
            held, expiry = unpack(buf, at)
            if expiry < now:  # empty (0.0) or expired
                if free is None:
                    free = at
            elif held == token:
                return False
        if free is None:
            raise ReplayCacheFull("too many signed requests within the replay window; try again later")
        SLOT.pack_into(buf, free, token, until)
        return True

    def held(self, now: float) -> int:
        return sum(1 for i in range(self.slots) if SLOT.unpack_from(self.buf, i * SLOT.size)[1] >= now)


class SharedReplayGuard:
    """`ReplayGuard`'s `claim`, over a file mapped by every worker."""

    def __init__(self, path: str | os.PathLike, capacity: int = DEFAULT_CAPACITY) -> None:
        self.path = Path(path)
        size = 2 * capacity * SLOT.size
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)  # sparse zeros: every slot empty
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._table = ReplayTable(memoryview(self._map))
        self._lock = threading.Lock()

    def __len__(self) -> int:
        import time

        with self._locked():
            return self._table.held(time.time())

    def claim(self, scope: str, nonce: str, until: float, now: float) -> bool:
        token = hashlib.sha256(f"{scope}\0{nonce}".encode()).digest()[:16]
        with self._locked():
            return self._table.claim(token, until, now)

    @contextlib.contextmanager
    def _locked(self):
        with self._lock:  # threads of this process, then the other processes
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
