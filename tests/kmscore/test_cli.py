"""The `kms` console script, each sub-command through a real subprocess: --json reports,
exit codes of verify/verify-mac, one-line refusals without tracebacks, base64 to a
terminal and raw bytes to a pipe."""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import subprocess
import uuid

import pytest

from kmscore import Kms

SUMMARY = ("key_id", "alias", "state", "spec", "usage", "origin")


class Env:
    def __init__(self, kh, home, tmp, kms):
        self.kh, self.home, self.tmp, self.kms = kh, home, tmp, kms

    def __call__(self, *args, input: bytes | None = None, ok: bool = True):
        r = self.kh.kms_cli(self.home, *map(str, args), input=input)
        if ok:
            assert r.returncode == 0, (args, r.stderr.decode())
            assert "Traceback" not in r.stderr.decode()
        return r

    def json(self, *args, input=None):
        return json.loads(self(*args, "--json", input=input).stdout)


@pytest.fixture(scope="module")
def env(tmp_path_factory, kh):
    tmp = tmp_path_factory.mktemp("cli")
    with Kms(tmp / "home") as kms:
        kms.create_key("app/aes")
        kms.create_key("app/ec", "EC_P256")
        kms.create_key("app/mac", "HMAC_256")
        kms.create_key("app/rsa", "RSA_2048", "ENCRYPT_DECRYPT")
        yield Env(kh, tmp / "home", tmp, kms)


def test_help_creates_nothing(tmp_path, kh):
    r = kh.kms_cli(tmp_path / "h", "--help")
    assert r.returncode == 0 and b"create-key" in r.stdout
    assert not (tmp_path / "h").exists()


def test_first_command_with_create_home_creates_the_store_and_says_where(tmp_path, kh):
    r = kh.kms_cli(tmp_path / "fresh", "list-keys")
    assert r.returncode == 0
    assert str(tmp_path / "fresh" / "keys.db") in r.stderr.decode()


def test_home_from_environment(tmp_path, kh):
    subprocess.run([kh.KMS_BIN, "init"], env=kh.clean_env({"KMS_HOME": str(tmp_path / "envhome")}), check=True,
                   capture_output=True, timeout=60)
    r = subprocess.run([kh.KMS_BIN, "create-key", "--alias", "via/env", "--json"], capture_output=True,
                       env=kh.clean_env({"KMS_HOME": str(tmp_path / "envhome")}), timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "envhome" / "keys.db").exists()


def test_lifecycle_commands_report_json(env):
    meta = env.json("create-key", "--alias", "cli/life", "--description", "first", "--rotation-days", "90")
    for field in SUMMARY:
        assert field in meta, field
    assert (meta["alias"], meta["state"], meta["spec"], meta["usage"], meta["origin"]) == (
        "cli/life", "Enabled", "AES_256", "ENCRYPT_DECRYPT", "KMS")
    assert uuid.UUID(meta["key_id"]) and meta["rotation_interval_days"] == 90
    key_id = meta["key_id"]
    assert env.json("describe-key", key_id)["alias"] == "cli/life"
    listed = env.json("list-keys")
    assert isinstance(listed, list) and key_id in [k["key_id"] for k in listed]
    assert all(set(SUMMARY) <= set(k) for k in listed)
    steps = [
        (("disable-key", "cli/life"), {"state": "Disabled"}),
        (("enable-key", "cli/life"), {"state": "Enabled"}),
        (("rotate-key", "cli/life"), {"current_version": 2}),
        (("disable-key-rotation", "cli/life"), {"rotation_enabled": False}),
        (("enable-key-rotation", "cli/life", "--interval-days", "30"), {"rotation_interval_days": 30}),
        (("update-key-description", "cli/life", "second"), {"description": "second"}),
        (("update-key-alias", "cli/life", "cli/life2"), {"alias": "cli/life2"}),
        (("schedule-key-deletion", "cli/life2", "--pending-days", "7"), {"state": "PendingDeletion"}),
        (("cancel-key-deletion", key_id), {"state": "Disabled", "deletion_date": None}),
    ]
    for args, expected in steps:
        report = env.json(*args)
        assert report["key_id"] == key_id
        for k, v in expected.items():
            assert report[k] == v, (args, report)
    text = env("describe-key", key_id).stdout.decode()
    assert "cli/life2" in text and "Disabled" in text
    table = env("list-keys").stdout.decode().splitlines()
    assert table[0].split() == [f.upper() for f in SUMMARY]
    assert any(key_id in line and "cli/life2" in line for line in table[1:])


def test_encrypt_decrypt_pipe_and_files(env):
    blob = env("encrypt-data", "app/aes", "--context", "a=1", "--context", "b=2", input=b"through a pipe").stdout
    assert blob[0] == 1 and b"through a pipe" not in blob  # raw blob to a pipe
    assert env("decrypt-data", "--context", "b=2", "--context", "a=1", input=blob).stdout == b"through a pipe"
    # base64 blobs are accepted as input too; --out / --in files
    b64 = env("encrypt-data", "app/aes", "--base64", input=b"b64").stdout
    assert base64.b64decode(b64).startswith(b"\x01")
    assert env.kms.decrypt_data(base64.b64decode(b64)) == b"b64"
    infile, outfile = env.tmp / "plain.txt", env.tmp / "blob.bin"
    infile.write_bytes(b"from a file")
    report = env.json("encrypt-data", "app/aes", "--in", infile, "--out", outfile)
    assert base64.b64decode(report["ciphertext"]) == outfile.read_bytes()
    assert env("decrypt-data", "app/aes", "--in", outfile).stdout == b"from a file"


def test_datakey_commands(env):
    dk = env.json("create-datakey", "app/aes", "--bits", "512")
    assert len(base64.b64decode(dk["plaintext"])) == 64
    plain = env.json("decrypt-datakey", input=dk["ciphertext"].encode())["plaintext"]
    assert plain == dk["plaintext"]
    bare = env.json("create-datakey", "app/aes", "--without-plaintext")
    assert "plaintext" not in bare and bare["key_id"] == env.kms.describe_key("app/aes").key_id
    wrapped = env("encrypt-datakey", "app/aes", input=base64.b64encode(b"k" * 32)).stdout
    assert env("decrypt-datakey", "app/aes", input=wrapped).stdout == b"k" * 32


def test_sign_verify_and_exit_codes(env):
    sig = env.tmp / "msg.sig"
    env("sign", "app/ec", "--algorithm", "ECDSA_SHA_256", "--out", sig, input=b"message")
    r = env("verify", "app/ec", "--algorithm", "ECDSA_SHA_256", "--signature", sig, input=b"message")
    assert r.returncode == 0 and b"valid" in r.stdout
    r = env("verify", "app/ec", "--algorithm", "ECDSA_SHA_256", "--signature", sig, input=b"messagE", ok=False)
    assert r.returncode != 0 and b"INVALID" in r.stdout and "Traceback" not in r.stderr.decode()
    sig_b64 = base64.b64encode(sig.read_bytes()).decode()
    report = json.loads(env("verify", "app/ec", "--algorithm", "ECDSA_SHA_256", "--signature", sig_b64,
                            "--json", input=b"tampered", ok=False).stdout)
    assert report == {"valid": False}
    signed = env.json("sign", "app/ec", "--algorithm", "ECDSA_SHA_256", input=b"message")
    assert signed["key_id"] == env.kms.describe_key("app/ec").key_id and signed["signature"]
    assert env.kms.verify("app/ec", b"message", base64.b64decode(signed["signature"]), "ECDSA_SHA_256")


def test_mac_and_exit_codes(env):
    mac = env("generate-mac", "app/mac", "--base64", input=b"message").stdout.strip()
    assert len(base64.b64decode(mac)) == 32
    assert env("verify-mac", "app/mac", "--mac", mac.decode(), input=b"message").returncode == 0
    r = env("verify-mac", "app/mac", "--mac", mac.decode(), input=b"other", ok=False)
    assert r.returncode != 0 and b"INVALID" in r.stdout


def test_get_public_key_and_gen_random(env):
    pem = env("get-public-key", "app/ec").stdout.decode()
    assert pem == env.kms.get_public_key("app/ec")
    report = env.json("get-public-key", "app/rsa")
    assert report["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert len(env("gen-random", "48").stdout) == 48  # raw to a pipe
    assert len(base64.b64decode(env.json("gen-random", "16")["random"])) == 16


def test_rsa_encrypt_decrypt_through_cli(env):
    ct = env("encrypt-data", "app/rsa", "--algorithm", "RSAES_OAEP_SHA_1", input=b"rsa").stdout
    assert len(ct) == 256
    assert env("decrypt-data", "app/rsa", "--algorithm", "RSAES_OAEP_SHA_1", input=ct).stdout == b"rsa"


def _run_on_a_terminal(kh, home, *args) -> bytes:
    """Run kms with stdout on a pseudo-terminal; return what the terminal received."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([kh.KMS_BIN, "--home", str(home), *args], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=subprocess.PIPE, env=kh.clean_env())
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=60)
    os.close(master)
    assert proc.returncode == 0, proc.stderr.read()
    return out


def test_binary_output_is_base64_on_a_terminal_raw_in_a_pipe(env):
    on_tty = _run_on_a_terminal(env.kh, env.home, "gen-random", "32").strip()
    assert len(base64.b64decode(on_tty, validate=True)) == 32
    in_pipe = env("gen-random", "32").stdout
    assert len(in_pipe) == 32
    blob_tty = _run_on_a_terminal(env.kh, env.home, "create-datakey", "app/aes")
    assert b"plaintext" in blob_tty and b"ciphertext" in blob_tty


# -- refusals: one line, `kms: error:`, non-zero exit, no traceback --------------------------------


@pytest.fixture(scope="module")
def refusal_keys(env):
    env.kms.create_key("ref/disabled")
    env.kms.disable_key("ref/disabled")
    return env


REFUSALS = {
    "wrong usage": (("sign", "app/aes", "--algorithm", "ECDSA_SHA_256"), None, ("app/aes", "SIGN_VERIFY")),
    "disabled key": (("encrypt-data", "ref/disabled"), b"x", ("ref/disabled", "Disabled")),
    "unknown key": (("describe-key", "no/such"), None, ("no/such",)),
    "too long": (("encrypt-data", "app/aes"), b"x" * 4097, ("4096",)),
    "forbidden alias": (("create-key", "--alias", "app/default"), None, ("app/default", "reserved")),
    "cannot rotate": (("rotate-key", "app/mac"), None, ("app/mac", "AES_256")),
    "default key disable": (("disable-key", "fsmount/default"), None, ("fsmount/default", "default key")),
    "gen-random range": (("gen-random", "0"), None, ("1 to 1024",)),
    "bad context": (("encrypt-data", "app/aes", "--context", "novalue"), b"x", ("KEY=VALUE",)),
    "bad import token": (("import-key-material", "app/aes", "--import-token", "nope", "--material", "/dev/null"), None, ("app/aes",)),
    "missing input file": (("encrypt-data", "app/aes", "--in", "/nonexistent/file"), None, ("/nonexistent/file",)),
    "deletion days": (("schedule-key-deletion", "app/aes", "--pending-days", "3"), None, ("7 and 1096",)),
    "rotation days": (("enable-key-rotation", "app/aes", "--interval-days", "400"), None, ("30 and 365",)),
}


@pytest.fixture(scope="module")
def refused(refusal_keys):
    """Every refusal command, run as real subprocesses a few at a time (CLI start-up is slow)."""
    results, names = {}, sorted(REFUSALS)
    for i in range(0, len(names), 4):
        procs = {}
        for name in names[i:i + 4]:
            args, data, _ = REFUSALS[name]
            procs[name] = subprocess.Popen(
                [refusal_keys.kh.KMS_BIN, "--home", str(refusal_keys.home), *args],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=refusal_keys.kh.clean_env())
        for name, proc in procs.items():
            out, err = proc.communicate(REFUSALS[name][1] or b"", timeout=120)
            results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_refusals_are_one_line(refused, kh, name):
    kh.assert_refused(refused[name], *REFUSALS[name][2])


def test_tampered_ciphertext_and_wrong_context_refused(env, kh):
    blob = bytearray(env.kms.encrypt_data("app/aes", b"x", {"a": "b"}))
    line = kh.assert_refused(env("decrypt-data", "--context", "a=c", input=bytes(blob), ok=False))
    assert "encryption context" in line
    blob[-3] ^= 1
    kh.assert_refused(env("decrypt-data", "--context", "a=b", input=bytes(blob), ok=False), "failed authentication")
    r = env("decrypt-data", input=b"\x01" + bytes(10), ok=False)
    kh.assert_refused(r, "too short")


def test_exit_codes_differ_by_kind(refused):
    codes = {
        "not found": refused["unknown key"].returncode,
        "invalid request": refused["gen-random range"].returncode,
        "rule": refused["cannot rotate"].returncode,
    }
    assert all(c not in (0, 70) for c in codes.values()) and len(set(codes.values())) == 3, codes


@pytest.mark.parametrize("name", ["deletion days", "rotation days"])
def test_out_of_range_days_name_the_key(refused, env, name):
    line = [l for l in refused[name].stderr.decode().splitlines() if l.startswith("kms: error:")][0]
    assert env.kms.describe_key("app/aes").state.value == "Enabled"
    assert "app/aes" in line, line


def test_import_tokens_never_look_like_options(env):
    """A token is passed as `--import-token TOKEN`: one starting with '-' would be
    taken for an option by argparse, so tokens must never start with one."""
    env.kms.create_key("ext/dash", origin="EXTERNAL")
    tokens = [env.kms.get_parameters_for_import("ext/dash").import_token for _ in range(40)]
    assert all(not t.startswith("-") for t in tokens)
    assert len(set(tokens)) == len(tokens)
