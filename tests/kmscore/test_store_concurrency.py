"""Several real processes on one store at once: no corruption, no lost write, the audit
chain still verifies; a key disabled in one process stops working in another quickly."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time

import pytest

from kmscore import KeyUnavailable, Kms

WORKERS = 4
KEYS_PER_WORKER = 5
ROTATIONS = 5

WORKER = r"""
import base64, json, os, sys, time
from kmscore import Kms
home, me, n, rotations, go, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
while not os.path.exists(go):  # start together
    time.sleep(0.005)
blobs = []
with Kms(home, caller=f"worker{me}") as kms:
    blobs.append(base64.b64encode(kms.encrypt_data("fsmount/default", f"default {me}".encode())).decode())
    for j in range(n):
        alias = f"w{me}/k{j}"
        kms.create_key(alias, description=f"worker {me}")
        blobs.append(base64.b64encode(kms.encrypt_data(alias, f"{me}/{j}".encode(), {"w": str(me)})).decode())
        kms.disable_key(alias)
        kms.enable_key(alias)
        kms.update_key_description("shared", f"set by {me}/{j}")
    for r in range(rotations):
        kms.rotate_key("shared")
        blobs.append(base64.b64encode(kms.encrypt_data("shared", f"shared {me}/{r}".encode())).decode())
        kms.create_datakey("shared")
with open(out, "w") as f:
    json.dump(blobs, f)
"""


def test_many_processes_one_store(home, tmp_path, kh):
    with Kms(home) as kms:
        shared = kms.create_key("shared")
    go = tmp_path / "go"
    procs = []
    for me in range(WORKERS):
        out = tmp_path / f"out{me}.json"
        procs.append((me, out, subprocess.Popen(
            [sys.executable, "-c", WORKER, str(home), str(me), str(KEYS_PER_WORKER), str(ROTATIONS), str(go), str(out)],
            stderr=subprocess.PIPE, env=kh.clean_env())))
    time.sleep(0.3)  # let them all get to the start line (not required for correctness)
    go.write_text("go")
    for me, out, proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    with Kms(home) as kms:
        keys = kms.list_keys()
        aliases = sorted(k.alias for k in keys)
        expected = sorted(["shared", "fsmount/default"] + [f"w{m}/k{j}" for m in range(WORKERS) for j in range(KEYS_PER_WORKER)])
        assert aliases == expected  # every key, exactly one default key
        assert all(k.state.value == "Enabled" for k in keys)
        meta = kms.describe_key("shared")
        assert meta.key_id == shared.key_id
        assert meta.current_version == 1 + WORKERS * ROTATIONS  # no rotation lost
        assert meta.description.startswith("set by ")
        for me, out, _ in procs:
            blobs = [base64.b64decode(b) for b in json.loads(out.read_text())]
            assert kms.decrypt_data(blobs[0]) == f"default {me}".encode()
            for j in range(KEYS_PER_WORKER):
                assert kms.decrypt_data(blobs[1 + j], {"w": str(me)}) == f"{me}/{j}".encode()
            for r in range(ROTATIONS):
                assert kms.decrypt_data(blobs[1 + KEYS_PER_WORKER + r]) == f"shared {me}/{r}".encode()
        report = kms.verify_audit()
        assert report.ok, report.problem
        recs = kms.audit_records()
        def total(op, caller=None):
            return sum(r["count"] for r in recs if r["operation"] == op and r["outcome"].startswith("ok")
                       and (caller is None or r["caller"].startswith(caller)))
        assert total("CreateKey") == 1 + 1 + WORKERS * KEYS_PER_WORKER  # shared, default, workers'
        assert total("RotateKey") == WORKERS * ROTATIONS
        assert total("UpdateKeyDescription") == WORKERS * KEYS_PER_WORKER
        for me in range(WORKERS):
            assert total("Encrypt", f"worker{me} ") == 1 + KEYS_PER_WORKER + ROTATIONS
            assert total("CreateDataKey", f"worker{me} ") == ROTATIONS
    rows = kh.sqlite_rows(home, "PRAGMA integrity_check")
    assert rows == [("ok",)]


TOGGLE = r"""
import sys
from kmscore import Kms
with Kms(sys.argv[1]) as kms:
    getattr(kms, sys.argv[2])(sys.argv[3])
"""


def _until(predicate, limit: float = 10.0) -> bool:
    """Poll until predicate() is true or `limit` seconds passed (a bound, not a timing)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_key_disabled_in_another_process_stops_working_here(home, kh):
    with Kms(home) as kms:
        kms.create_key("app/db")
        blob = kms.encrypt_data("app/db", b"x")
        assert kms.decrypt_data(blob) == b"x"  # the key is now cached in this process

        def refused() -> bool:
            try:
                kms.decrypt_data(blob)
                return False
            except KeyUnavailable:
                return True

        subprocess.run([sys.executable, "-c", TOGGLE, str(home), "disable_key", "app/db"], check=True, env=kh.clean_env())
        assert _until(refused), "a key disabled elsewhere kept working here"
        with pytest.raises(KeyUnavailable):
            kms.encrypt_data("app/db", b"y")
        with pytest.raises(KeyUnavailable):
            kms.key_usable("app/db")
        subprocess.run([sys.executable, "-c", TOGGLE, str(home), "enable_key", "app/db"], check=True, env=kh.clean_env())
        assert _until(lambda: not refused()), "a key enabled elsewhere stayed refused here"
        # deletion scheduled elsewhere, through the CLI
        r = kh.kms_cli(home, "schedule-key-deletion", "app/db", "--pending-days", "7")
        assert r.returncode == 0, r.stderr
        assert _until(refused)


def test_concurrent_cli_creates_with_one_alias(home, kh):
    with Kms(home):
        pass
    procs = [subprocess.Popen([kh.KMS_BIN, "--home", str(home), "create-key", "--alias", "app/race"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kh.clean_env()) for _ in range(3)]
    results = [(p.wait(timeout=120), p.stderr.read().decode()) for p in procs]
    assert sorted(code for code, _ in results)[0] == 0
    assert [code for code, _ in results].count(0) == 1, results
    for code, err in results:
        if code:
            assert "already in use" in err and "Traceback" not in err, err
    with Kms(home) as kms:
        assert [k.alias for k in kms.list_keys()] == ["app/race"]
        assert kms.verify_audit().ok


FIRST_USE = r"""
import sys
from kmscore import Kms
with Kms(sys.argv[1]) as kms:
    blob = kms.encrypt_data("fsmount/default", b"x")
    assert kms.decrypt_data(blob) == b"x"
"""


def test_processes_racing_to_create_a_fresh_store(home, kh):
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_USE, str(home)], stderr=subprocess.PIPE,
                              env=kh.clean_env()) for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    with Kms(home) as kms:
        assert [k.alias for k in kms.list_keys()] == ["fsmount/default"]
        report = kms.verify_audit()
        assert report.ok and report.records >= 2, report


ROTATE_AND_ENCRYPT = r"""
import base64, sys
from kmscore import Kms
with Kms(sys.argv[1]) as kms:
    kms.rotate_key("app/db")
    print(base64.b64encode(kms.encrypt_data("app/db", b"after rotation")).decode())
"""


def test_ciphertext_of_a_version_rotated_in_another_process_decrypts_at_once(home, kh):
    with Kms(home) as kms:
        kms.create_key("app/db")
        assert kms.decrypt_data(kms.encrypt_data("app/db", b"v1")) == b"v1"  # version 1 cached here
        out = subprocess.run([sys.executable, "-c", ROTATE_AND_ENCRYPT, str(home)], capture_output=True,
                             check=True, env=kh.clean_env()).stdout
        blob = base64.b64decode(out)
        assert blob[17:21] == (2).to_bytes(4, "big")
        assert kms.decrypt_data(blob) == b"after rotation"


def test_ciphertext_of_a_version_rotated_in_another_process_decrypts_eventually(home, kh):
    with Kms(home) as kms:
        kms.create_key("app/db")
        kms.encrypt_data("app/db", b"v1")
        out = subprocess.run([sys.executable, "-c", ROTATE_AND_ENCRYPT, str(home)], capture_output=True,
                             check=True, env=kh.clean_env()).stdout
        blob = base64.b64decode(out)

        def decrypts() -> bool:
            try:
                return kms.decrypt_data(blob) == b"after rotation"
            except Exception:
                return False

        assert _until(decrypts)
        assert kms.encrypt_data("app/db", b"new")[17:21] == (2).to_bytes(4, "big")  # new encryptions use the newest


ROTATOR = r"""
import os, sys
from kmscore import Kms
with Kms(sys.argv[1]) as kms:
    for _ in range(int(sys.argv[2])):
        kms.rotate_key("raced")
"""


def test_a_row_read_while_another_process_rotates_is_one_snapshot(home, kh):
    """A key row and its versions are read in one read transaction: a rotation committed
    between the two reads must not make an honest row look forged (CI saw this once)."""
    with Kms(home) as kms:
        kms.create_key("raced")
        rotator = subprocess.Popen([sys.executable, "-c", ROTATOR, str(home), "150"],
                                   stderr=subprocess.PIPE, env=kh.clean_env())
        reads = 0
        while rotator.poll() is None:
            kms.describe_key("raced")
            kms.list_keys()
            reads += 1
        _, err = rotator.communicate(timeout=120)
        assert rotator.returncode == 0, err.decode()
        assert kms.describe_key("raced").current_version == 151
    assert reads > 0
