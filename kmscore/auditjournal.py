"""The audit journal: a per-process file of audit counters that outlives the process.

Why it exists: an audit insert into SQLite per operation costs several times a 4 KiB
encryption, so records reach the hash-chained log in batches. A batch held only in
memory is lost when the process is killed (kill -9, OOM killer) or cannot reach the
store (another process holding the write lock, a full disk). The journal closes that
gap: before an operation returns its result, its record is counted in a file mapped
with MAP_SHARED. The mapped pages belong to the kernel's page cache, so the count
survives the death of the process at any instruction; no system call is made per
operation (a `write(2)` per operation would cost a third of an encryption).

Layout (little-endian; all offsets fixed, so a reader needs no parsing state):

    0       header   4096 bytes: MAGIC, u32 length, UTF-8 JSON {"caller", "created"}
    4096    bank 0   BANK_SIZE bytes
    4096+B  bank 1   BANK_SIZE bytes

    bank:   u64 epoch, 56 bytes reserved, then SLOTS slots of SLOT_SIZE bytes
    slot:   u64 count | f64 last | f64 first | u16 n | n bytes UTF-8 JSON
            [operation, key_id, outcome, caller-or-null]

A slot is one group of identical operations (same operation, key, outcome, caller);
it is written text first and count last, so a slot with count 0 is unused. Slots fill
in order. Writers count into the *active* bank; the merger flips to the other bank,
appends the full one to the chained log in one transaction that also stores the bank's
epoch as merged (meta `audit_journals`), and only then clears it. A bank whose epoch is
already marked merged is skipped on recovery, so a crash between commit and clear
never counts twice. The owner holds an exclusive `flock` on its journal for its whole
life; a journal whose lock can be taken belongs to a dead process and is merged by
whichever process sweeps it (`recover_orphans`, run by every Kms at open and by
maintenance).
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"KHAJ1\n"
HEADER_SIZE = 4096
BANK_HEADER = 64
SLOT_SIZE = 256
SLOTS = 256
BANK_SIZE = BANK_HEADER + SLOTS * SLOT_SIZE
FILE_SIZE = HEADER_SIZE + 2 * BANK_SIZE
TEXT_MAX = SLOT_SIZE - 26
SUFFIX = ".journal"

COUNT_LAST = struct.Struct("<Qd")
SLOT_HEAD = struct.Struct("<QddH")
EPOCH = struct.Struct("<Q")


@dataclass(frozen=True)
class Group:
    """A run of identical operations: what the chained log stores as one record."""

    operation: str
    key_id: str | None
    outcome: str
    caller: str | None
    count: int
    first: float
    last: float


def bank_offset(bank: int) -> int:
    return HEADER_SIZE + bank * BANK_SIZE


def slot_offset(bank: int, index: int) -> int:
    return bank_offset(bank) + BANK_HEADER + index * SLOT_SIZE


def slot_text(operation: str, key_id: str | None, outcome: str, caller: str | None) -> bytes:
    """The slot's JSON text; a long outcome (an error message) is cut to fit the slot."""
    text = json.dumps([operation, key_id, outcome, caller], ensure_ascii=False).encode()
    while len(text) > TEXT_MAX and outcome:
        outcome = outcome[: max(0, len(outcome) - (len(text) - TEXT_MAX) - 3)] + "…" if len(outcome) > 1 else ""
        text = json.dumps([operation, key_id, outcome, caller], ensure_ascii=False).encode()
    return text


def read_bank(buf, bank: int) -> tuple[int, list[Group]]:
    """(epoch, groups) of one bank of a journal's bytes (mapped or read)."""
    (epoch,) = EPOCH.unpack_from(buf, bank_offset(bank))
    groups = []
    for i in range(SLOTS):
        off = slot_offset(bank, i)
        count, last, first, n = SLOT_HEAD.unpack_from(buf, off)
        if count == 0 or n > TEXT_MAX:
            break
        try:
            op, key_id, outcome, caller = json.loads(bytes(buf[off + 26 : off + 26 + n]))
        except (ValueError, TypeError):
            break  # a slot torn by a power loss: the rest of the bank was never used
        groups.append(Group(op, key_id, outcome, caller, count, first, last or first))
    return epoch, groups


def read_header(buf) -> dict:
    if bytes(buf[: len(MAGIC)]) != MAGIC:
        raise ValueError("not an audit journal")
    (n,) = struct.unpack_from("<I", buf, len(MAGIC))
    return json.loads(bytes(buf[len(MAGIC) + 4 : len(MAGIC) + 4 + n]))


class Journal:
    """The journal file of this process: created, locked and mapped on first use."""

    def __init__(self, folder: Path, caller: str) -> None:
        self.id = uuid.uuid4().hex
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = folder / f"{self.id}{SUFFIX}"
        tmp = folder / f".{self.id}.new"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            # reserve the blocks now: a store into a mapped hole of a full disk is SIGBUS
            os.posix_fallocate(fd, 0, FILE_SIZE)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.mm = mmap.mmap(fd, FILE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            header = json.dumps({"caller": caller, "created": time.time()}).encode()
            self.mm[: len(MAGIC) + 4 + len(header)] = MAGIC + struct.pack("<I", len(header)) + header
            EPOCH.pack_into(self.mm, bank_offset(0), 1)
            os.rename(tmp, self.path)  # visible to sweepers only once locked
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        self.fd = fd

    def epoch(self, bank: int) -> int:
        return EPOCH.unpack_from(self.mm, bank_offset(bank))[0]

    def start_bank(self, bank: int, epoch: int) -> None:
        EPOCH.pack_into(self.mm, bank_offset(bank), epoch)

    def new_slot(self, bank: int, index: int, text: bytes, now: float) -> int:
        off = slot_offset(bank, index)
        self.mm[off + 26 : off + 26 + len(text)] = text
        struct.pack_into("<dH", self.mm, off + 16, now, len(text))
        return off  # the caller then stores count and last: the slot exists from then on

    def clear_bank(self, bank: int) -> None:
        start = bank_offset(bank) + BANK_HEADER
        self.mm[start : start + SLOTS * SLOT_SIZE] = bytes(SLOTS * SLOT_SIZE)

    def sync(self) -> None:
        """Push the counters to the disk (power loss; a killed process needs no sync)."""
        self.mm.flush()

    def remove(self) -> None:
        """Delete the journal (everything in it is merged) and release it."""
        self.path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            self.mm.close()
            os.close(self.fd)
            self.fd = -1


class Orphan:
    """A journal left by a dead process, locked by us while we merge it."""

    def __init__(self, path: Path, fd: int, buf: bytes) -> None:
        self.path, self.fd, self.id = path, fd, path.name[: -len(SUFFIX)]
        self.caller = str(read_header(buf).get("caller", "unknown process"))
        self.banks = sorted((read_bank(buf, b) for b in (0, 1)), key=lambda eg: eg[0])

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self.fd)

    def release(self) -> None:
        os.close(self.fd)


def orphans(folder: Path) -> Iterator[Orphan]:
    """Journals in `folder` whose owner is gone (their lock is free), locked for us."""
    try:
        names = sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX))
    except FileNotFoundError:
        return
    for path in names:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                raise OSError("replaced")  # merged and removed by another sweeper meanwhile
            buf = os.pread(fd, FILE_SIZE, 0)
            orphan = Orphan(path, fd, buf)
        except (OSError, ValueError, struct.error):
            os.close(fd)
            continue
        yield orphan


def live_ids(folder: Path) -> set[str]:
    """Ids of every journal file present (live or not): merged-epoch entries of others are stale."""
    try:
        return {p.name[: -len(SUFFIX)] for p in folder.iterdir() if p.name.endswith(SUFFIX)}
    except FileNotFoundError:
        return set()
