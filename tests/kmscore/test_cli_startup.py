"""The `kms` CLI imports only what the command needs (issue 14: start-up is most of the
gap between `kms encrypt-file` on a 1 GiB file and `cp`).

Each test runs the real entry point (`kmscore.cli.main:main`, as the console script) in
a fresh interpreter and reads `sys.modules` once the command has finished: a module that
a command does not need must not be there. Timings are benchmarks (bench/), not tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest



def env(**extra: str) -> dict[str, str]:
    """The environment without the developer's KMS_* settings."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("KMS_")}, **extra}

# Imported by no file command: RSA/EC and X.509 (only RSA/EC keys and key import use
# them), the plugin metadata scan, the front ends, the remote facade, the config loader
# (pydantic), progress bars (rich, only on a terminal).
HEAVY = (
    "cryptography.hazmat.primitives.asymmetric.rsa",
    "cryptography.hazmat.primitives.asymmetric.ec",
    "cryptography.hazmat.primitives.serialization",
    "cryptography.x509",
    "importlib.metadata",
    "kmscore.remote",
    "kmscore.config",
    "httpx",
    "pydantic",
    "rich",
    "fsmount",
    "sidecar",
    "kmsserve",
    "mitmproxy",
    "starlette",
    "uvicorn",
    "difflib",  # only for "did you mean" after a usage mistake
)
# `kms --version` opens no key store and does no crypto.
NOT_FOR_VERSION = ("sqlite3", "cryptography", "kmscore.facade", "kmscore.keyring", "kmscore.envelope")

RUNNER = """
import json, os, sys
sys.argv = ["kms", *sys.argv[2:]]
out = os.environ["MODULES_OUT"]
try:
    from kmscore.cli.main import main
    code = main()
except SystemExit as e:
    code = e.code
finally:
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)
sys.exit(code or 0)
"""


def modules_after(tmp_path: Path, *args: str, stdin: bytes = b"") -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `kms ARGS` in a new interpreter; its result and the modules it imported."""
    out = tmp_path / "modules.json"
    r = subprocess.run([sys.executable, "-c", RUNNER, "kms", *args], input=stdin, capture_output=True,
                       env=env(MODULES_OUT=str(out)), timeout=120)
    return r, set(json.loads(out.read_text()))


def imported(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """Which of `names` (or their submodules) are in `modules`."""
    return sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in modules))


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    h = tmp_path_factory.mktemp("startup") / "home"
    for args in (["init"], ["create-key", "--alias", "files"]):
        subprocess.run([sys.executable, "-m", "kmscore.cli.main", "--home", str(h), *args], check=True,
                       capture_output=True, env=env())
    return h


def test_version_imports_no_store_crypto_or_front_end(tmp_path):
    r, modules = modules_after(tmp_path, "--version")
    assert r.returncode == 0 and r.stdout.decode().startswith("kms (keyhold) ")
    assert imported(modules, tuple(n for n in HEAVY if n != "importlib.metadata") + NOT_FOR_VERSION) == []


def test_encrypt_and_decrypt_file_import_only_what_they_need(tmp_path, home):
    plain, sealed, back = tmp_path / "plain", tmp_path / "plain.khev", tmp_path / "back"
    plain.write_bytes(os.urandom(300_000))
    r, modules = modules_after(tmp_path, "--home", str(home), "encrypt-file", "files", str(plain), str(sealed))
    assert r.returncode == 0, r.stderr
    assert imported(modules, HEAVY) == []
    r, modules = modules_after(tmp_path, "decrypt-file", str(sealed), str(back), "--home", str(home))
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == plain.read_bytes()
    assert imported(modules, HEAVY) == []


@pytest.mark.parametrize("args", [["list-keys"], ["describe-key", "files"], ["create-datakey", "files", "--json"],
                                  ["gen-random", "16", "--base64"]])
def test_aes_key_commands_need_no_rsa_ec_or_front_end(tmp_path, home, args):
    r, modules = modules_after(tmp_path, "--home", str(home), *args)
    assert r.returncode == 0, r.stderr
    assert imported(modules, HEAVY) == []


def test_front_end_commands_and_typos_still_load_what_they_need(tmp_path, home):
    r, modules = modules_after(tmp_path, "--home", str(home), "lsit-keys")
    assert r.returncode == 2 and "did you mean 'list-keys'?" in r.stderr.decode()
    r, modules = modules_after(tmp_path, "mount", "--help")
    assert r.returncode == 0 and "fsmount" in modules
    r, modules = modules_after(tmp_path, "--help")
    assert r.returncode == 0 and "encrypt-file" in r.stdout.decode() and "mount" in r.stdout.decode()
