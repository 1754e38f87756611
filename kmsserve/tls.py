"""The server's TLS certificate: the operator's (`--cert/--key`, `[serve] cert/key`), or
a self-signed one made on first start in the KMS home, whose SHA-256 fingerprint clients
pin (`kms serve --print-fingerprint`; kmscore.remote's `[kms] fingerprint`).

The self-signed pair lives in `<home>/serve/`: `tls-cert.pem` (0644) and `tls-key.pem`
(0600, written through a 0600 file from the start, never world-readable even briefly).
It is made once and kept, so the fingerprint clients pinned stays valid across restarts;
to change it, delete both files (clients must then pin the new fingerprint).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from kmsserve.errors import ServeError

log = logging.getLogger("kmsserve")

SELF_SIGNED_DIR = "serve"
CERT_NAME, KEY_NAME = "tls-cert.pem", "tls-key.pem"
VALID_DAYS = 3650
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class TlsError(ServeError):
    """A certificate or key that cannot be used (missing, unreadable, not a pair)."""


@dataclass(frozen=True)
class Certificate:
    cert_file: Path
    key_file: Path
    fingerprint: str
    """SHA-256 of the DER certificate, upper-case hex pairs joined by ':' (as `openssl x509
    -noout -fingerprint -sha256` prints it)."""
    self_signed: bool


def fingerprint_of(pem: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    digest = x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def names_for(host: str) -> list[str]:
    """The subject alternative names of a self-signed certificate for `host`: the listen
    host (unless a wildcard), this machine's name, localhost, 127.0.0.1 and ::1."""
    names = [] if host in WILDCARD_HOSTS else [host]
    names += [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    return list(dict.fromkeys(n for n in names if n))


def _san(name: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_self_signed(folder: Path, host: str) -> None:
    """A new EC P-256 key and a self-signed certificate for `host` in `folder`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"keyhold kms serve ({socket.gethostname()})")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names_for(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write(folder / KEY_NAME, key_pem, 0o600)
    _write(folder / CERT_NAME, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def self_signed(home: Path, host: str) -> Certificate:
    """The home's self-signed certificate, made now if there is none."""
    folder = Path(home) / SELF_SIGNED_DIR
    cert_file, key_file = folder / CERT_NAME, folder / KEY_NAME
    if not cert_file.exists() or not key_file.exists():
        make_self_signed(folder, host)
        log.info("kms serve: made a self-signed certificate %s", cert_file)
    cert = load(cert_file, key_file, self_signed=True)
    if host not in WILDCARD_HOSTS and not covers(cert_file, host):
        log.warning("kms serve: the self-signed certificate %s does not name %s; clients that check the "
                    "host name refuse it (pin its fingerprint, or delete %s and %s to make a new one)",
                    cert_file, host, cert_file, key_file)
    return cert


def covers(cert_file: Path, host: str) -> bool:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    wanted = _san(host)
    return wanted in list(sans)


def load(cert_file: str | Path, key_file: str | Path, *, self_signed: bool = False) -> Certificate:
    """Check that the pair can serve TLS (readable, PEM, the key matches); TlsError saying
    which file is wrong otherwise. Never echoes the key's content."""
    cert_file, key_file = Path(cert_file), Path(key_file)
    for what, path in (("certificate", cert_file), ("key", key_file)):
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise TlsError(f"cannot read the TLS {what} {path}: {e.strerror}") from None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)
    except ssl.SSLError as e:
        reason = getattr(e, "reason", None) or "not a PEM certificate and matching private key"
        raise TlsError(f"cannot use the TLS certificate {cert_file} with the key {key_file}: {reason}") from None
    except ValueError:
        raise TlsError(f"cannot use the TLS certificate {cert_file} with the key {key_file}") from None
    mode = key_file.stat().st_mode & 0o077
    if mode:
        log.warning("kms serve: the TLS key %s is readable by others (mode %o); chmod 600 it",
                    key_file, key_file.stat().st_mode & 0o777)
    try:
        fingerprint = fingerprint_of(cert_file.read_bytes())
    except ValueError:  # a chain file starting with something else: fingerprint the first cert
        raise TlsError(f"{cert_file}: the first PEM block is not a certificate") from None
    return Certificate(cert_file, key_file, fingerprint, self_signed)


def server_context(cert: Certificate) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert.cert_file, cert.key_file)
    return ctx
