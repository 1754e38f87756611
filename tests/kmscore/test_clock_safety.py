"""A wrong clock must not destroy a key for good (issue 15 item 10).

A process whose clock was 8 days ahead destroyed a key scheduled for deletion in 7
days. Now the deadline must be seen twice, a day apart (`rules.deletion_step`), and a
process whose clock has not reached the deadline clears an early sighting. Real `kms`
processes under libfaketime, and the facade's `clock` seam for the table itself.
"""

from __future__ import annotations

import json
import shutil

import pytest

from kmscore import Kms, NotFound, rules

FAKETIME = shutil.which("faketime")
DAY = 86400.0


def kms_at(kh, home, days: float, *args: str):
    import subprocess

    return subprocess.run(
        [FAKETIME, "-f", f"+{days}d", kh.KMS_BIN, "--home", str(home), *args],
        capture_output=True, env=kh.clean_env({"FAKETIME_DONT_FAKE_MONOTONIC": "1"}), timeout=120,
        input=b"",
    )


@pytest.mark.skipif(FAKETIME is None, reason="faketime (libfaketime) is needed: setup.sh installs it")
def test_process_eight_days_ahead_does_not_destroy_a_key_due_in_seven(home, run_kms, kh):
    created = json.loads(run_kms("create-key", "--alias", "app/doomed", "--json").stdout)
    blob = run_kms("encrypt-data", "app/doomed", input=b"still needed").stdout
    (home / "blob").write_bytes(blob)
    assert run_kms("schedule-key-deletion", "app/doomed", "--pending-days", "7").returncode == 0
    # a process with its clock 8 days ahead opens the store (maintenance runs on open) ...
    wrong = kms_at(kh, home, 8, "list-keys", "--json")
    assert wrong.returncode == 0, wrong.stderr
    assert [k["state"] for k in json.loads(wrong.stdout)] == ["PendingDeletion"]
    # ... and again a while later (its clock still 8 days ahead, now 8.5): not destroyed
    assert kms_at(kh, home, 8.5, "list-keys").returncode == 0
    # a process with the right clock sees the early sighting, clears it, and the key
    # can still be saved
    records = json.loads(run_kms("audit", "list", "--json").stdout)
    assert any(r["operation"] == "KeyDeletionDue" for r in records)
    assert any(r["operation"] == "KeyDeletionDueCleared" for r in json.loads(run_kms("audit", "list", "--json").stdout))
    assert run_kms("cancel-key-deletion", "app/doomed").returncode == 0
    assert run_kms("enable-key", "app/doomed").returncode == 0
    out = run_kms("decrypt-data", "--in", str(home / "blob"))
    assert out.returncode == 0 and out.stdout == b"still needed", out
    assert json.loads(run_kms("describe-key", created["key_id"], "--json").stdout)["state"] == "Enabled"


@pytest.mark.skipif(FAKETIME is None, reason="faketime (libfaketime) is needed: setup.sh installs it")
def test_right_clock_destroys_after_the_deadline_seen_twice(home, run_kms, kh):
    run_kms("create-key", "--alias", "app/gone")
    run_kms("schedule-key-deletion", "app/gone", "--pending-days", "7")
    assert kms_at(kh, home, 7.01, "list-keys").returncode == 0  # first sighting: kept
    assert json.loads(kms_at(kh, home, 7.5, "list-keys", "--json").stdout)[0]["state"] == "PendingDeletion"
    assert json.loads(kms_at(kh, home, 8.1, "list-keys", "--json").stdout) == []  # a day later: gone


def test_deletion_table():
    date = 1000 * DAY
    step = rules.deletion_step
    assert step(date, None, date - 1) is None
    assert step(date, None, date) == "KeyDeletionDue"
    assert step(date, date, date + DAY - 1) is None
    assert step(date, date, date + DAY) == "DestroyKey"
    assert step(date, date + 5 * DAY, date - 1) == "KeyDeletionDueCleared"  # a clock ahead marked it
    assert step(date, date + 5 * DAY, date + DAY) == "KeyDeletionDue"  # a mark from the future: again


def test_clock_ahead_and_right_clock_alternating_never_destroy(home, clock):
    """Through the clock seam: while a right clock keeps running, a clock 8 days ahead
    never gets its day of agreement."""
    with Kms(home, clock=clock) as kms:
        kms.create_key("app/db")
        kms.schedule_key_deletion("app/db", 7)
    right = clock
    for hour in range(0, 48, 6):
        wrong = lambda: right() + 8 * DAY  # noqa: E731
        with Kms(home, clock=wrong) as bad:
            bad.maintain()
        with Kms(home, clock=right) as good:
            good.maintain()
            assert good.describe_key("app/db").state.value == "PendingDeletion"
        right.advance(seconds=6 * 3600)
    with Kms(home, clock=right) as good:  # two days of a wrong clock later: still savable
        assert good.cancel_key_deletion("app/db").state.value == "Disabled"
    # and the right clock alone, a day after its own sighting, does destroy
    with Kms(home, clock=right) as good:
        good.schedule_key_deletion("app/db", 7)
    right.advance(days=7)
    with Kms(home, clock=right):
        pass
    right.advance(days=1)
    with Kms(home, clock=right) as good, pytest.raises(NotFound):
        good.describe_key("app/db")
