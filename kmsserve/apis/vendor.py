"""The reference cloud's KMS v1.0 API (`POST /v1.0/{project_id}/kms/<operation>`, AK/SK
`SDK-HMAC-SHA256` signing), as a table: the vendor's SDK `huaweicloudsdkkms` works
unchanged. Facts about the API: ../shared/reference/vendor-kms-api.md; the mapping and
what is not offered: docs/api/vendor.md.

The wire's conventions, kept exactly because the SDK builds typed models from them:
most numbers and booleans are JSON strings (`key_state` "2", `pending_days` "7",
`truncated` "false", `signature_valid` "true"), but `rotation_interval`, `total`,
`expiration_time` (import) are ints and `mac_valid` / `key_rotation_enabled` (rotation
status) are real booleans; times are milliseconds since the epoch as strings ("" for
none); data keys, random bytes and data-key ciphertexts are hex, every other binary
field base64. Requests are read leniently (a number may come as "7" or 7).

`project_id`: keyhold has one key namespace, so any project id is accepted and names the
same keys; only a signed X-Project-Id header that disagrees with the path is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from kmscore import blob as blobfmt
from kmscore import errors as kms_errors
from kmscore import rules
from kmsserve import errors
from kmsserve.auth import sdkhmac
from kmsserve.wire import Operation, Principal, WireRequest, WireResponse

_ANY_PATH = re.compile(r"^/v(?:1\.0|2)/[^/]+/(?:kms|keystores)(?:/|$)")
_PATH = re.compile(r"^/v1\.0/(?P<project>[^/]+)/kms/(?P<op>[a-z-]+)$")
CONTENT_TYPE = "application/json;charset=UTF-8"
DOMAIN_ID = "keyhold"
"""What `domain_id` (the vendor's account id) and `realm` (its region) say: keyhold has neither."""


class VendorError(errors.MalformedRequest):
    """A request the vendor's API refuses with one of its own codes (a bad field, a
    value out of the vendor's range): raised by the field converters below."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.status = code, status


# -- request fields -> facade arguments -----------------------------------------------------

def _text(f: Mapping[str, Any], name: str, required: bool = True) -> str | None:
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


def _number(f: Mapping[str, Any], name: str, low: int, high: int, code: str, default: int | None = None) -> int:
    """A whole number sent as a JSON number or as a string of digits (the SDK types most
    numbers as strings), within the vendor's range, else the vendor's code for it."""
    value = f.get(name)
    if value is None or value == "":
        if default is None:
            raise VendorError("KMS.0204", f"the request lacks the required parameter {name}")
        return default
    if not _whole(value):
        raise VendorError(code, f"Invalid {name}: a whole number is expected")
    number = int(value)
    if not low <= number <= high:
        raise VendorError(code, f"{name} must be between {low} and {high}, got {number}")
    return number


def _decoded(f: Mapping[str, Any], name: str, codec: str, required: bool = True, code: str = "KMS.0308") -> bytes | None:
    text = _text(f, name, required)
    if text is None:
        return None
    try:
        return bytes.fromhex(text) if codec == "hex" else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise VendorError(code, f"Invalid {name}: {codec} is expected") from None


def _key(f: Mapping[str, Any]) -> str:
    """`key_id`: a key id, or (keyhold's addition) an alias."""
    return _text(f, "key_id")  # type: ignore[return-value]


def _context(f: Mapping[str, Any]) -> dict[str, str] | None:
    """The encryption context: `additional_authenticated_data` (the SDK's field, a
    string) is bound as {"additional_authenticated_data": it}; the older API's
    `encryption_context` object is bound as it is. Never ignored."""
    aad = _text(f, "additional_authenticated_data", required=False)
    context = f.get("encryption_context")
    if context is not None and (not isinstance(context, dict) or
                                not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items())):
        raise VendorError("KMS.0208", "Invalid encryption_context: an object of strings is expected")
    if aad is not None and context:
        raise VendorError("KMS.0208", "give additional_authenticated_data or encryption_context, not both")
    if aad is not None:
        return {"additional_authenticated_data": aad}
    return dict(context) if context else None


def _alias(f: Mapping[str, Any], required: bool) -> str | None:
    alias = _text(f, "key_alias", required)
    if alias is not None:
        try:
            rules.check_alias(alias)
        except kms_errors.InvalidRequest as e:
            raise VendorError("KMS.1101", str(e)) from None
    return alias


def _description(f: Mapping[str, Any]) -> str:
    description = f.get("key_description") or ""
    try:
        return rules.check_description(description)
    except kms_errors.InvalidRequest as e:
        raise VendorError("KMS.1103", str(e)) from None


_ORIGINS = {"kms": "KMS", "external": "EXTERNAL"}


def _create_args(f: Mapping[str, Any]) -> dict[str, Any]:
    origin = (_text(f, "origin", required=False) or "kms").lower()
    if origin not in _ORIGINS:
        raise VendorError("KMS.0308", "Invalid origin: kms or external")
    return {"alias": _alias(f, required=False), "spec": _text(f, "key_spec", required=False) or "AES_256",
            "usage": _text(f, "key_usage", required=False), "origin": _ORIGINS[origin], "description": _description(f)}


def _datakey_bits(f: Mapping[str, Any]) -> int:
    if f.get("datakey_length") not in (None, ""):
        return _number(f, "datakey_length", 8, 8192, "KMS.1901")
    spec = _text(f, "key_spec", required=False) or "AES_256"
    if spec not in ("AES_256", "AES_128"):
        raise VendorError("KMS.1902", "key_spec must be AES_256 or AES_128")
    return int(spec[4:])


def _dek_with_digest(f: Mapping[str, Any]) -> bytes:
    """encrypt-datakey's `plain_text`: hex(DEK || sha256(DEK)); the digest must hold."""
    raw = _decoded(f, "plain_text", "hex", code="KMS.2101")
    assert raw is not None
    length = _number(f, "datakey_plain_length", 1, 1024, "KMS.2102", default=max(len(raw) - 32, 0))
    dek, digest = raw[:length], raw[length:]
    if len(raw) != length + 32:
        raise VendorError("KMS.2104", "plain_text must be the data key followed by its SHA-256 (32 bytes)")
    if hashlib.sha256(dek).digest() != digest:
        raise VendorError("KMS.2103", "the data key does not match its SHA-256 digest")
    return dek


def _message_type(f: Mapping[str, Any]) -> str:
    return _text(f, "message_type", required=False) or "DIGEST"  # the vendor's default


def _list_args(f: Mapping[str, Any]) -> dict[str, Any]:
    state = _text(f, "key_state", required=False)
    if state is not None and state not in STATE_CODES.values():
        raise VendorError("KMS.0308", "Invalid key_state: 1 to 5")
    return {"limit": _number(f, "limit", 1, 10**6, "KMS.1601", default=10**6),
            "marker": _number(f, "marker", 0, 10**9, "KMS.1602", default=0),
            "state": state, "spec": _text(f, "key_spec", required=False) or "AES_256"}


def _import_args(f: Mapping[str, Any]) -> dict[str, Any]:
    """The wrapped material: `encrypted_key_material` alone (OAEP; AES_256 keys), or for an
    asymmetric key the OAEP-wrapped temporary AES key there and the PKCS#8 private key
    wrapped under it (AES key wrap with padding) in `encrypted_privatekey`: together
    exactly the facade's RSA_AES_KEY_WRAP layout (get-parameters-for-import chose it)."""
    material = _decoded(f, "encrypted_key_material", "base64")
    private = _decoded(f, "encrypted_privatekey", "base64", required=False)
    expires = f.get("expiration_time")
    if expires is not None and not _whole(expires):
        raise VendorError("KMS.2602", "Invalid expiration_time: seconds since the epoch")
    return {"key": _key(f), "import_token": _text(f, "import_token"),
            "encrypted_material": material + (private or b""),  # type: ignore[operator]
            "expires_at": None if expires is None else float(expires)}


# -- facade results -> response fields -------------------------------------------------------

STATE_CODES = {"Enabled": "2", "Disabled": "3", "PendingDeletion": "4", "PendingImport": "5"}
"""keyhold's key states -> the vendor's `key_state` ("1" pending activation and "7"
frozen have no keyhold counterpart)."""


def _ms(when: float | None) -> str:
    return "" if when is None else str(int(when * 1000))


def _hex(data: bytes) -> str:
    return data.hex().upper()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def key_details(meta) -> dict[str, str]:
    """A KeyMetadata as the vendor's KeyDetails (every value a string)."""
    return {
        "key_id": meta.key_id, "domain_id": DOMAIN_ID, "key_alias": meta.alias or "", "realm": DOMAIN_ID,
        "key_spec": meta.spec.value, "key_usage": meta.usage.value, "key_description": meta.description,
        "creation_date": _ms(meta.created_at), "scheduled_deletion_date": _ms(meta.deletion_date),
        "key_state": STATE_CODES[meta.state.value], "default_key_flag": "1" if meta.is_default else "0",
        "key_type": "1", "expiration_time": _ms(meta.material_expires_at), "origin": meta.origin.value.lower(),
        "key_rotation_enabled": "true" if meta.rotation_enabled else "false",
        "sys_enterprise_project_id": "0", "keystore_id": "0",
    }


def _rotation_status(meta, args) -> dict[str, Any]:
    rotations = meta.current_version - 1 if meta.origin.value == "KMS" else 0
    interval = meta.rotation_interval_days
    last = meta.next_rotation_at - interval * 86400.0 if meta.rotation_enabled and rotations > 0 else None
    return {"key_rotation_enabled": meta.rotation_enabled, "rotation_interval": interval or 365,
            "last_rotation_time": _ms(last), "number_of_rotations": max(rotations, 0)}


def _named_key(ciphertext: bytes, args) -> str:
    """The key id a symmetric blob names (the request may have named its alias)."""
    try:
        return blobfmt.peek_key(ciphertext)[0]
    except kms_errors.KmsError:
        return args["key"]  # RSA: raw OAEP output names no key


def _decrypted(out: bytes, args) -> dict[str, str]:
    key = args.get("key") or blobfmt.peek_key(args["ciphertext"])[0]
    return {"key_id": key, "plain_text": out.decode("utf-8", "replace"), "plain_text_base64": _b64(out)}


# -- operations made of several facade calls -------------------------------------------------

def _list_keys(kms, limit: int, marker: int, state: str | None, spec: str) -> dict[str, Any]:
    """list-keys: the vendor lists AES_256 keys unless asked for a spec or "ALL"."""
    keys = [m for m in kms.list_keys() if (spec == "ALL" or m.spec.value == spec)
            and (state is None or STATE_CODES[m.state.value] == state)]
    page = keys[marker:marker + limit]
    more = marker + limit < len(keys)
    return {"keys": [m.key_id for m in page], "key_details": [key_details(m) for m in page],
            "next_marker": str(marker + limit) if more else "", "truncated": "true" if more else "false",
            "total": len(keys)}


def _enable_rotation(kms, key: str) -> None:
    """Enabling rotation on a key that rotates keeps its interval (the facade's call
    would reset it to the default)."""
    if not kms.describe_key(key).rotation_enabled:
        kms.enable_key_rotation(key, 365)


def _update_interval(kms, key: str, interval: int) -> None:
    if not kms.describe_key(key).rotation_enabled:
        raise VendorError("KMS.0313", "key rotation is not enabled: enable it first")
    kms.enable_key_rotation(key, interval)


def _import_parameters(kms, key: str, algorithm: str):
    """The wrapping algorithm for the key's spec: an RSA or EC private key is too long
    for OAEP, so it comes wrapped by a temporary AES key (see _import_args)."""
    if algorithm not in ("RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1"):
        raise VendorError("KMS.0308", "Invalid wrapping_algorithm: RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1")
    if kms.describe_key(key).spec.is_asymmetric:
        algorithm = "RSA_AES_KEY_WRAP_" + algorithm.removeprefix("RSAES_OAEP_")
    return kms.get_parameters_for_import(key, algorithm, "RSA_2048")


def _public_der(pem: str) -> str:
    body = "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))
    return body


# -- the table -------------------------------------------------------------------------------

def _one_key(a: Mapping[str, Any]) -> tuple[str, ...]:
    return (a["key"],)


def _decrypt_keys(a: Mapping[str, Any]) -> tuple[str, ...]:
    return (a["key"] or blobfmt.peek_key(a["ciphertext"])[0],)


def _state(meta, args) -> dict[str, Any]:
    return {"key_info": {"key_id": meta.key_id, "key_state": STATE_CODES[meta.state.value]}}


def _flat_state(meta, args) -> dict[str, Any]:
    return {"key_id": meta.key_id, "key_state": STATE_CODES[meta.state.value]}


def _empty(out, args) -> dict[str, Any]:
    return {}


def _key_only(f: Mapping[str, Any]) -> dict[str, Any]:
    return {"key": _key(f)}


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in [
        # lifecycle
        Operation("create-key", "create_key", _create_args,
                  lambda m, a: {"key_info": {"key_id": m.key_id, "domain_id": DOMAIN_ID}}),
        Operation("describe-key", "describe_key", _key_only, lambda m, a: {"key_info": key_details(m)}, _one_key),
        Operation("list-keys", _list_keys, _list_args, lambda out, a: out, action="list_keys"),
        Operation("enable-key", "enable_key", _key_only, _state, _one_key),
        Operation("disable-key", "disable_key", _key_only, _state, _one_key),
        Operation("schedule-key-deletion", "schedule_key_deletion",
                  lambda f: {"key": _key(f), "pending_days": _number(f, "pending_days", 7, 1096, "KMS.1401")},
                  _flat_state, _one_key),
        Operation("cancel-key-deletion", "cancel_key_deletion", _key_only, _flat_state, _one_key),
        Operation("update-key-alias", "update_key_alias", lambda f: {"key": _key(f), "alias": _alias(f, True)},
                  lambda m, a: {"key_info": {"key_id": m.key_id, "key_alias": m.alias}}, _one_key),
        Operation("update-key-description", "update_key_description",
                  lambda f: {"key": _key(f), "description": _description(f)},
                  lambda m, a: {"key_info": {"key_id": m.key_id, "key_description": m.description}}, _one_key),
        # small data
        Operation("encrypt-data", "encrypt_data",
                  lambda f: {"key": _key(f), "plaintext": _text(f, "plain_text").encode(),  # type: ignore[union-attr]
                             "context": _context(f), "algorithm": _text(f, "encryption_algorithm", required=False)},
                  lambda out, a: {"key_id": _named_key(out, a), "cipher_text": _b64(out)}, _one_key),
        Operation("decrypt-data", "decrypt_data",
                  lambda f: {"ciphertext": _decoded(f, "cipher_text", "base64"), "context": _context(f),
                             "key": _text(f, "key_id", required=False),
                             "algorithm": _text(f, "encryption_algorithm", required=False)},
                  _decrypted, _decrypt_keys),
        # data keys
        Operation("create-datakey", "create_datakey",
                  lambda f: {"key": _key(f), "bits": _datakey_bits(f), "context": _context(f)},
                  lambda dk, a: {"key_id": dk.key_id, "plain_text": _hex(dk.plaintext), "cipher_text": _hex(dk.ciphertext)},
                  _one_key),
        Operation("create-datakey-without-plaintext", "create_datakey",
                  lambda f: {"key": _key(f), "bits": _datakey_bits(f), "context": _context(f), "with_plaintext": False},
                  lambda dk, a: {"key_id": dk.key_id, "cipher_text": _hex(dk.ciphertext)}, _one_key),
        Operation("encrypt-datakey", "encrypt_datakey",
                  lambda f: {"key": _key(f), "plaintext": _dek_with_digest(f), "context": _context(f)},
                  lambda out, a: {"key_id": a["key"], "cipher_text": _hex(out), "datakey_length": str(len(a["plaintext"]))},
                  _one_key),
        Operation("decrypt-datakey", "decrypt_datakey",
                  lambda f: {"key": _key(f), "ciphertext": _decoded(f, "cipher_text", "hex", code="KMS.2201"),
                             "context": _context(f)},
                  lambda out, a: {"data_key": _hex(out), "datakey_length": str(len(out)),
                                  "datakey_dgst": _hex(hashlib.sha256(out).digest())}, _one_key),
        Operation("gen-random", "gen_random",
                  lambda f: {"length": _random_bytes(f)}, lambda out, a: {"random_data": _hex(out)}),
        # signatures and MACs
        Operation("sign", "sign",
                  lambda f: {"key": _key(f), "message": _decoded(f, "message", "base64"),
                             "algorithm": _text(f, "signing_algorithm"), "message_type": _message_type(f)},
                  lambda out, a: {"key_id": a["key"], "signature": _b64(out)}, _one_key),
        Operation("verify", "verify",
                  lambda f: {"key": _key(f), "message": _decoded(f, "message", "base64"),
                             "signature": _decoded(f, "signature", "base64"),
                             "algorithm": _text(f, "signing_algorithm"), "message_type": _message_type(f)},
                  lambda ok, a: {"key_id": a["key"], "signature_valid": "true" if ok else "false"}, _one_key),
        Operation("get-publickey", "get_public_key", _key_only,
                  lambda pem, a: {"key_id": a["key"], "public_key": pem}, _one_key),
        Operation("generate-mac", "generate_mac",
                  lambda f: {"key": _key(f), "message": _decoded(f, "message", "base64"),
                             "algorithm": _text(f, "mac_algorithm", required=False)},
                  lambda out, a: {"key_id": a["key"], "mac_algorithm": a["algorithm"] or "", "mac": _b64(out)}, _one_key),
        Operation("verify-mac", "verify_mac",
                  lambda f: {"key": _key(f), "message": _decoded(f, "message", "base64"),
                             "mac": _decoded(f, "mac", "base64"), "algorithm": _text(f, "mac_algorithm", required=False)},
                  lambda ok, a: {"key_id": a["key"], "mac_algorithm": a["algorithm"] or "", "mac_valid": bool(ok)},
                  _one_key),
        # rotation
        Operation("enable-key-rotation", _enable_rotation, _key_only, _empty, _one_key, action="enable_key_rotation"),
        Operation("disable-key-rotation", "disable_key_rotation", _key_only, _empty, _one_key),
        Operation("update-key-rotation-interval", _update_interval,
                  lambda f: {"key": _key(f), "interval": _number(f, "rotation_interval", 30, 365, "KMS.3001")},
                  _empty, _one_key, action="enable_key_rotation"),
        Operation("get-key-rotation-status", "describe_key", _key_only, _rotation_status, _one_key),
        Operation("rotate-on-demand", "rotate_key", _key_only, lambda m, a: {"key_id": m.key_id}, _one_key),
        # imported material
        Operation("get-parameters-for-import", _import_parameters,
                  lambda f: {"key": _key(f), "algorithm": _text(f, "wrapping_algorithm", required=False)
                             or "RSAES_OAEP_SHA_256"},
                  lambda p, a: {"key_id": p.key_id, "import_token": p.import_token,
                                "expiration_time": int(p.expires_at), "public_key": _public_der(p.public_key_pem)},
                  _one_key, action="get_parameters_for_import"),
        Operation("import-key-material", "import_key_material", _import_args, _empty, _one_key),
        Operation("delete-imported-key-material", "delete_imported_key_material", _key_only, _empty, _one_key),
    ]
}


def _random_bytes(f: Mapping[str, Any]) -> int:
    bits = _number(f, "random_data_length", 8, 8192, "KMS.1801")
    if bits % 8:
        raise VendorError("KMS.1802", "random_data_length must be a whole number of bytes (a multiple of 8)")
    return bits // 8


# -- errors ------------------------------------------------------------------------------------

# (exception class, text its message holds or None, vendor code, HTTP status): the first row
# that matches. Messages are kmscore.rules' own; every pattern holds a space, which no
# alias can (so a key's name cannot steer the code). Codes: the vendor's error-code table.
ERRORS: list[tuple[type[BaseException], str | None, str, int]] = [
    (errors.AuthFailed, None, "APIGW.0301", 401),
    (errors.AccessDenied, None, "KMS.0306", 403),
    (errors.UnknownOperation, None, "APIGW.0101", 404),
    (errors.MalformedRequest, "request body ", "KMS.0203", 413),  # over the server's size or time limit
    (errors.MalformedRequest, None, "KMS.0202", 400),
    (kms_errors.NotFound, None, "KMS.0207", 404),
    (kms_errors.AlreadyExists, None, "KMS.1104", 400),
    (kms_errors.KeyUnavailable, " is Disabled", "KMS.0209", 400),
    (kms_errors.KeyUnavailable, "not scheduled for deletion", "KMS.1501", 400),
    (kms_errors.KeyUnavailable, "already scheduled for deletion", "KMS.1402", 400),
    (kms_errors.KeyUnavailable, " is PendingDeletion", "KMS.0210", 400),
    (kms_errors.KeyUnavailable, "no key material to delete", "KMS.2701", 400),
    (kms_errors.KeyUnavailable, None, "KMS.1301", 400),  # PendingImport, expired material: not enabled
    (kms_errors.KeyRuleViolation, " is a default key", "KMS.0211", 400),
    (kms_errors.KeyRuleViolation, "external keys never rotate", "KMS.0312", 400),
    (kms_errors.KeyRuleViolation, "only AES_256 keys can rotate", "KMS.0324", 400),
    (kms_errors.KeyRuleViolation, "only keys created with origin EXTERNAL", "KMS.0309", 400),
    (kms_errors.KeyRuleViolation, None, "KMS.0308", 400),
    (kms_errors.KeyImportError, "import token expired", "KMS.2601", 400),
    (kms_errors.KeyImportError, "held different key material", "KMS.2606", 400),
    (kms_errors.KeyImportError, "material must be 32 bytes", "KMS.2604", 400),
    (kms_errors.KeyImportError, None, "KMS.2605", 400),
    (kms_errors.InvalidCiphertext, None, "KMS.0308", 400),
    (kms_errors.InvalidRequest, "material expiry", "KMS.2602", 400),
    (kms_errors.InvalidRequest, " digest is ", "KMS.0329", 400),  # DIGEST message of the wrong length
    (kms_errors.InvalidRequest, None, "KMS.0308", 400),
    (kms_errors.KmsError, None, "KMS.0101", 500),
]

AUTH_MESSAGE = "Incorrect IAM authentication information: verify aksk signature fail"
"""The gateway's answer to every signature that does not hold (no detail: which part was
wrong, or whether the access key exists, would help an attacker)."""


def error_code(error: BaseException) -> tuple[str, int]:
    """The vendor's (code, HTTP status) for an error."""
    if isinstance(error, VendorError):
        return error.code, error.status
    text = str(error)
    return next(((code, status) for cls, pattern, code, status in ERRORS
                 if isinstance(error, cls) and (pattern is None or pattern in text)), ("KMS.0101", 500))


def error_message(error: BaseException, status: int) -> str:
    if isinstance(error, errors.RequestExpired):
        return "Incorrect IAM authentication information: X-Sdk-Date is more than 15 minutes from the server's time"
    if isinstance(error, errors.Replayed):
        return f"Incorrect IAM authentication information: {error}"
    if isinstance(error, errors.AuthFailed):
        return AUTH_MESSAGE
    if status >= 500:
        return "KMS error."
    if isinstance(error, errors.UnknownOperation):
        return "The API does not exist or has not been published in the environment."
    return str(error)


class VendorKms:
    name = "vendor"
    operations: Mapping[str, Operation] = OPERATIONS

    def accepts(self, req: WireRequest) -> bool:
        """Every path of the vendor's KMS API, so that one keyhold does not offer is
        answered in the vendor's own words (APIGW.0101), not keyhold's."""
        return _ANY_PATH.match(req.path) is not None

    def operation(self, req: WireRequest) -> str:
        m = _PATH.match(req.path)
        return m["op"] if m is not None and req.method == "POST" else f"{req.method} {req.path.split('/', 3)[-1]}"

    def authenticate(self, req: WireRequest, ctx) -> Principal:
        principal = sdkhmac.authenticate(req, ctx)
        project = req.header("x-project-id")
        m = _PATH.match(req.path)
        if project is not None and m is not None and project != m["project"]:
            raise VendorError("KMS.0321", "the project id in the URL differs from the signed X-Project-Id", 403)
        return principal

    def fields(self, req: WireRequest) -> dict[str, Any]:
        try:
            data = json.loads(req.body or b"{}")
        except ValueError:
            raise VendorError("KMS.0202", "Invalid JSON format of the request message.") from None
        if not isinstance(data, dict):
            raise VendorError("KMS.0202", "Invalid JSON format of the request message: an object is expected")
        return data

    def _headers(self, request_id: str) -> tuple[tuple[str, str], ...]:
        return (("content-type", CONTENT_TYPE), ("x-request-id", request_id))

    def respond(self, op: Operation, fields: dict[str, Any], request_id: str) -> WireResponse:
        return WireResponse(200, json.dumps(fields).encode(), self._headers(request_id))

    def fail(self, error: Exception, request_id: str) -> WireResponse:
        code, status = error_code(error)
        message = error_message(error, status)
        if code.startswith("APIGW."):  # the gateway's own shape
            body: dict[str, Any] = {"error_code": code, "error_msg": message, "request_id": request_id}
        else:
            body = {"error": {"error_code": code, "error_msg": message}}
        return WireResponse(status, json.dumps(body).encode(), self._headers(request_id))


API = VendorKms()
