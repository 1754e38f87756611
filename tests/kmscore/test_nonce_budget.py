"""Nonce budget (issue 15 item 15): random 96-bit GCM nonces are counted per CMK version
in the store (all processes add to one count), a KMS key rotates at 2^31 and a version
refuses to encrypt past 2^32 (NIST SP 800-38D); envelope DEKs count their frames."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kmscore import InvalidRequest, KeyUnavailable, Kms, nonces
from kmscore.dkcache import ReusePolicy
from kmscore.envelope.format import Header
from kmscore.envelope.frames import FrameCipher

COUNTER = r"""
import sys
from kmscore import Kms
with Kms(sys.argv[1]) as kms:
    for _ in range(int(sys.argv[2])):
        kms.encrypt_data("app/n", b"x")
    kms.create_datakey("app/n")
    kms.encrypt_datakey("app/n", bytes(32))
"""


def uses(kh, home, alias: str) -> dict[str, int]:
    (text,) = kh.sqlite_rows(home, "SELECT nonce_uses FROM keys WHERE alias=?", (alias,))[0]
    return json.loads(text)


def test_every_process_adds_to_one_count_and_never_undercounts(home, kh):
    with Kms(home) as kms:
        kms.create_key("app/n")
    procs = [subprocess.Popen([sys.executable, "-c", COUNTER, str(home), str(n)], env=kh.clean_env())
             for n in (3000, 1000)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    killed = subprocess.Popen([sys.executable, "-c", COUNTER, str(home), "100000000"], env=kh.clean_env())
    try:
        killed.wait(timeout=3)
    except subprocess.TimeoutExpired:
        killed.kill()  # SIGKILL mid-way: its unused tickets stay counted (the safe side)
        killed.wait()
    counted = uses(kh, home, "app/n")["1"]
    assert counted >= 3000 + 1000 + 4  # every seal is covered by a reservation
    # a short-lived process reserves little: thousands of CLI calls cannot spend the budget
    assert counted < 3000 + 1000 + 4 + 3 * nonces.MAX_BLOCK * 2


def test_kms_key_rotates_at_half_the_budget(kms):
    key = kms.create_key("app/n").key_id
    old = kms.encrypt_data("app/n", b"before")
    kms._reserve_nonces(key, 1, nonces.ROTATE_AT - 1000)  # as if 2^31 encryptions were made
    for _ in range(3000):
        kms.encrypt_data("app/n", b"x")
    meta = kms.describe_key("app/n")
    assert meta.current_version == 2
    assert kms.decrypt_data(old) == b"before"
    assert any(r["operation"] == "AutoRotateKey" and "nonce" in r["outcome"] for r in kms.audit_records())
    blob = kms.encrypt_data("app/n", b"after")
    assert blob[:200] != old[:200] and kms.decrypt_data(blob) == b"after"


def test_imported_key_refuses_past_the_bound_and_keeps_decrypting(home, kms, kh, run_kms):
    kms.create_key("ext/n", origin="EXTERNAL")
    kh.import_material(kms, "ext/n", kh.material_for("AES_256"))
    blob = kms.encrypt_data("ext/n", b"old data")
    key = kms.describe_key("ext/n").key_id
    kms._reserve_nonces(key, 1, nonces.LIMIT - nonces.FIRST_BLOCK - 10)  # 10 left
    with pytest.raises(KeyUnavailable, match="2\\^32"):
        for _ in range(nonces.FIRST_BLOCK + 1):
            kms.encrypt_data("ext/n", b"x")
    with pytest.raises(KeyUnavailable):
        kms.create_datakey("ext/n")
    assert kms.decrypt_data(blob) == b"old data"
    kms.close()
    kh.assert_refused(run_kms("encrypt-data", "ext/n", input=b"x"), "2^32")  # another process too
    (home / "blob").write_bytes(blob)
    assert run_kms("decrypt-data", "--in", str(home / "blob")).stdout == b"old data"


def test_count_survives_reimport_of_the_same_material(kms, kh):
    material = kh.material_for("AES_256")
    kms.create_key("ext/r", origin="EXTERNAL")
    kh.import_material(kms, "ext/r", material)
    key = kms.describe_key("ext/r").key_id
    kms._reserve_nonces(key, 1, 12345)
    kms.delete_imported_key_material("ext/r")
    kh.import_material(kms, "ext/r", material)
    assert json.loads(kms._store.key_by_id(key)["nonce_uses"])["1"] >= 12345


def test_frame_cipher_refuses_past_the_bound():
    header = Header(1, 0, 4096, bytes(16), b"w")
    cipher = FrameCipher(bytes(32), header)
    cipher._limit = 5  # the bound is 2^32; the counting is what is tested
    for i in range(5):
        cipher.seal(i, b"x" * 4096, False)
    with pytest.raises(KeyUnavailable, match="new data key"):
        cipher.seal(5, b"x", True)


def test_reuse_policy_cannot_exceed_the_bound():
    ReusePolicy()  # the defaults fit
    with pytest.raises(InvalidRequest, match="2\\^32"):
        ReusePolicy(max_messages=2**20, max_bytes=2**45)
