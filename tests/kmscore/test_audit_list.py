"""`kms audit list` (issue 11 item 11): filters by key, operation, outcome and time; aliases
shown; --limit checked; only the records asked for are read. Real `kms` processes."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def logged(run_kms):
    assert run_kms("create-key", "--alias", "app/a").returncode == 0
    assert run_kms("create-key", "--alias", "app/b").returncode == 0
    for _ in range(3):
        assert run_kms("encrypt-data", "app/a", input=b"x").returncode == 0
    assert run_kms("encrypt-data", "app/b", input=b"y").returncode == 0
    assert run_kms("disable-key", "app/b").returncode == 0
    assert run_kms("encrypt-data", "app/b", input=b"z").returncode != 0  # refused: recorded so
    return run_kms


def listed(run_kms, *args: str) -> list[dict]:
    done = run_kms("audit", "list", "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_filters_by_key_alias_operation_and_outcome(logged):
    mine = listed(logged, "--key", "app/a", "--all")
    assert mine and {r["alias"] for r in mine} == {"app/a"}
    assert sum(r["count"] for r in mine if r["operation"] == "Encrypt") == 3
    disabled = listed(logged, "--operation", "DisableKey")
    assert [r["alias"] for r in disabled] == ["app/b"]
    refused = listed(logged, "--key", "app/b", "--operation", "Encrypt")
    assert {r["outcome"] for r in refused} >= {"ok"} and any(r["outcome"] != "ok" for r in refused), refused
    only_ok = listed(logged, "--key", "app/b", "--operation", "Encrypt", "--outcome", "ok")
    assert only_ok and all(r["outcome"] == "ok" for r in only_ok)


def test_text_output_names_keys_by_alias(logged):
    out = logged("audit", "list", "--operation", "DisableKey").stdout.decode()
    assert "app/b" in out and "DisableKey" in out


def test_limit_is_the_newest_n_and_must_be_positive(logged):
    newest = listed(logged, "--limit", "2")
    everything = listed(logged, "--all")
    assert [r["seq"] for r in newest] == [r["seq"] for r in everything[-2:]]
    for bad in ("0", "-3", "x"):
        done = logged("audit", "list", "--limit", bad)
        assert done.returncode != 0 and b"positive whole number" in done.stderr, done.stderr


def test_since_takes_an_age_or_an_iso_time(logged):
    assert listed(logged, "--since", "1h", "--all")  # everything just happened
    assert listed(logged, "--since", "2999-01-01T00:00:00Z") == []
    done = logged("audit", "list", "--since", "yesterday")
    assert done.returncode != 0 and b"not a time" in done.stderr


def test_reading_the_log_writes_nothing_to_it(logged):
    """A listing is no key operation: it records no ListKeys (the aliases) nor DescribeKey
    (--key), and --key of a default key not made yet does not make it. The reader holds
    the store and its root key already, so a record of the read would guard nothing;
    a read that writes would shift what the next read shows and fail on a full disk."""
    before = listed(logged, "--all")
    for args in ((), ("--key", "app/a"), ("--key", before[0]["key_id"]), ("--key", "fsmount/default"),
                 ("--operation", "Encrypt", "--limit", "1")):
        listed(logged, *args)
    assert logged("audit", "list").returncode == 0  # the text output too
    assert listed(logged, "--all") == before
