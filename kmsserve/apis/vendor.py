"""The reference cloud's KMS v1.0 API (`POST /v1.0/{project_id}/kms/<operation>`, AK/SK
`SDK-HMAC-SHA256` signing), as a table: the vendor's SDK `huaweicloudsdkkms` works
unchanged. Facts about the API: ../shared/reference/vendor-kms-api.md; the mapping and
what is not offered: docs/api/vendor.md. The field converters (request fields -> facade
arguments, results -> response fields) are kmsserve/apis/vendorfields.py.

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

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from kmscore import blob as blobfmt
from kmscore import errors as kms_errors
from kmsserve import errors
from kmsserve.apis.vendorfields import (
    DOMAIN_ID, STATE_CODES, VendorError, alias, b64, context, create_args, datakey_bits, decoded, decrypted,
    dek_with_digest, description, hex_upper, import_args, key_details, key_of, list_args, message_type, named_key,
    number, public_der_base64, random_bytes, rotation_status, text,
)
from kmsserve.auth import sdkhmac
from kmsserve.wire import NewAlias, Operation, Principal, WireRequest, WireResponse, json_object

_ANY_PATH = re.compile(r"^/v(?:1\.0|2)/[^/]+/(?:kms|keystores)(?:/|$)")
_PATH = re.compile(r"^/v1\.0/(?P<project>[^/]+)/kms/(?P<op>[a-z-]+)$")
CONTENT_TYPE = "application/json;charset=UTF-8"


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
    for OAEP, so it comes wrapped by a temporary AES key (see import_args)."""
    if algorithm not in ("RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1"):
        raise VendorError("KMS.0308", "Invalid wrapping_algorithm: RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1")
    if kms.describe_key(key).spec.is_asymmetric:
        algorithm = "RSA_AES_KEY_WRAP_" + algorithm.removeprefix("RSAES_OAEP_")
    return kms.get_parameters_for_import(key, algorithm, "RSA_2048")


# -- the table -------------------------------------------------------------------------------

def _one_key(a: Mapping[str, Any]) -> tuple[str, ...]:
    return (a["key"],)


def _creating_keys(a: Mapping[str, Any]) -> tuple[Any, ...]:
    """A key made with an alias is checked against that alias (create_key on `mine/*`)."""
    return (NewAlias(a["alias"]),) if a.get("alias") else ()


def _aliasing_keys(a: Mapping[str, Any]) -> tuple[str, ...]:
    """The key renamed, and the alias it gets (the policy must allow both)."""
    return (a["key"], *((NewAlias(a["alias"]),) if a.get("alias") else ()))


def _decrypt_keys(a: Mapping[str, Any]) -> tuple[str, ...]:
    return (a["key"] or blobfmt.peek_key(a["ciphertext"])[0],)


def _state(meta, args) -> dict[str, Any]:
    return {"key_info": {"key_id": meta.key_id, "key_state": STATE_CODES[meta.state.value]}}


def _flat_state(meta, args) -> dict[str, Any]:
    return {"key_id": meta.key_id, "key_state": STATE_CODES[meta.state.value]}


def _empty(out, args) -> dict[str, Any]:
    return {}


def _key_only(f: Mapping[str, Any]) -> dict[str, Any]:
    return {"key": key_of(f)}


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in [
        # lifecycle
        Operation("create-key", "create_key", create_args,
                  lambda m, a: {"key_info": {"key_id": m.key_id, "domain_id": DOMAIN_ID}}, _creating_keys),
        Operation("describe-key", "describe_key", _key_only, lambda m, a: {"key_info": key_details(m)}, _one_key),
        Operation("list-keys", _list_keys, list_args, lambda out, a: out, action="list_keys"),
        Operation("enable-key", "enable_key", _key_only, _state, _one_key),
        Operation("disable-key", "disable_key", _key_only, _state, _one_key),
        Operation("schedule-key-deletion", "schedule_key_deletion",
                  lambda f: {"key": key_of(f), "pending_days": number(f, "pending_days", 7, 1096, "KMS.1401")},
                  _flat_state, _one_key),
        Operation("cancel-key-deletion", "cancel_key_deletion", _key_only, _flat_state, _one_key),
        Operation("update-key-alias", "update_key_alias", lambda f: {"key": key_of(f), "alias": alias(f, True)},
                  lambda m, a: {"key_info": {"key_id": m.key_id, "key_alias": m.alias}}, _aliasing_keys),
        Operation("update-key-description", "update_key_description",
                  lambda f: {"key": key_of(f), "description": description(f)},
                  lambda m, a: {"key_info": {"key_id": m.key_id, "key_description": m.description}}, _one_key),
        # small data
        Operation("encrypt-data", "encrypt_data",
                  lambda f: {"key": key_of(f), "plaintext": text(f, "plain_text").encode(),  # type: ignore[union-attr]
                             "context": context(f), "algorithm": text(f, "encryption_algorithm", required=False)},
                  lambda out, a: {"key_id": named_key(out, a), "cipher_text": b64(out)}, _one_key),
        Operation("decrypt-data", "decrypt_data",
                  lambda f: {"ciphertext": decoded(f, "cipher_text", "base64"), "context": context(f),
                             "key": text(f, "key_id", required=False),
                             "algorithm": text(f, "encryption_algorithm", required=False)},
                  decrypted, _decrypt_keys),
        # data keys
        Operation("create-datakey", "create_datakey",
                  lambda f: {"key": key_of(f), "bits": datakey_bits(f), "context": context(f)},
                  lambda dk, a: {"key_id": dk.key_id, "plain_text": hex_upper(dk.plaintext), "cipher_text": hex_upper(dk.ciphertext)},
                  _one_key),
        Operation("create-datakey-without-plaintext", "create_datakey",
                  lambda f: {"key": key_of(f), "bits": datakey_bits(f), "context": context(f), "with_plaintext": False},
                  lambda dk, a: {"key_id": dk.key_id, "cipher_text": hex_upper(dk.ciphertext)}, _one_key),
        Operation("encrypt-datakey", "encrypt_datakey",
                  lambda f: {"key": key_of(f), "plaintext": dek_with_digest(f), "context": context(f)},
                  lambda out, a: {"key_id": a["key"], "cipher_text": hex_upper(out), "datakey_length": str(len(a["plaintext"]))},
                  _one_key),
        Operation("decrypt-datakey", "decrypt_datakey",
                  lambda f: {"key": key_of(f), "ciphertext": decoded(f, "cipher_text", "hex", code="KMS.2201"),
                             "context": context(f)},
                  lambda out, a: {"data_key": hex_upper(out), "datakey_length": str(len(out)),
                                  "datakey_dgst": hex_upper(hashlib.sha256(out).digest())}, _one_key),
        Operation("gen-random", "gen_random",
                  lambda f: {"length": random_bytes(f)}, lambda out, a: {"random_data": hex_upper(out)}),
        # signatures and MACs
        Operation("sign", "sign",
                  lambda f: {"key": key_of(f), "message": decoded(f, "message", "base64"),
                             "algorithm": text(f, "signing_algorithm"), "message_type": message_type(f)},
                  lambda out, a: {"key_id": a["key"], "signature": b64(out)}, _one_key),
        Operation("verify", "verify",
                  lambda f: {"key": key_of(f), "message": decoded(f, "message", "base64"),
                             "signature": decoded(f, "signature", "base64"),
                             "algorithm": text(f, "signing_algorithm"), "message_type": message_type(f)},
                  lambda ok, a: {"key_id": a["key"], "signature_valid": "true" if ok else "false"}, _one_key),
        Operation("get-publickey", "get_public_key", _key_only,
                  lambda pem, a: {"key_id": a["key"], "public_key": pem}, _one_key),
        Operation("generate-mac", "generate_mac",
                  lambda f: {"key": key_of(f), "message": decoded(f, "message", "base64"),
                             "algorithm": text(f, "mac_algorithm", required=False)},
                  lambda out, a: {"key_id": a["key"], "mac_algorithm": a["algorithm"] or "", "mac": b64(out)}, _one_key),
        Operation("verify-mac", "verify_mac",
                  lambda f: {"key": key_of(f), "message": decoded(f, "message", "base64"),
                             "mac": decoded(f, "mac", "base64"), "algorithm": text(f, "mac_algorithm", required=False)},
                  lambda ok, a: {"key_id": a["key"], "mac_algorithm": a["algorithm"] or "", "mac_valid": bool(ok)},
                  _one_key),
        # rotation
        Operation("enable-key-rotation", _enable_rotation, _key_only, _empty, _one_key, action="enable_key_rotation"),
        Operation("disable-key-rotation", "disable_key_rotation", _key_only, _empty, _one_key),
        Operation("update-key-rotation-interval", _update_interval,
                  lambda f: {"key": key_of(f), "interval": number(f, "rotation_interval", 30, 365, "KMS.3001")},
                  _empty, _one_key, action="enable_key_rotation"),
        Operation("get-key-rotation-status", "describe_key", _key_only, rotation_status, _one_key),
        Operation("rotate-on-demand", "rotate_key", _key_only, lambda m, a: {"key_id": m.key_id}, _one_key),
        # imported material
        Operation("get-parameters-for-import", _import_parameters,
                  lambda f: {"key": key_of(f), "algorithm": text(f, "wrapping_algorithm", required=False)
                             or "RSAES_OAEP_SHA_256"},
                  lambda p, a: {"key_id": p.key_id, "import_token": p.import_token,
                                "expiration_time": int(p.expires_at), "public_key": public_der_base64(p.public_key_pem)},
                  _one_key, action="get_parameters_for_import"),
        Operation("import-key-material", "import_key_material", import_args, _empty, _one_key),
        Operation("delete-imported-key-material", "delete_imported_key_material", _key_only, _empty, _one_key),
    ]
}


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
        return json_object(req.body, lambda message: VendorError("KMS.0202", message),
                           "Invalid JSON format of the request message.",
                           "Invalid JSON format of the request message: an object is expected")

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
