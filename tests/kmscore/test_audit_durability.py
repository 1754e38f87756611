"""No operation returns a result without its audit record being durable.

Real processes encrypt in a loop and count, in a file of their own, every result they
got back; they are killed with SIGKILL (under plain load, with another process holding
the store's write lock, on a full file system), and the records in the chained log are
then counted against the results returned. Nothing is faked: the encrypting process
is the real facade, the lock is a real sqlite3 `BEGIN IMMEDIATE`, the full disk a real
tmpfs."""

from __future__ import annotations

import mmap
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kmscore import AuditError, Kms
from kmscore import auditjournal as aj

THREADS = 2
UNKNOWN = 1 << 62

CHILD = textwrap.dedent(
    """
    import mmap, os, struct, sys, threading
    from kmscore import Kms

    UNKNOWN = 1 << 62
    home, counts, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fd = os.open(counts, os.O_RDWR)
    mm = mmap.mmap(fd, 4096)
    kms = Kms(home, caller="loader")
    kms.encrypt_data("app/aes", b"warm")  # key cached; this one is not counted
    def work(slot):
        n = 0
        while True:
            kms.encrypt_data("app/aes", b"x" * 64)
            n += 1  # a result was returned: count it where the test can read it after kill -9
            struct.pack_into("<Q", mm, 8 * slot, n)
            if slot == 0:  # a facade without merge counters (older code) is not waited for
                audit = kms._audit
                struct.pack_into("<QQ", mm, 64, getattr(audit, "merge_attempts", UNKNOWN),
                                 getattr(audit, "merge_failures", UNKNOWN))
    for i in range(threads):
        threading.Thread(target=work, args=(i,), daemon=True).start()
    print("ready", os.getpid(), flush=True)
    threading.Event().wait()
    """
)


class Loader:
    """An encrypting child process whose returned results are countable after kill -9."""

    started: list[subprocess.Popen] = []

    def __init__(self, tmp: Path, home: Path) -> None:
        self.counts = tmp / f"counts-{os.urandom(4).hex()}"
        self.counts.write_bytes(bytes(4096))
        script = tmp / "loader.py"
        script.write_text(CHILD)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(home), str(self.counts), str(THREADS)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        Loader.started.append(self.proc)
        line = self.proc.stdout.readline().decode().split()
        assert line[:1] == ["ready"], self.proc.stderr.read().decode()
        self.pid = int(line[1])
        self._fd = os.open(self.counts, os.O_RDONLY)
        self._mm = mmap.mmap(self._fd, 4096, prot=mmap.PROT_READ)

    def returned(self) -> int:
        return sum(struct.unpack_from(f"<{THREADS}Q", self._mm, 0))

    def merges(self) -> tuple[int, int]:
        """(merge attempts, failed merges) of the child's audit log so far."""
        return struct.unpack_from("<QQ", self._mm, 64)

    def merged_since(self, attempts: int, failures: int = 0, failed: int = 0) -> bool:
        """At least one more merge attempt (and `failed` more failures) than given; always
        true for a facade that has no such counters (so the test runs on older code)."""
        a, f = self.merges()
        return a >= UNKNOWN or (a > attempts and f >= failures + failed)

    def wait_for(self, condition, give_up: float = 300.0) -> None:
        """Spin until the child made progress. `give_up` is no timing bound: it only turns
        a child that stopped making progress into a failure instead of a hung suite."""
        deadline = time.monotonic() + give_up
        while not condition():
            assert self.proc.poll() is None, self.proc.stderr.read().decode()
            assert time.monotonic() < deadline, f"no progress in {give_up:.0f} s: merges {self.merges()}"
            os.sched_yield()

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        n = self.returned()
        self._mm.close()
        os.close(self._fd)
        return n


@pytest.fixture(autouse=True)
def _no_loader_survives():
    """Whatever a test does, no loader child outlives it (they spin at full speed)."""
    before = set(Loader.started)
    yield
    for proc in set(Loader.started) - before:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _of(record: dict, pid: int) -> bool:
    """A record of process `pid`: its caller ends in "pid=<pid>" (a substring test would
    also take pid=1234's records for pid=123's)."""
    return record["caller"].split()[-1:] == [f"pid={pid}"]


def recorded(home: Path, pid: int) -> int:
    """Encrypt operations of process `pid` in the chained log (its journal merged now).

    The journal of the killed process must be gone afterwards: a sweep that could not
    merge it keeps it silently (retried by the next sweep), and would otherwise show up
    here only as records missing."""
    with Kms(home) as kms:
        assert kms.verify_audit().ok
        records = [r for r in kms.audit_records() if r["operation"] == "Encrypt" and r["outcome"] == "ok" and _of(r, pid)]
    left = sorted(p.name for p in (home / "audit-journal").glob("*.journal"))
    assert not left, f"journals not merged by the sweep: {left}"
    recorded.last = [(r["seq"], r["count"], r["time"], r["last_time"]) for r in records]  # for failure messages
    return sum(r["count"] for r in records) - 1  # the warm-up call


recorded.last = []


def journal_banks(home: Path) -> list:
    """What the journals of `home` hold now (before a sweep merges them): for failure
    messages, so a record count that does not add up can be placed (which bank, which
    epoch, which group's count)."""
    found = []
    for path in sorted((home / "audit-journal").glob("*.journal")):
        buf = path.read_bytes()
        for bank in (0, 1):
            epoch, groups = aj.read_bank(buf, bank)
            found.append((path.name[:8], bank, epoch, [(g.operation, g.outcome[:12], g.count, g.first, g.last) for g in groups]))
    return found


@pytest.fixture
def aes_home(home):
    with Kms(home) as kms:
        kms.create_key("app/aes")
    return home


def test_kill_9_under_load_loses_no_record(tmp_path, aes_home):
    for _ in range(3):
        loader = Loader(tmp_path, aes_home)
        start = loader.returned()
        loader.wait_for(lambda: loader.returned() >= start + 20_000 and loader.merged_since(1))
        returned = loader.kill()
        got = recorded(aes_home, loader.pid)
        # every returned result has its record; at most one in-flight call per thread
        # was counted without returning
        assert returned <= got <= returned + THREADS, (returned, got, recorded.last)
    assert not list((aes_home / "audit-journal").glob("*.journal")), "merged journals are removed"


def test_kill_9_while_another_process_holds_the_write_lock(tmp_path, aes_home):
    loader = Loader(tmp_path, aes_home)
    blocker = sqlite3.connect(aes_home / "keys.db", timeout=60, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # no one else can write the store now
    try:
        first = loader.returned()
        attempts = loader.merges()[0]
        # the child keeps returning results although none of its merges can commit
        loader.wait_for(lambda: loader.returned() >= first + 50_000 and loader.merged_since(attempts))
        returned = loader.kill()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    got = recorded(aes_home, loader.pid)
    assert returned <= got <= returned + THREADS, (returned, got, recorded.last)


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> None:
    """Take every free block of the file system that holds `path`."""
    with open(path, "wb", buffering=0) as f:
        chunk = bytes(1 << 16)
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass


def test_full_disk_keeps_every_record_and_retries(tmp_path, small_fs):
    home = small_fs / "home"
    with Kms(home) as kms:
        kms.create_key("app/aes")
    loader = Loader(tmp_path, home)
    loader.wait_for(lambda: loader.merged_since(0))
    filler = small_fs / "filler"
    fill(filler)
    attempts, failures = loader.merges()
    first = loader.returned()
    loader.wait_for(lambda: loader.returned() > first + 10_000 and loader.merged_since(attempts, failures, 2))
    merges = loader.merges()
    returned = loader.kill()  # its merges failed: the disk is full
    filler.unlink()
    banks = journal_banks(home)
    got = recorded(home, loader.pid)
    assert returned <= got <= returned + THREADS, (returned, got, first, (attempts, failures), merges, banks, recorded.last)


def test_a_full_journal_fails_closed_and_keeps_what_it_took(home):
    """With the store unwritable, distinct records fill the journal's two banks; then an
    operation that needs a new record is refused (no result), and everything taken is
    merged once the store can be written again."""
    with Kms(home) as kms:
        kms.create_key("app/aes")
        blocker = sqlite3.connect(home / "keys.db", timeout=60, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        refused_at = None
        try:
            for i in range(2000):
                try:
                    kms.encrypt_data(f"app/missing-{i}", b"x")
                except AuditError:
                    refused_at = i
                    break
                except Exception:
                    pass  # NotFound, recorded as denied
            assert refused_at is not None, "the journal never filled up"
            with pytest.raises(AuditError, match="refusing operations"):
                kms.gen_random(16)  # a new record that cannot be kept: no random bytes
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        kms.flush_audit()
        denied = [r for r in kms.audit_records() if r["operation"] == "Encrypt" and r["outcome"].startswith("denied")]
        assert len(denied) == refused_at
        assert not any(r["operation"] == "GenerateRandom" for r in kms.audit_records())
        assert kms.verify_audit().ok


def test_journal_holds_no_plaintext_and_is_private(home):
    secret = b"journal-must-not-hold-this-plaintext"
    with Kms(home) as kms:
        kms.create_key("app/aes")
        kms.encrypt_data("app/aes", secret)
        journal = next((home / "audit-journal").glob("*.journal"))
        assert journal.stat().st_mode & 0o077 == 0
        assert (home / "audit-journal").stat().st_mode & 0o077 == 0
        assert secret not in journal.read_bytes()


def test_no_room_for_a_journal_refuses_the_operation(small_fs):
    """A process that cannot reserve its journal (disk full) returns no result at all."""
    home = small_fs / "home"
    with Kms(home) as kms:
        kms.create_key("app/aes")
    with Kms(home) as kms:
        fill(small_fs / "filler")
        with pytest.raises(AuditError, match="audit journal"):
            kms.encrypt_data("app/aes", b"no record, no ciphertext")
        (small_fs / "filler").unlink()
        assert kms.encrypt_data("app/aes", b"now there is room")
        kms.flush_audit()
        outcomes = [r["outcome"] for r in kms.audit_records() if r["operation"] == "Encrypt"]
        assert outcomes == ["ok"]
