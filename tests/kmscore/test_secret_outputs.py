"""Secrets on disk: every plaintext a command writes is a 0600 file that appears whole or
not at all; create-datakey names both of its outputs. Real `kms` processes, real files,
a real SIGKILL half-way through a decryption."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import time

import pytest

from kmscore import Kms


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def aes(home):
    with Kms(home) as kms:
        kms.create_key("app/aes")
        blob = kms.encrypt_data("app/aes", b"the plaintext")
        dk = kms.create_datakey("app/aes")
    return blob, dk


def test_plaintext_outputs_are_private(tmp_path, run_kms, aes):
    blob, dk = aes
    outputs = {
        "decrypt-data": (["decrypt-data"], blob),
        "decrypt-datakey": (["decrypt-datakey"], dk.ciphertext),
        "gen-random": (["gen-random", "32"], b""),
    }
    for name, (args, stdin) in outputs.items():
        out = tmp_path / f"{name}.out"
        r = run_kms(*args, "--out", str(out), input=stdin)
        assert r.returncode == 0, r.stderr
        assert mode(out) == 0o600, (name, oct(mode(out)))
        # an existing, world-readable file is replaced by a private one
        out.chmod(0o644)
        r = run_kms(*args, "--out", str(out), input=stdin)
        assert r.returncode == 0 and mode(out) == 0o600, (name, r.stderr)
    assert (tmp_path / "decrypt-data.out").read_bytes() == b"the plaintext"
    assert (tmp_path / "decrypt-datakey.out").read_bytes() == dk.plaintext
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "no temporary file is left"


def test_create_datakey_names_both_outputs(tmp_path, home, run_kms, aes):
    plain, wrapped = tmp_path / "dek.bin", tmp_path / "dek.blob"
    r = run_kms("create-datakey", "app/aes", "--plaintext-out", str(plain), "--ciphertext-out", str(wrapped), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert "plaintext" not in report and report["plaintext_file"] == str(plain)
    assert mode(plain) == 0o600 and len(plain.read_bytes()) == 32
    assert base64.b64encode(plain.read_bytes()) not in r.stdout + r.stderr
    with Kms(home) as kms:
        assert kms.decrypt_datakey(wrapped.read_bytes()) == plain.read_bytes()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--out", "x.blob"], "--ciphertext-out"),  # the old spelling that hid the plaintext on stdout
        (["--ciphertext-out", "x.blob"], "--plaintext-out"),
        (["--without-plaintext", "--plaintext-out", "x.bin"], "exclude"),
    ],
)
def test_create_datakey_refuses_an_implicit_output(tmp_path, run_kms, aes, kh, args, needle):
    before = set(os.listdir(tmp_path))
    r = run_kms("create-datakey", "app/aes", *[str(tmp_path / a) if a.startswith("x.") else a for a in args])
    kh.assert_refused(r, needle)
    assert r.stdout == b"", "nothing, least of all a data key, is printed"
    assert set(os.listdir(tmp_path)) == before


def test_create_datakey_plaintext_to_stdout_only_when_asked(tmp_path, run_kms, aes):
    wrapped = tmp_path / "dek.blob"
    r = run_kms("create-datakey", "app/aes", "--plaintext-out", "-", "--ciphertext-out", str(wrapped), "--json")
    assert r.returncode == 0, r.stderr
    assert len(base64.b64decode(json.loads(r.stdout)["plaintext"])) == 32
    r = run_kms("create-datakey", "app/aes", "--without-plaintext", "--ciphertext-out", str(wrapped), "--json")
    assert r.returncode == 0 and "plaintext" not in json.loads(r.stdout)


def test_a_killed_decrypt_file_leaves_no_partial_plaintext(tmp_path, home, kh):
    """decrypt-file reads the envelope from a pipe that we stop feeding half-way; once the
    process has written plaintext (its output file descriptor has bytes), kill -9. Half
    is 16 MiB: more than the output buffers of the O_DIRECT writer (filepipe.DIRECT_BLOCK),
    which write nothing before one of them is full."""
    with Kms(home) as kms:
        kms.create_key("app/aes")
    plain = tmp_path / "plain.bin"
    plain.write_bytes(os.urandom(32 << 20))
    envelope = tmp_path / "plain.env"
    r = kh.kms_cli(home, "encrypt-file", "app/aes", str(plain), str(envelope))
    assert r.returncode == 0, r.stderr
    outdir = tmp_path / "out"
    outdir.mkdir()
    proc = subprocess.Popen(
        [kh.KMS_BIN, "--home", str(home), "decrypt-file", "-", str(outdir / "plain.bin")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kh.clean_env(),
    )
    data = envelope.read_bytes()
    proc.stdin.write(data[: len(data) // 2])
    proc.stdin.flush()
    try:
        deadline = time.monotonic() + 60
        while not _has_written_into(proc.pid, outdir):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "decrypt-file wrote nothing of half its input"
            os.sched_yield()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert os.listdir(outdir) == [], "a killed decryption leaves nothing behind"


def _has_written_into(pid: int, folder) -> bool:
    """Whether process `pid` has an open file in `folder` with bytes in it."""
    fds = f"/proc/{pid}/fd"
    try:
        for fd in os.listdir(fds):
            try:
                target = os.readlink(f"{fds}/{fd}")
                if target.startswith(str(folder)) and os.stat(f"{fds}/{fd}").st_size > 0:
                    return True
            except OSError:
                continue
    except OSError:
        pass
    return False
