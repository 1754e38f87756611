"""fsmount.names (the sans-IO name codec of format 2), and an independent decoder written
from docs/formats/fsmount.md ("Format version 2") that reads the document's vectors and
the frozen v2 sample without importing fsmount."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from kmscore import Kms

from fsmount import names

# -- the vectors of docs/formats/fsmount.md ------------------------------------------------
KEY = bytes(range(64))
IV = bytes(range(16, 32))
VECTORS = {  # plaintext name -> backing name, under KEY and IV
    "hello.txt": "GbYg8jiFixP0NgLt-OtZmEVHtTj_SCPGbrSdSEjCoPo",
    "x" * 160: "keyhold.longname.ug0VTnfkgSMslGmCauQhn_VY_FSiQMGT51qhjR7XMZM",
}
LONG_FULL = (
    "-RDnK5pD4BOV1hqPMR5Oj_xpprgrPPD6r3LSvxGmtln_9_mOimqVxrDytYuKpdPrGrcVXAooz7EHHtm8dJUe-YaRXl7icxHl65KIM4aXvemoOac"
    "m2n3WXV65S8zy2itLFmqpB6eMjEKXDSlNmdS2eAmHO8uEbCMxVaX9VOSYJ12EuKboEwfWhS8maEVLjekY76U6RpTsRYrhhLVSo-Fi3s-1mEav6d"
    "y_gaM6-uCs5MzedfPWMQbfZKTSZMxREKGa"
)
DETERMINISTIC_HELLO = "_JjkBkVIR0rDHFFckIHU3H08I0wuuKb6mDC1SklXwXs"  # zero IV
TARGET = ("../hello.txt", bytes(range(32, 48)), "ICEiIyQlJicoKSorLC0uL1VyfuNti-O_EWCU4zCgZKx7iMjWELNIiOSKxhU")
XATTR = ("user.note", "user.y79t6IZH0bm9NFBsS31wFTG3_tksRHZOY-agQtnR9pk")


# -- the independent decoder: only what the document says ----------------------------------
def doc_b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def doc_unpad(data: bytes) -> bytes:
    return data[: -data[-1]]


def doc_name(key: bytes, iv: bytes, encoded: str) -> str:
    return doc_unpad(AESSIV(key).decrypt(doc_b64(encoded), [b"keyhold-fsmount name v2", iv])).decode()


def doc_target(key: bytes, stored: str) -> str:
    raw = doc_b64(stored)
    return AESSIV(key).decrypt(raw[16:], [b"keyhold-fsmount symlink v2", raw[:16]]).decode()


def doc_xattr(key: bytes, stored: str) -> str:
    return "user." + doc_unpad(AESSIV(key).decrypt(doc_b64(stored[5:]), [b"keyhold-fsmount xattr v2"])).decode()


def doc_long_name(full: str) -> str:
    return "keyhold.longname." + base64.urlsafe_b64encode(hashlib.sha256(full.encode()).digest()).rstrip(b"=").decode()


def test_the_document_decoder_reads_the_vectors():
    assert doc_name(KEY, IV, VECTORS["hello.txt"]) == "hello.txt"
    assert doc_long_name(LONG_FULL) == VECTORS["x" * 160]
    assert doc_name(KEY, IV, LONG_FULL) == "x" * 160
    assert doc_name(KEY, bytes(16), DETERMINISTIC_HELLO) == "hello.txt"
    assert doc_target(KEY, TARGET[2]) == TARGET[0]
    assert doc_xattr(KEY, XATTR[1]) == XATTR[0]


def test_the_codec_makes_the_vectors():
    c = names.NameCipher(KEY)
    for plain, backing in VECTORS.items():
        assert c.encrypt(IV, plain).backing == backing
        assert c.decrypt(IV, c.encrypt(IV, plain).full) == plain
    assert c.encrypt(IV, "x" * 160).full == LONG_FULL
    assert c.encrypt(names.ZERO_IV, "hello.txt").backing == DETERMINISTIC_HELLO
    assert c.encrypt_target(TARGET[0], nonce=TARGET[1]) == TARGET[2]
    assert c.encrypt_xattr(XATTR[0]) == XATTR[1]


def test_the_document_decoder_reads_the_frozen_v2_sample(tmp_path):
    """The name key is a KMS data-key blob in the config, context {"keyhold:fsmount-names": dir_id}."""
    import json

    sample = Path(__file__).parent / "data" / "v2"
    shutil.copytree(sample / "home", tmp_path / "home")
    (tmp_path / "home" / "root.key").chmod(0o600)
    cipher = sample / "cipher"
    conf = json.loads((cipher / "keyhold-fsmount.conf").read_text())
    assert (conf["version"], conf["names"]) == (2, "encrypted")
    with Kms(tmp_path / "home", caller="test") as kms:
        key = kms.decrypt_datakey(base64.b64decode(conf["name_key"]), {"keyhold:fsmount-names": conf["dir_id"]})
    seen = {}

    def walk(bdir: Path, plain: str) -> None:
        iv = (bdir / "keyhold.diriv").read_bytes()
        for entry in bdir.iterdir():
            name = entry.name
            if name.startswith("keyhold.longname.") and not name.endswith(".name"):
                full = (bdir / (name + ".name")).read_text()
                assert doc_long_name(full) == name
                name = full
            elif name.startswith(("keyhold", ".keyhold")):
                continue
            path = f"{plain}/{doc_name(key, iv, name)}"
            seen[path] = entry
            if entry.is_symlink():
                seen[path + " ->"] = doc_target(key, os.readlink(entry))
            elif entry.is_dir():
                walk(entry, path)

    walk(cipher, "")
    assert seen["/sub/link ->"] == "../hello.txt"
    assert {p for p in seen if not p.endswith("->")} == {
        "/hello.txt", "/empty", "/same", "/same/hello.txt", "/sub", "/sub/frames.bin", "/sub/deeper",
        "/sub/deeper/hardlink", "/sub/link", "/sub/" + "L" * 200 + "-long name",
    }


# -- properties --------------------------------------------------------------------------
def test_names_round_trip_at_every_length_and_hide_the_exact_length():
    c = names.NameCipher(os.urandom(64))
    iv = os.urandom(16)
    for n in range(1, 256):
        plain = "a" * n
        enc = c.encrypt(iv, plain)
        assert c.decrypt(iv, enc.full) == plain
        assert len(enc.backing) <= 255 and enc.long == (n >= 160)
        if enc.long:
            assert enc.backing == names.long_name(enc.full) and names.is_long(enc.backing)
    assert len(c.encrypt(iv, "a").full) == len(c.encrypt(iv, "a" * 15).full)  # padded to 16


def test_a_name_is_bound_to_its_directory_and_authenticated():
    c = names.NameCipher(os.urandom(64))
    a, b = os.urandom(16), os.urandom(16)
    enc = c.encrypt(a, "same").full
    assert c.encrypt(b, "same").full != enc
    with pytest.raises(names.BadName):
        c.decrypt(b, enc)  # moved to another directory
    flipped = enc[:5] + ("A" if enc[5] != "A" else "B") + enc[6:]
    with pytest.raises(names.BadName):
        c.decrypt(a, flipped)
    with pytest.raises(names.BadName):
        names.NameCipher(os.urandom(64)).decrypt(a, enc)  # another tree's key


@pytest.mark.parametrize("bad", ["", "a=", "abc=", "a", "!!!!", "a" * 5, "keyhold.diriv"])
def test_malformed_backing_names_are_refused(bad):
    with pytest.raises(names.BadName):
        names.NameCipher(bytes(64)).decrypt(bytes(16), bad)


def test_non_canonical_base64_is_refused():
    c = names.NameCipher(KEY)
    good = VECTORS["hello.txt"]  # 43 chars: the last one carries 2 unused bits
    raw = names.b64decode(good)
    twin = next(good[:-1] + ch for ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                if ch != good[-1] and doc_b64(good[:-1] + ch) == raw)
    with pytest.raises(names.BadName):
        c.decrypt(IV, twin)  # a second spelling of the same bytes


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\0b", "x" * 256])
def test_what_is_not_a_name_is_not_encrypted(bad):
    with pytest.raises(names.BadName):
        names.NameCipher(bytes(64)).encrypt(bytes(16), bad)


def test_symlink_targets_differ_unless_deterministic():
    key = os.urandom(64)
    random, fixed = names.NameCipher(key), names.NameCipher(key, deterministic=True)
    assert random.encrypt_target("t") != random.encrypt_target("t")
    assert fixed.encrypt_target("t") == fixed.encrypt_target("t")
    assert random.decrypt_target(random.encrypt_target("ü/" * 100)) == "ü/" * 100
    assert len(random.encrypt_target("x" * 3039)) <= 4095 < len(random.encrypt_target("x" * 3040))
    stored = random.encrypt_target("x" * 4095)
    assert names.is_long_target(names.long_target(stored)) and len(names.long_target(stored)) < 100


def test_undecodable_bytes_in_names_survive():
    c = names.NameCipher(os.urandom(64))
    odd = os.fsdecode(b"caf\xe9")  # not UTF-8: surrogateescape
    assert c.decrypt(IV, c.encrypt(IV, odd).full) == odd
