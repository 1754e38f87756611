"""Where the audit journal (km-audit) and store integrity (km-integrity) meet.

- a process with two connections to its store (operations, and the audit merger) must
  not drop SQLite's locks when it opens the second one (another process closing its
  last connection would then checkpoint and delete the WAL under it: lost commits);
- nonce reservations made while another process holds the write lock go to the journal,
  reach the key's MAC'd row when it is merged, and the store still verifies;
- journal merges on the merger's own connection go through the head: rows edited behind
  a running process stop its merges.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from kmscore import Kms, nonces
from kmscore.store import DB_NAME, Store

LAST_USER = (
    "import sqlite3, sys\n"
    "db = sqlite3.connect(sys.argv[1])\n"
    "db.execute('SELECT count(*) FROM keys').fetchall()\n"
    "db.close()\n"  # the last connection of all processes checkpoints and deletes the WAL
)


def test_a_second_connection_keeps_the_first_ones_locks(home, kh):
    with Kms(home) as kms:
        kms.create_key("app/a")
        blob = kms.encrypt_data("app/a", b"kept")
        kms.flush_audit()  # the merger's connection is open now
        Store(home / DB_NAME).close()  # and one more, opened and closed
        subprocess.run([sys.executable, "-c", LAST_USER, str(home / DB_NAME)], check=True, env=kh.clean_env())
        assert (home / "keys.db-wal").exists(), "another process thought it was the store's last user"
        kms.create_key("app/b")
        assert kms.decrypt_data(blob) == b"kept"
    with Kms(home) as kms:
        assert {k.alias for k in kms.list_keys()} >= {"app/a", "app/b"}
        assert kms.verify_store() == []


def test_nonce_reservations_under_a_held_write_lock_reach_the_row(home, kh):
    with Kms(home) as kms:
        key = kms.create_key("app/n").key_id
        kms.encrypt_data("app/n", b"warm")
        blocker = sqlite3.connect(home / DB_NAME, timeout=60, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            n = 3 * nonces.FIRST_BLOCK  # needs reservations beyond the first block
            for _ in range(n):
                kms.encrypt_data("app/n", b"x")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        kms.flush_audit()
        (text,) = kh.sqlite_rows(home, "SELECT nonce_uses FROM keys WHERE key_id=?", (key,))[0]
        assert json.loads(text)["1"] >= n + 1  # every seal covered by a reservation in the row
        assert any(r["operation"] == "ReserveNonces" for r in kms.audit_records())
        assert kms.verify_store() == []


def test_merges_on_the_merger_connection_check_the_head(home, kh):
    from kmscore import AuditError, StoreError

    kms = Kms(home, refresh_interval=3600)  # the cache never looks: only the merge can
    try:
        kms.create_key("app/a")
        kms.create_key("app/gone")
        kms.encrypt_data("app/a", b"x")
        kms.flush_audit()
        db = sqlite3.connect(home / DB_NAME)
        db.execute("DELETE FROM keys WHERE alias='app/gone'")
        db.commit()
        db.close()
        kms.encrypt_data("app/a", b"cached key")
        with pytest.raises(AuditError, match="no longer match"):
            kms.flush_audit()
    finally:
        with pytest.raises(StoreError, match="no longer match"):
            kms.close()  # its records are not written over a tampered store


@pytest.mark.parametrize("commit", ["lifecycle change", "nonce reservation"])
def test_no_commit_reseals_the_head_over_a_row_deleted_behind_it(home, commit):
    """Every write first checks the rows against the head: a commit that changes a row
    must not write a new head (and digest) over a row deleted outside keyhold. Fails
    when only the audit append checks (a change's own append skips the check)."""
    from kmscore import StoreError

    kms = Kms(home, refresh_interval=3600)  # the cache's refresh check never runs here
    try:
        kms.create_key("app/a")
        kms.create_key("app/gone")
        kms.encrypt_data("app/a", b"x")
        kms.flush_audit()
        db = sqlite3.connect(home / DB_NAME)
        db.execute("DELETE FROM keys WHERE alias='app/gone'")
        db.commit()
        db.close()
        with pytest.raises(StoreError, match="(no longer|do not) match the (audit )?log head"):
            if commit == "lifecycle change":
                kms.disable_key("app/a")
            else:
                for _ in range(2 * nonces.FIRST_BLOCK):
                    kms.encrypt_data("app/a", b"x")
    finally:
        with pytest.raises(StoreError):
            kms.close()
    with Kms(home, integrity="report") as kms:
        assert any("do not match the log head" in p for p in kms.verify_store())
