"""The file commands through the real `kms` console script: round trips, reports, and
every refusal as one line, non-zero, with no output file left behind."""

from __future__ import annotations

import json
import os
import struct

import pytest


@pytest.fixture
def files(tmp_path, run_kms):
    run_kms("create-key", "--alias", "app/f")
    return tmp_path


def only(path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != "home")


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 300_000])
def test_round_trip(files, run_kms, size):
    plain = os.urandom(size)
    (files / "p").write_bytes(plain)
    enc = run_kms("encrypt-file", "app/f", str(files / "p"), str(files / "e"), "--json")
    assert enc.returncode == 0, enc.stderr
    report = json.loads(enc.stdout)
    assert report["plaintext_bytes"] == size and report["envelope_bytes"] == (files / "e").stat().st_size
    dec = run_kms("decrypt-file", str(files / "e"), str(files / "d"), "--json")
    assert dec.returncode == 0, dec.stderr
    assert json.loads(dec.stdout)["plaintext_bytes"] == size
    assert (files / "d").read_bytes() == plain
    assert only(files) == ["d", "e", "p"]


def test_stdin_and_stdout(files, run_kms):
    plain = os.urandom(200_000)
    enc = run_kms("encrypt-file", "app/f", "-", "-", "--frame-size", "4096", input=plain)
    assert enc.returncode == 0 and enc.stdout[:4] == b"KHEV"
    dec = run_kms("decrypt-file", "-", "-", input=enc.stdout)
    assert dec.returncode == 0 and dec.stdout == plain


def test_info_shows_the_header_without_decrypting(files, run_kms):
    (files / "p").write_bytes(b"x" * 100_000)
    run_kms("encrypt-file", "app/f", str(files / "p"), str(files / "e"))
    run_kms("disable-key", "app/f")  # info needs no usable key
    out = run_kms("envelope-info", str(files / "e"), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["key_alias"] == "app/f" and info["key_state"] == "Disabled" and info["key_version"] == 1
    assert (info["frame_size"], info["frames"], info["plaintext_bytes"], info["header_bytes"]) == (65536, 2, 100_000, 111)
    text = run_kms("envelope-info", str(files / "e"))
    assert b"plaintext_bytes" in text.stdout and text.returncode == 0


def test_rewrap_after_rotation_and_to_another_key(files, run_kms):
    plain = os.urandom(150_000)
    (files / "p").write_bytes(plain)
    run_kms("encrypt-file", "app/f", str(files / "p"), str(files / "e"))
    frames_before = (files / "e").read_bytes()[111:]
    assert run_kms("rotate-key", "app/f").returncode == 0
    out = run_kms("rewrap-file", str(files / "e"), "--json")
    assert out.returncode == 0, out.stderr
    assert (json.loads(out.stdout)["old_key_version"], json.loads(out.stdout)["key_version"]) == (1, 2)
    assert (files / "e").read_bytes()[111:] == frames_before  # frames untouched
    run_kms("create-key", "--alias", "app/g")
    out = run_kms("rewrap-file", str(files / "e"), "--to-key", "app/g", "--json")
    assert out.returncode == 0, out.stderr
    run_kms("disable-key", "app/f")  # the old CMK is no longer needed
    run_kms("decrypt-file", str(files / "e"), str(files / "d"))
    assert (files / "d").read_bytes() == plain


def sample(files, run_kms, size=200_000) -> bytes:
    (files / "p").write_bytes(os.urandom(size))
    run_kms("encrypt-file", "app/f", str(files / "p"), str(files / "e"))
    return (files / "e").read_bytes()


def flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 1
    return bytes(b)


@pytest.mark.parametrize(
    "make, needles, code",
    [
        (lambda e: b"PK\x03\x04" + e[4:], ["not a keyhold envelope"], 6),
        (lambda e: e[:4] + b"\x07" + e[5:], ["bad: envelope format version 7 is not supported"], 6),
        (lambda e: b"", ["empty"], 6),
        (lambda e: e[:20], ["ends inside its envelope header"], 6),
        (lambda e: e[: len(e) - 100], ["frame 3 failed authentication", "cut short"], 6),
        (lambda e: e[: 111 + 65564 + 10], ["cut short"], 6),
        (lambda e: e[: 111 + 2 * 65564], ["cut short", "not the final frame"], 6),
        (lambda e: flip(e, 111 + 65564 + 500), ["frame 1 failed authentication"], 6),
        (lambda e: e[:111] + e[111 + 65564 : 111 + 2 * 65564] + e[111 : 111 + 65564] + e[111 + 2 * 65564 :], ["frame 0 failed"], 6),
        (lambda e: flip(e, 60), ["failed authentication"], 6),  # the wrapped DEK
        (lambda e: e[:40] + b"\x99" + e[41:], ["no key"], 3),  # a key id that is not here
    ],
    ids=["magic", "version", "empty", "header-cut", "last-frame-cut", "frame-cut", "boundary-cut", "flipped", "swapped",
         "wrapped-dek", "unknown-key"],
)
def test_bad_inputs_are_one_line_and_leave_no_output(files, run_kms, kh, make, needles, code):
    (files / "bad").write_bytes(make(sample(files, run_kms)))
    out = run_kms("decrypt-file", str(files / "bad"), str(files / "out"))
    kh.assert_refused(out, *needles)
    assert out.returncode == code
    assert only(files) == ["bad", "e", "p"]  # no OUT, no temporary file


def test_disabled_key_is_refused(files, run_kms, kh):
    sample(files, run_kms)
    run_kms("disable-key", "app/f")
    out = run_kms("decrypt-file", str(files / "e"), str(files / "out"))
    kh.assert_refused(out, "disabled")
    assert out.returncode == 5 and not (files / "out").exists()
    kh.assert_refused(run_kms("encrypt-file", "app/f", str(files / "p"), str(files / "e2")), "disabled")
    assert not (files / "e2").exists()


def test_other_refusals(files, run_kms, kh):
    sample(files, run_kms)
    kh.assert_refused(run_kms("encrypt-file", "app/none", str(files / "p"), str(files / "x")), "no key")
    kh.assert_refused(run_kms("encrypt-file", "app/f", str(files / "missing"), str(files / "x")), "cannot read")
    kh.assert_refused(run_kms("decrypt-file", str(files / "e"), str(files)), "directory")
    kh.assert_refused(run_kms("decrypt-file", str(files / "e"), str(files / "e"), "--key", "app/nope"), "no key")
    kh.assert_refused(run_kms("envelope-info", str(files / "p")), "not a keyhold envelope")
    kh.assert_refused(run_kms("rewrap-file", str(files / "p")), "not a keyhold envelope")
    bad = run_kms("encrypt-file", "app/f", str(files / "p"), str(files / "x"), "--frame-size", "12")
    assert bad.returncode == 2 and b"frame size" in bad.stderr and b"Traceback" not in bad.stderr
    assert not (files / "x").exists()


def test_a_header_with_a_huge_frame_size_is_refused_before_reading(files, run_kms, kh):
    e = sample(files, run_kms)
    (files / "bad").write_bytes(e[:8] + struct.pack(">I", 2**31) + e[12:])
    kh.assert_refused(run_kms("decrypt-file", str(files / "bad"), str(files / "out")), "frame size")
