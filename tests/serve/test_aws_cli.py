"""The `aws kms` CLI (PyPI awscli), unchanged, against a real `kms serve`: credentials
from the environment, the endpoint from AWS_ENDPOINT_URL_KMS or --endpoint-url, binary
input with fileb://. A representative set (one CLI call costs about half a second), run in
waves of independent calls."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.conftest import clean_env

AWS = str(Path(sys.executable).parent / "aws")


@pytest.fixture
def cli(server, tmp_path):
    key = server.access_key()
    env = clean_env({
        "AWS_ACCESS_KEY_ID": key.access_key_id, "AWS_SECRET_ACCESS_KEY": key.secret,
        "AWS_DEFAULT_REGION": "eu-west-1", "AWS_ENDPOINT_URL_KMS": server.url,
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "HOME": str(tmp_path),
    })

    def run(*waves: list[list[str]]) -> list[subprocess.CompletedProcess]:
        """Each wave's calls at once; a wave after the one before."""
        done = []
        for wave in waves:
            procs = [subprocess.Popen([AWS, "kms", *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL) for argv in wave]
            try:
                for p in procs:
                    out, err = p.communicate(timeout=120)
                    done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
            finally:  # none outlives the test, also when one hangs
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
        return done

    return run


def ok(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout) if result.stdout.strip().startswith(b"{") else result.stdout.decode().strip()


def test_aws_cli(cli, server, tmp_path):
    (tmp_path / "plain.bin").write_bytes(b"\x00secret\xff")
    (tmp_path / "message.bin").write_bytes(b"sign me")
    symmetric, signing = map(ok, cli([
        ["create-key", "--description", "from the cli"],
        ["create-key", "--key-spec", "ECC_NIST_P256", "--key-usage", "SIGN_VERIFY", "--endpoint-url", server.url],
    ]))
    key_id, sign_id = symmetric["KeyMetadata"]["KeyId"], signing["KeyMetadata"]["KeyId"]
    assert symmetric["KeyMetadata"]["Arn"].endswith(f":000000000000:key/{key_id}")

    alias, blob, data_key, signature = cli([
        ["create-alias", "--alias-name", "alias/cli/app", "--target-key-id", key_id],
        ["encrypt", "--key-id", key_id, "--plaintext", "fileb://" + str(tmp_path / "plain.bin"),
         "--encryption-context", "tenant=a", "--query", "CiphertextBlob", "--output", "text"],
        ["generate-data-key", "--key-id", key_id, "--key-spec", "AES_256"],
        ["sign", "--key-id", sign_id, "--message", "fileb://" + str(tmp_path / "message.bin"),
         "--signing-algorithm", "ECDSA_SHA_256", "--query", "Signature", "--output", "text"],
    ])
    ok(alias)
    (tmp_path / "secret.enc").write_bytes(base64.b64decode(ok(blob)))
    assert len(base64.b64decode(ok(data_key)["Plaintext"])) == 32
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(ok(signature)))

    aliases, plain, wrong, verified = cli([
        ["list-aliases"],
        ["decrypt", "--ciphertext-blob", "fileb://" + str(tmp_path / "secret.enc"), "--encryption-context", "tenant=a",
         "--query", "Plaintext", "--output", "text"],
        ["decrypt", "--ciphertext-blob", "fileb://" + str(tmp_path / "secret.enc"), "--encryption-context", "tenant=b"],
        ["verify", "--key-id", sign_id, "--message", "fileb://" + str(tmp_path / "message.bin"),
         "--signature", "fileb://" + str(tmp_path / "sig.bin"), "--signing-algorithm", "ECDSA_SHA_256"],
    ])
    assert {"AliasName": "alias/cli/app", "TargetKeyId": key_id}.items() <= {
        k: v for a in ok(aliases)["Aliases"] if a["AliasName"] == "alias/cli/app" for k, v in a.items()}.items()
    assert base64.b64decode(ok(plain)) == b"\x00secret\xff"
    assert wrong.returncode != 0 and b"InvalidCiphertextException" in wrong.stderr
    assert ok(verified)["SignatureValid"] is True
