"""Nothing on disk holds plaintext key material: imported AES material, KMS-generated
keys and data keys are searched for (raw, hex, base64) in every file under the home,
the SQLite WAL and SHM files included, while the store is open and after it closed."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kmscore import Kms


def encodings(secret: bytes) -> dict[str, bytes]:
    return {
        "raw": secret,
        "hex": secret.hex().encode(),
        "HEX": secret.hex().upper().encode(),
        "base64": base64.b64encode(secret).rstrip(b"="),
        "base64url": base64.urlsafe_b64encode(secret).rstrip(b"="),
    }


def disk_bytes(home: Path) -> dict[str, bytes]:
    files = {}
    for path in home.rglob("*"):
        if path.is_file():
            files[str(path.relative_to(home))] = path.read_bytes()
    return files


def assert_nowhere(home: Path, secrets: dict[str, bytes]) -> list[str]:
    files = disk_bytes(home)
    for name, secret in secrets.items():
        assert len(secret) >= 16, name
        for enc, needle in encodings(secret).items():
            for path, data in files.items():
                assert needle not in data, f"{name} ({enc}) found in {path}"
    return sorted(files)


def secret_numbers(kms: Kms, key: str) -> dict[str, bytes]:
    """The secret parts of a loaded key, read from the KMS's own in-memory handle."""
    handle = kms._cached(key).current
    private = handle._private
    if private is None:
        return {f"{key} material": handle._material}
    numbers = private.private_numbers()
    if isinstance(private, rsa.RSAPrivateKey):
        size = private.key_size // 16
        return {f"{key} p": numbers.p.to_bytes(size, "big"), f"{key} d": numbers.d.to_bytes(size * 2, "big"),
                f"{key} DER": handle._material}
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    return {f"{key} scalar": numbers.private_value.to_bytes((private.curve.key_size + 7) // 8, "big"),
            f"{key} DER": handle._material}


def test_no_plaintext_key_material_on_disk(home, kh):
    imported = os.urandom(32)
    ec_imported = kh.private_key("EC_P256")
    secrets: dict[str, bytes] = {"imported AES": imported,
                                 "imported EC": ec_imported.private_numbers().private_value.to_bytes(32, "big")}
    with Kms(home) as kms:
        kms.create_key("ext/aes", origin="EXTERNAL")
        kh.import_material(kms, "ext/aes", imported)
        kms.create_key("ext/ec", "EC_P256", origin="EXTERNAL")
        kh.import_material(kms, "ext/ec", kh.der(ec_imported))
        for alias, spec in (("app/aes", "AES_256"), ("app/hmac", "HMAC_512"), ("app/rsa", "RSA_2048"), ("app/ec", "EC_P384")):
            kms.create_key(alias, spec)
            secrets.update(secret_numbers(kms, alias))
        kms.encrypt_data("fsmount/default", b"first use")
        secrets.update(secret_numbers(kms, "fsmount/default"))
        kms.rotate_key("app/aes")
        secrets.update({"rotated " + k: v for k, v in secret_numbers(kms, "app/aes").items()})
        dk = kms.create_datakey("app/aes", 512)
        secrets["data key"] = dk.plaintext
        params = kms.get_parameters_for_import("ext/aes")  # a wrapping private key now sits in the store
        assert kms._cached("ext/aes").current._material == imported  # the test searches for the right bytes
        kms.flush_audit()
        # while the store is open: the WAL (and SHM) hold the latest pages
        names = assert_nowhere(home, secrets)
        assert "keys.db-wal" in names, names
        assert params.import_token
    names = assert_nowhere(home, secrets)
    assert "keys.db" in names and "root.key" in names


def test_root_key_file_is_the_only_secret_and_it_is_not_in_the_store(home):
    with Kms(home) as kms:
        kms.create_key("app/aes")
        root = base64.b64decode((home / "root.key").read_text())
        kms.flush_audit()
        for path, data in disk_bytes(home).items():
            if path != "root.key":
                for enc, needle in encodings(root).items():
                    assert needle not in data, (path, enc)
