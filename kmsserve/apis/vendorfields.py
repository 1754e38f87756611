"""The reference cloud's KMS v1.0 wire forms, both ways (sans-IO): request fields ->
the facade's arguments, the facade's results -> response fields. The table that joins
them to facade calls is kmsserve/apis/vendor.py; the conventions are in its docstring
and docs/api/vendor.md.

Every converter either returns a value or raises VendorError with the vendor's own code
for that field (its ranges, its required fields), so a bad request never reaches the
facade and never becomes a 500.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Any

from kmscore import blob as blobfmt
from kmscore import errors as kms_errors
from kmscore import rules
from kmsserve import errors

DOMAIN_ID = "keyhold"
"""What `domain_id` (the vendor's account id) and `realm` (its region) say: keyhold has neither."""


class VendorError(errors.MalformedRequest):
    """A request the vendor's API refuses with one of its own codes (a bad field, a
    value out of the vendor's range): raised by the field converters below."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.status = code, status


# -- request fields -> facade arguments -----------------------------------------------------

def text(f: Mapping[str, Any], name: str, required: bool = True) -> str | None:
    value = f.get(name)
    if value is None or value == "":
        if required:
            raise VendorError("KMS.0204", f"the request lacks the required parameter {name}")
        return None
    if not isinstance(value, str):
        raise VendorError("KMS.0308", f"Invalid {name}: a string is expected")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, which JSON's \ud800 escape can carry
            raise VendorError("KMS.0308", f"Invalid {name}: not valid Unicode text") from None
    return value


def _whole(value: Any) -> bool:
    """A JSON number that is whole, or a short string of ASCII digits (`str.isdigit` also
    takes "²", which int() refuses; a 5000-digit string would overflow int()'s limit)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and 0 < len(value) <= 18 and value.isascii() and value.isdigit()


def number(f: Mapping[str, Any], name: str, low: int, high: int, code: str, default: int | None = None) -> int:
    """A whole number sent as a JSON number or as a string of digits (the SDK types most
    numbers as strings), within the vendor's range, else the vendor's code for it."""
    value = f.get(name)
    if value is None or value == "":
        if default is None:
            raise VendorError("KMS.0204", f"the request lacks the required parameter {name}")
        return default
    if not _whole(value):
        raise VendorError(code, f"Invalid {name}: a whole number is expected")
    parsed = int(value)
    if not low <= parsed <= high:
        raise VendorError(code, f"{name} must be between {low} and {high}, got {parsed}")
    return parsed


def decoded(f: Mapping[str, Any], name: str, codec: str, required: bool = True, code: str = "KMS.0308") -> bytes | None:
    encoded = text(f, name, required)
    if encoded is None:
        return None
    try:
        return bytes.fromhex(encoded) if codec == "hex" else base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        raise VendorError(code, f"Invalid {name}: {codec} is expected") from None


def key_of(f: Mapping[str, Any]) -> str:
    """`key_id`: a key id, or (keyhold's addition) an alias."""
    return text(f, "key_id")  # type: ignore[return-value]


def context(f: Mapping[str, Any]) -> dict[str, str] | None:
    """The encryption context: `additional_authenticated_data` (the SDK's field, a
    string) is bound as {"additional_authenticated_data": it}; the older API's
    `encryption_context` object is bound as it is. Never ignored."""
    aad = text(f, "additional_authenticated_data", required=False)
    context = f.get("encryption_context")
    if context is not None and (not isinstance(context, dict) or
                                not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items())):
        raise VendorError("KMS.0208", "Invalid encryption_context: an object of strings is expected")
    if aad is not None and context:
        raise VendorError("KMS.0208", "give additional_authenticated_data or encryption_context, not both")
    if aad is not None:
        return {"additional_authenticated_data": aad}
    return dict(context) if context else None


def alias(f: Mapping[str, Any], required: bool) -> str | None:
    alias = text(f, "key_alias", required)
    if alias is not None:
        try:
            rules.check_alias(alias)
        except kms_errors.InvalidRequest as e:
            raise VendorError("KMS.1101", str(e)) from None
    return alias


def description(f: Mapping[str, Any]) -> str:
    description = f.get("key_description") or ""
    try:
        return rules.check_description(description)
    except kms_errors.InvalidRequest as e:
        raise VendorError("KMS.1103", str(e)) from None


_ORIGINS = {"kms": "KMS", "external": "EXTERNAL"}


def create_args(f: Mapping[str, Any]) -> dict[str, Any]:
    origin = (text(f, "origin", required=False) or "kms").lower()
    if origin not in _ORIGINS:
        raise VendorError("KMS.0308", "Invalid origin: kms or external")
    return {"alias": alias(f, required=False), "spec": text(f, "key_spec", required=False) or "AES_256",
            "usage": text(f, "key_usage", required=False), "origin": _ORIGINS[origin], "description": description(f)}


def datakey_bits(f: Mapping[str, Any]) -> int:
    if f.get("datakey_length") not in (None, ""):
        return number(f, "datakey_length", 8, 8192, "KMS.1901")
    spec = text(f, "key_spec", required=False) or "AES_256"
    if spec not in ("AES_256", "AES_128"):
        raise VendorError("KMS.1902", "key_spec must be AES_256 or AES_128")
    return int(spec[4:])


def dek_with_digest(f: Mapping[str, Any]) -> bytes:
    """encrypt-datakey's `plain_text`: hex(DEK || sha256(DEK)); the digest must hold."""
    raw = decoded(f, "plain_text", "hex", code="KMS.2101")
    assert raw is not None
    length = number(f, "datakey_plain_length", 1, 1024, "KMS.2102", default=max(len(raw) - 32, 0))
    dek, digest = raw[:length], raw[length:]
    if len(raw) != length + 32:
        raise VendorError("KMS.2104", "plain_text must be the data key followed by its SHA-256 (32 bytes)")
    if hashlib.sha256(dek).digest() != digest:
        raise VendorError("KMS.2103", "the data key does not match its SHA-256 digest")
    return dek


def message_type(f: Mapping[str, Any]) -> str:
    return text(f, "message_type", required=False) or "DIGEST"  # the vendor's default


def list_args(f: Mapping[str, Any]) -> dict[str, Any]:
    state = text(f, "key_state", required=False)
    if state is not None and state not in STATE_CODES.values():
        raise VendorError("KMS.0308", "Invalid key_state: 1 to 5")
    return {"limit": number(f, "limit", 1, 10**6, "KMS.1601", default=10**6),
            "marker": number(f, "marker", 0, 10**9, "KMS.1602", default=0),
            "state": state, "spec": text(f, "key_spec", required=False) or "AES_256"}


def import_args(f: Mapping[str, Any]) -> dict[str, Any]:
    """The wrapped material: `encrypted_key_material` alone (OAEP; AES_256 keys), or for an
    asymmetric key the OAEP-wrapped temporary AES key there and the PKCS#8 private key
    wrapped under it (AES key wrap with padding) in `encrypted_privatekey`: together
    exactly the facade's RSA_AES_KEY_WRAP layout (get-parameters-for-import chose it)."""
    material = decoded(f, "encrypted_key_material", "base64")
    private = decoded(f, "encrypted_privatekey", "base64", required=False)
    expires = f.get("expiration_time")
    if expires is not None and not _whole(expires):
        raise VendorError("KMS.2602", "Invalid expiration_time: seconds since the epoch")
    return {"key": key_of(f), "import_token": text(f, "import_token"),
            "encrypted_material": material + (private or b""),  # type: ignore[operator]
            "expires_at": None if expires is None else float(expires)}


# -- facade results -> response fields -------------------------------------------------------

STATE_CODES = {"Enabled": "2", "Disabled": "3", "PendingDeletion": "4", "PendingImport": "5"}
"""keyhold's key states -> the vendor's `key_state` ("1" pending activation and "7"
frozen have no keyhold counterpart)."""


def ms(when: float | None) -> str:
    return "" if when is None else str(int(when * 1000))


def hex_upper(data: bytes) -> str:
    return data.hex().upper()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def key_details(meta) -> dict[str, str]:
    """A KeyMetadata as the vendor's KeyDetails (every value a string)."""
    return {
        "key_id": meta.key_id, "domain_id": DOMAIN_ID, "key_alias": meta.alias or "", "realm": DOMAIN_ID,
        "key_spec": meta.spec.value, "key_usage": meta.usage.value, "key_description": meta.description,
        "creation_date": ms(meta.created_at), "scheduled_deletion_date": ms(meta.deletion_date),
        "key_state": STATE_CODES[meta.state.value], "default_key_flag": "1" if meta.is_default else "0",
        "key_type": "1", "expiration_time": ms(meta.material_expires_at), "origin": meta.origin.value.lower(),
        "key_rotation_enabled": "true" if meta.rotation_enabled else "false",
        "sys_enterprise_project_id": "0", "keystore_id": "0",
    }


def rotation_status(meta, args) -> dict[str, Any]:
    rotations = meta.current_version - 1 if meta.origin.value == "KMS" else 0
    interval = meta.rotation_interval_days
    last = meta.next_rotation_at - interval * 86400.0 if meta.rotation_enabled and rotations > 0 else None
    return {"key_rotation_enabled": meta.rotation_enabled, "rotation_interval": interval or 365,
            "last_rotation_time": ms(last), "number_of_rotations": max(rotations, 0)}


def named_key(ciphertext: bytes, args) -> str:
    """The key id a symmetric blob names (the request may have named its alias)."""
    try:
        return blobfmt.peek_key(ciphertext)[0]
    except kms_errors.KmsError:
        return args["key"]  # RSA: raw OAEP output names no key


def decrypted(out: bytes, args) -> dict[str, str]:
    key = args.get("key") or blobfmt.peek_key(args["ciphertext"])[0]
    return {"key_id": key, "plain_text": out.decode("utf-8", "replace"), "plain_text_base64": b64(out)}


def random_bytes(f: Mapping[str, Any]) -> int:
    bits = number(f, "random_data_length", 8, 8192, "KMS.1801")
    if bits % 8:
        raise VendorError("KMS.1802", "random_data_length must be a whole number of bytes (a multiple of 8)")
    return bits // 8


def public_der_base64(pem: str) -> str:
    """A PEM public key as the vendor sends it: the base64 of its DER, on one line."""
    return "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))
