"""serve-core's test helpers (kept out of conftest.py so that the serve branches'
additions there do not collide): a `kms serve` with any options (TLS, timeouts), a
certificate of the test's own for it, and AWS KMS requests signed with kmsserve's own
SigV4 for raw httpx/socket tests."""

from __future__ import annotations

import datetime
import subprocess
import time
from pathlib import Path

from tests.serve.conftest import KMS_BIN, AccessKey, Server, clean_env, kms


def start_server_with(home: Path, *args: str, timeout: float = 30) -> Server:
    """A `kms serve` with exactly these options after `serve` (give --listen with a free
    port; TLS unless --plain-http); its URL's scheme follows."""
    assert kms(home, "init").returncode in (0, 1)
    listen = args[args.index("--listen") + 1]
    port = int(listen.rpartition(":")[2])
    log = home.parent / f"serve-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([KMS_BIN, "--home", str(home), "serve", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=clean_env(), stdin=subprocess.DEVNULL)
    scheme = "http" if "--plain-http" in args else "https"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"kms serve exited {proc.returncode}: {log.read_text()}")
        if b"listening on" in log.read_bytes():
            return Server(home, f"{scheme}://127.0.0.1:{port}", proc, log)
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError(f"kms serve did not listen within {timeout}s: {log.read_text()}")


def signed_request(url: str, key: AccessKey, target: str, body: bytes = b"{}", *, now: float | None = None,
                   region: str = "eu-west-1", extra: dict[str, str] | None = None) -> tuple[str, dict[str, str], bytes]:
    """(url, headers, body) of an AWS KMS JSON request signed with kmsserve's own SigV4
    (`now` lets a test sign in the past); send it with httpx."""
    from urllib.parse import urlsplit

    from kmsserve.auth import sigv4

    headers = {"Host": urlsplit(url).netloc, "Content-Type": "application/x-amz-json-1.1",
               "X-Amz-Target": f"TrentService.{target}", **(extra or {})}
    headers.update(sigv4.sign("POST", "/", "", headers, body, access_key_id=key.access_key_id, secret=key.secret,
                              region=region, service="kms", now=now))
    return url + "/", headers, body


def write_certificate(folder: Path, san, ca: bool | None = None):
    """A self-signed EC certificate naming `san` (an x509 GeneralName), valid from
    yesterday for a week, with BasicConstraints CA:TRUE or CA:FALSE (none if `ca` is
    None), written to folder/cert.pem and its key to folder/key.pem (0600): (cert file,
    key file, the x509.Certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyhold test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=7))
               .add_extension(x509.SubjectAlternativeName([san]), critical=False))
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    cert = builder.sign(key, hashes.SHA256())
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file, cert
