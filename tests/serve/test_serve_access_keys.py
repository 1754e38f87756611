"""`kms access-key`: create, list, show, disable, enable, rotate, set-policy, delete
against a running server (each change holds at the server's next request), secrets shown
once and never again, policies validated with clear errors, and a store of access keys
that refuses rows rolled back, deleted or moved outside keyhold."""

from __future__ import annotations

import json
import shutil
import sqlite3

import botocore.exceptions
import pytest

from tests.serve.conftest import AccessKey, kms, start_server


def ok(module_server, *args: str) -> str:
    out = kms(module_server.home, "access-key", *args)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode()


def works(module_server, key: AccessKey) -> bool:
    try:
        module_server.boto3(key).generate_random(NumberOfBytes=4)
        return True
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] == "UnrecognizedClientException"
        return False


def test_lifecycle_reaches_the_running_server(module_server):
    key = module_server.access_key(name="app1")
    assert works(module_server, key)
    listed = ok(module_server, "list")
    assert key.access_key_id in listed and "app1" in listed and key.secret not in listed
    shown = ok(module_server, "show", "app1")
    assert "allow * on *" in shown and key.secret not in shown

    assert "disabled (its requests are refused" in ok(module_server, "disable", "app1")
    assert not works(module_server, key)
    ok(module_server, "enable", key.access_key_id)
    assert works(module_server, key)

    rotated = json.loads(ok(module_server, "rotate", "app1", "--json"))
    new = AccessKey(key.access_key_id, rotated["secret"])
    assert new.secret != key.secret
    assert not works(module_server, key) and works(module_server, new)

    ok(module_server, "delete", "app1")
    assert not works(module_server, new)
    assert key.access_key_id not in ok(module_server, "list")
    gone = kms(module_server.home, "access-key", "show", "app1")
    assert gone.returncode == 3 and b"no access key 'app1'" in gone.stderr


def test_changes_are_audited_without_secrets(module_server):
    key = module_server.access_key(name="audited")
    ok(module_server, "rotate", "audited")
    out = kms(module_server.home, "audit", "list", "--all", "--json")
    records = [r for r in json.loads(out.stdout) if r["operation"] == "AccessKeyChange"]
    changes = {r["outcome"].split()[1] for r in records if key.access_key_id in r["outcome"]}
    assert changes == {"create", "rotate"}
    assert all(r["outcome"].rpartition(", generation ")[2].isdigit() and r["caller"] == "kms access-key" for r in records)
    assert key.secret not in out.stdout.decode()


def test_names_are_checked_and_a_shared_name_needs_the_id(module_server):
    a = module_server.access_key(name="twice")
    b = module_server.access_key(name="twice")
    out = kms(module_server.home, "access-key", "disable", "twice")
    assert out.returncode == 2 and b"2 access keys are named 'twice': name one by its id" in out.stderr
    ok(module_server, "disable", a.access_key_id)
    assert not works(module_server, a) and works(module_server, b)
    policy = module_server.home.parent / "p.toml"
    policy.write_text('[[allow]]\noperations = ["*"]\nkeys = ["*"]\n')
    bad = kms(module_server.home, "access-key", "create", "--name", "no spaces", "--policy", str(policy))
    assert bad.returncode == 2 and b"access key name" in bad.stderr


@pytest.mark.parametrize("text, message", [
    ('[[allow]]\noperations = ["encrypt"]\nkeys = ["*"]\n', "allow[0].operations: unknown operation(s) encrypt; known: "),
    ('[[allow]]\noperations = ["encrypt_data"]\n', "allow[0].keys: Field required"),
    ('[[allow]]\noperations = ["encrypt_data"]\nkeys = ["*"]\nkey = "x"\n', "allow[0].key: unknown field"),
    ('[[allow]]\noperations = ["encrypt_data"]\nkeys = ["alias/app/db"]\n', "without 'alias/' ('app/db')"),
    ('[[allow]]\noperations = ["encrypt_data"]\nkeys = ["app*"]\n', "the only wildcards are"),
    ("[[allow]\n", "not valid TOML or JSON"),
    ("", "allow: Field required"),
    ('{"allow": [{"operations": [], "keys": ["*"]}]}', "allow[0].operations: must not be empty"),
])
def test_a_bad_policy_is_refused_with_a_clear_error(tmp_path, text, message):
    from kmsserve.auth.policy import Policy, PolicyError

    with pytest.raises(PolicyError) as e:
        Policy.parse(text, "bad.toml")
    assert str(e.value).startswith("bad.toml: ") and message in str(e.value)


def test_the_cli_refuses_a_bad_policy_in_one_line_per_problem(module_server, tmp_path):
    policy = tmp_path / "bad.toml"
    policy.write_text('[[allow]]\noperations = ["encrypt"]\nkeys = ["alias/x"]\n')
    for args in (["create", "--name", "bad", "--policy", str(policy)], ["check-policy", str(policy)]):
        out = kms(module_server.home, "access-key", *args)
        err = out.stderr.decode()
        assert out.returncode == 2 and "Traceback" not in err, err
        assert err.splitlines() == [
            f"kms: error: {policy}: allow[0].operations: unknown operation(s) encrypt; known: " + err.split("known: ")[1].splitlines()[0],
            f"kms: error: {policy}: allow[0].keys: 'alias/x': name keys as keyhold does, without 'alias/' ('x')",
        ]
    assert "bad" not in ok(module_server, "list").split()


def test_a_row_rolled_back_outside_keyhold_is_refused(module_server, tmp_path):
    """Copy the file while a key is enabled, disable it, then put the old (validly sealed)
    row back: the set no longer matches its head, so the server refuses every key and
    `list` says why; restoring the current file brings everything back."""
    victim = module_server.access_key(name="rolled")
    other = module_server.access_key(name="bystander")
    db = module_server.home / "access-keys.db"
    with sqlite3.connect(db) as c:
        old_row = c.execute("SELECT sealed FROM access_keys WHERE id = ?", (victim.access_key_id,)).fetchone()[0]
    ok(module_server, "disable", "rolled")
    assert not works(module_server, victim)
    backup = tmp_path / "now.db"
    with sqlite3.connect(db) as c:
        c.execute("VACUUM INTO ?", (str(backup),))
        c.execute("UPDATE access_keys SET sealed = ? WHERE id = ?", (old_row, victim.access_key_id))
    assert not works(module_server, victim) and not works(module_server, other)
    listed = kms(module_server.home, "access-key", "list")
    assert listed.returncode == 8 and b"do not match their head" in listed.stderr
    with sqlite3.connect(db) as c, sqlite3.connect(backup) as b:
        row = b.execute("SELECT sealed FROM access_keys WHERE id = ?", (victim.access_key_id,)).fetchone()[0]
        c.execute("UPDATE access_keys SET sealed = ? WHERE id = ?", (row, victim.access_key_id))
    assert works(module_server, other) and not works(module_server, victim)


def test_a_row_moved_to_another_id_is_refused(module_server):
    a = module_server.access_key(name="mover-a")
    b = module_server.access_key(name="mover-b")
    db = module_server.home / "access-keys.db"
    with sqlite3.connect(db) as c:
        sealed_a = c.execute("SELECT sealed FROM access_keys WHERE id = ?", (a.access_key_id,)).fetchone()[0]
        sealed_b = c.execute("SELECT sealed FROM access_keys WHERE id = ?", (b.access_key_id,)).fetchone()[0]
        c.execute("UPDATE access_keys SET sealed = ? WHERE id = ?", (sealed_a, b.access_key_id))
    assert not works(module_server, b) and not works(module_server, a)
    with sqlite3.connect(db) as c:
        c.execute("UPDATE access_keys SET sealed = ? WHERE id = ?", (sealed_b, b.access_key_id))
    assert works(module_server, a) and works(module_server, b)


def test_the_file_is_private(module_server):
    module_server.access_key(name="private")
    assert (module_server.home / "access-keys.db").stat().st_mode & 0o077 == 0


def test_a_whole_file_put_back_is_refused_until_reanchored(tmp_path):
    """Every change is in the anchored audit log with the head's generation, so a whole
    older copy of access-keys.db (here: one that still holds a deleted key) is refused
    whole; `kms access-key reanchor` accepts it after a deliberate restore."""
    home = tmp_path / "home"
    with start_server(home) as s:
        key = s.access_key(name="comeback")
        copy = tmp_path / "copy.db"
        with sqlite3.connect(home / "access-keys.db") as c:
            c.execute("VACUUM INTO ?", (str(copy),))
        ok(s, "delete", "comeback")
        assert not works(s, key)
    for suffix in ("-wal", "-shm"):
        (home / f"access-keys.db{suffix}").unlink(missing_ok=True)
    shutil.copy(copy, home / "access-keys.db")
    with start_server(home) as s:
        assert not works(s, key)
        listed = kms(home, "access-key", "list")
        assert listed.returncode == 8 and b"is older than the audit log says (generation 1, the audit log has seen 2)" in listed.stderr
        assert "accepted access-keys.db as it is: 1 access key" in ok(s, "reanchor")
        assert works(s, key)
        assert "comeback" in ok(s, "list")
        ok(s, "delete", "comeback")  # and it goes on from there
        assert not works(s, key)
