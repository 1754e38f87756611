"""The AWS KMS JSON 1.1 API (`POST /`, `X-Amz-Target: TrentService.<Operation>`, SigV4
with service `kms`), as a table: boto3 and the `aws kms` CLI work unchanged.

One `Operation` row per AWS operation: the facade method (or a small function of the
facade where AWS's operation is several calls, or answers with what one call does not
return), request fields -> arguments (kmsserve.apis.awsfields), result -> response
fields, the keys the caller's policy is checked against. Operations AWS has and keyhold
does not offer are rows too (NOT_OFFERED: they answer UnsupportedOperationException
after authentication); a target AWS does not have answers UnknownOperationException, as
AWS does. Errors are a table of (exception, operations, AWS code, HTTP status). The
mapping is documented in docs/api/aws.md, and tests check the tables against botocore's
own model of the service.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, NamedTuple

from kmscore import blob as blobfmt
from kmscore import errors as kms_errors
from kmscore import rules
from kmscore.specs import KeySpec, KeyState, Origin
from kmsserve import errors
from kmsserve.apis import awsfields as F
from kmsserve.auth import sigv4
from kmsserve.wire import NewAlias, Operation, Principal, WireRequest, WireResponse, json_object

TARGET_PREFIX = "TrentService."
CONTENT_TYPE = "application/x-amz-json-1.1"
SIGNED_HEADERS = ("x-amz-target", "content-type")
"""Headers the signature must cover when sent (botocore signs both): X-Amz-Target is the
operation, and an unsigned one would let whoever holds a captured request change it."""
MAX_LIST = 1000
"""Limit's upper bound in ListKeys and ListAliases (AWS's); the default is 100."""


class _Request(NamedTuple):
    operation: str
    region: str


_REQUEST: ContextVar[_Request] = ContextVar("kmsserve_aws_request", default=_Request("", F.DEFAULT_REGION))
"""The request being dispatched in this thread: its operation (some errors' code depends
on it) and the region it was signed for (the ARNs in its answer). Set by
`AwsKms.operation`, the first thing `wire.dispatch` asks, so it never outlives a request."""
_SCOPE_REGION = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]{1,40})/kms/aws4_request")


def _arn(key_id: str) -> str:
    return F.key_arn(key_id, _REQUEST.get().region)


def _metadata(md) -> dict[str, Any]:
    return {"KeyMetadata": F.key_metadata(md, _REQUEST.get().region)}


def _key_id(kms, name: str) -> str:
    """The id of a key named by id or alias (an alias costs one unaudited store read)."""
    return name if F.is_key_id(name) else kms.key_name(name)[0]


def _empty(out: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def _key(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {"key": F.key_name(F.required(fields, "KeyId"))}


def _the_key(args: Mapping[str, Any]) -> tuple[str, ...]:
    return (args["key"],)


def _decrypting_key(name: str | None, ciphertext: bytes) -> str:
    """The key a decryption uses: the one named, else the one inside the ciphertext."""
    return name if name is not None else blobfmt.peek_key(ciphertext)[0]


# -- functions of the facade, for operations that are not one facade call ---------------
def _on_key(method: str) -> Callable[..., tuple[str, Any]]:
    """A facade method on one key, returning (its key id, the result): AWS answers name
    the key by its ARN even when the request named it by alias."""

    def call(kms, **args: Any) -> tuple[str, Any]:
        out = getattr(kms, method)(**args)
        return _key_id(kms, args["key"]), out

    call.__name__ = method
    return call


def _encrypt(kms, key: str, plaintext: bytes, context=None, algorithm=None) -> tuple[str, bytes]:
    out = kms.encrypt_data(key, plaintext, context, algorithm)
    # a SYMMETRIC_DEFAULT ciphertext is keyhold's blob, which names its key: no lookup
    return (blobfmt.peek_key(out)[0] if algorithm == "SYMMETRIC_DEFAULT" else _key_id(kms, key)), out


def _decrypt(kms, ciphertext: bytes, context=None, key=None, algorithm=None) -> tuple[str, bytes]:
    plaintext = kms.decrypt_data(ciphertext, context, key, algorithm)
    if algorithm == "SYMMETRIC_DEFAULT":  # the blob named its key (and it was that key)
        return blobfmt.peek_key(ciphertext)[0], plaintext
    return _key_id(kms, _decrypting_key(key, ciphertext)), plaintext


class ReEncrypted(NamedTuple):
    source_key_id: str
    key_id: str
    ciphertext: bytes


def _re_encrypt(kms, ciphertext: bytes, source_context, source_key, source_algorithm,
                destination_key: str, destination_context, destination_algorithm) -> ReEncrypted:
    """Decrypt then encrypt, both as the caller (each audited; the plaintext stays here)."""
    plaintext = kms.decrypt_data(ciphertext, source_context, source_key, source_algorithm)
    out = kms.encrypt_data(destination_key, plaintext, destination_context, destination_algorithm)
    return ReEncrypted(_key_id(kms, _decrypting_key(source_key, ciphertext)), _key_id(kms, destination_key), out)


def _public_key(kms, key: str):
    pem = kms.get_public_key(key)  # first: a key without one is refused as GetPublicKey
    return pem, kms.describe_key(key)


def _page(items: list[tuple[str, Any]], limit: int | None, marker: str | None) -> tuple[list[Any], str | None]:
    """A page of (sort key, item) pairs after `marker` (the last sort key of the page before)."""
    if limit is None:
        limit = 100
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
        raise kms_errors.InvalidRequest(f"Limit must be between 1 and {MAX_LIST}")
    if marker is not None and (not isinstance(marker, str) or not marker):
        raise F.InvalidMarker("Marker is not one this server handed out")
    items = sorted(items, key=lambda p: p[0])
    rest = [p for p in items if marker is None or p[0] > marker]
    page = rest[:limit]
    return [item for _, item in page], (page[-1][0] if len(rest) > limit else None)


def _list_keys(kms, limit=None, marker=None):
    return _page([(md.key_id, md) for md in kms.list_keys()], limit, marker)


def _list_aliases(kms, key=None, limit=None, marker=None):
    keys = kms.list_keys()
    if key is not None:
        key_id = kms.key_name(key)[0]  # None: a default key not made yet, which has no alias
        keys = [md for md in keys if md.key_id == key_id]
    return _page([(md.alias, md) for md in keys if md.alias], limit, marker)


_ALIASES = threading.Lock()
"""Alias changes are a check then a change (keyhold keys have one alias, and
update_key_alias renames): one at a time in this server, so two CreateAlias calls on one
key cannot both pass the check and leave only the second alias."""


def _alias_taken(kms, alias: str) -> bool:
    try:
        kms.key_name(alias)
    except kms_errors.NotFound:
        return False
    return True


def _create_alias(kms, alias: str, key: str) -> None:
    """keyhold gives a key one alias: a second is refused (LimitExceededException)."""
    with _ALIASES:
        _create_alias_now(kms, alias, key)


def _create_alias_now(kms, alias: str, key: str) -> None:
    if _alias_taken(kms, alias):
        raise kms_errors.AlreadyExists(f"alias alias/{alias} already exists")
    target = kms.describe_key(key)
    if target.alias is not None:
        raise F.LimitExceeded(
            f"key {target.key_id} already has the alias alias/{target.alias}: a keyhold key has one alias "
            "(UpdateAlias moves an alias to another key)")
    kms.update_key_alias(key, alias)


def _same_kind(spec: KeySpec) -> str:
    return "symmetric" if spec is KeySpec.AES_256 else "HMAC" if spec.family == "HMAC" else "asymmetric"


def _update_alias(kms, alias: str, key: str) -> None:
    """Move an alias to another key (of the same kind and usage, as AWS requires): off the
    old key, onto the new one; the old key gets it back if the second step fails."""
    with _ALIASES:
        _update_alias_now(kms, alias, key)


def _update_alias_now(kms, alias: str, key: str) -> None:
    old = kms.describe_key(alias)
    new = kms.describe_key(key)
    if old.key_id == new.key_id:
        return
    if new.alias is not None:
        raise F.LimitExceeded(f"key {new.key_id} already has the alias alias/{new.alias}: a keyhold key has one alias")
    if _same_kind(old.spec) != _same_kind(new.spec) or old.usage is not new.usage:
        raise kms_errors.InvalidRequest(
            f"alias/{alias} names a {_same_kind(old.spec)} {old.usage.value} key: it can only move to a key of "
            "the same kind and usage")
    kms.update_key_alias(old.key_id, None)
    try:
        kms.update_key_alias(new.key_id, alias)
    except Exception:
        kms.update_key_alias(old.key_id, alias)
        raise


def _delete_alias(kms, alias: str) -> None:
    with _ALIASES:
        kms.update_key_alias(alias, None)


def _never(kms, **args: Any) -> None:
    raise AssertionError("an operation keyhold does not offer is refused by its args")


# -- request fields -> arguments -----------------------------------------------------------
def _create_key_args(f: Mapping[str, Any]) -> dict[str, Any]:
    spec = F.KEY_SPECS.get(f, "KeySpec") or F.KEY_SPECS.get(f, "CustomerMasterKeySpec", KeySpec.AES_256)
    origin = F.ORIGINS.get(f, "Origin", Origin.KMS)
    usage = F.KEY_USAGES.get(f, "KeyUsage")
    try:
        rules.resolve_create(spec, usage, origin)
    except kms_errors.KeyRuleViolation as e:
        raise kms_errors.InvalidRequest(str(e)) from None
    return {"spec": spec, "usage": usage, "origin": origin, "description": F.text(f, "Description", "")}


def _encrypt_args(f: Mapping[str, Any]) -> dict[str, Any]:
    return {**_key(f), "plaintext": F.blob(f, "Plaintext"), "context": F.context(f),
            "algorithm": F.ENCRYPTION_ALGORITHMS.get(f, "EncryptionAlgorithm", "SYMMETRIC_DEFAULT")}


def _decrypt_args(f: Mapping[str, Any]) -> dict[str, Any]:
    key = f.get("KeyId")
    return {"ciphertext": F.blob(f, "CiphertextBlob"), "context": F.context(f),
            "key": None if key is None else F.key_name(key),
            "algorithm": F.ENCRYPTION_ALGORITHMS.get(f, "EncryptionAlgorithm", "SYMMETRIC_DEFAULT")}


def _re_encrypt_args(f: Mapping[str, Any]) -> dict[str, Any]:
    source = f.get("SourceKeyId")
    return {
        "ciphertext": F.blob(f, "CiphertextBlob"),
        "source_context": F.context(f, "SourceEncryptionContext"),
        "source_key": None if source is None else F.key_name(source, "SourceKeyId"),
        "source_algorithm": F.ENCRYPTION_ALGORITHMS.get(f, "SourceEncryptionAlgorithm", "SYMMETRIC_DEFAULT"),
        "destination_key": F.key_name(F.required(f, "DestinationKeyId"), "DestinationKeyId"),
        "destination_context": F.context(f, "DestinationEncryptionContext"),
        "destination_algorithm": F.ENCRYPTION_ALGORITHMS.get(f, "DestinationEncryptionAlgorithm", "SYMMETRIC_DEFAULT"),
    }


def _data_key_args(with_plaintext: bool) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    return lambda f: {**_key(f), "bits": F.data_key_bits(f), "context": F.context(f), "with_plaintext": with_plaintext}


def _sign_args(f: Mapping[str, Any]) -> dict[str, Any]:
    return {**_key(f), "message": F.blob(f, "Message"),
            "algorithm": F.SIGNING_ALGORITHMS.parse(F.required(f, "SigningAlgorithm")),
            "message_type": F.MESSAGE_TYPES.get(f, "MessageType", "RAW")}


def _verify_args(f: Mapping[str, Any]) -> dict[str, Any]:
    return {**_sign_args(f), "signature": F.blob(f, "Signature")}


def _mac_args(f: Mapping[str, Any]) -> dict[str, Any]:
    return {**_key(f), "message": F.blob(f, "Message"), "algorithm": F.MAC_ALGORITHMS.parse(F.required(f, "MacAlgorithm"))}


def _import_args(f: Mapping[str, Any]) -> dict[str, Any]:
    model = F.EXPIRATION_MODELS.get(f, "ExpirationModel")
    valid_to = F.timestamp(f, "ValidTo")
    if model == "KEY_MATERIAL_EXPIRES" and valid_to is None:
        raise kms_errors.InvalidRequest("ValidTo is required when ExpirationModel is KEY_MATERIAL_EXPIRES")
    if model == "KEY_MATERIAL_DOES_NOT_EXPIRE" and valid_to is not None:
        raise kms_errors.InvalidRequest("ValidTo must be omitted when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE")
    token = F.blob(f, "ImportToken")
    try:
        token_text = token.decode("ascii")  # type: ignore[union-attr]
    except UnicodeDecodeError:
        raise kms_errors.InvalidImportToken("the import token is not one this server handed out") from None
    return {**_key(f), "import_token": token_text, "encrypted_material": F.blob(f, "EncryptedKeyMaterial"),
            "expires_at": valid_to}


def _alias_args(new: bool) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    return lambda f: {"alias": F.alias_name(F.required(f, "AliasName"), new=new),
                      "key": F.key_name(F.required(f, "TargetKeyId"), "TargetKeyId")}


def _list_args(f: Mapping[str, Any]) -> dict[str, Any]:
    return {"limit": F.integer(f, "Limit"), "marker": F.text(f, "Marker")}


# -- results -> response fields ---------------------------------------------------------------
def _keys_page(out, a) -> dict[str, Any]:
    page, marker = out
    body: dict[str, Any] = {"Keys": [{"KeyId": md.key_id, "KeyArn": _arn(md.key_id)} for md in page],
                            "Truncated": marker is not None}
    return {**body, "NextMarker": marker} if marker else body


def _aliases_page(out, a) -> dict[str, Any]:
    page, marker = out
    region = _REQUEST.get().region
    body: dict[str, Any] = {
        "Aliases": [{"AliasName": F.ALIAS_PREFIX + md.alias, "AliasArn": F.alias_arn(md.alias, region),
                     "TargetKeyId": md.key_id} for md in page],
        "Truncated": marker is not None,
    }
    return {**body, "NextMarker": marker} if marker else body


def _verified(out, a) -> dict[str, Any]:
    key_id, valid = out
    if not valid:
        raise F.InvalidSignature("the signature is not valid for this key, message and algorithm")
    return {"KeyId": _arn(key_id), "SignatureValid": True, "SigningAlgorithm": a["algorithm"]}


def _mac_verified(out, a) -> dict[str, Any]:
    key_id, valid = out
    if not valid:
        raise F.InvalidMac("the MAC is not valid for this key, message and algorithm")
    return {"KeyId": _arn(key_id), "MacValid": True, "MacAlgorithm": a["algorithm"]}


def _public_key_fields(out, a) -> dict[str, Any]:
    pem, md = out
    spec = F.KEY_SPECS.aws(md.spec)
    return {"KeyId": _arn(md.key_id), "PublicKey": F.b64(F.public_key_der(pem)), "CustomerMasterKeySpec": spec,
            "KeySpec": spec, "KeyUsage": md.usage.value, **F.algorithms(md.spec, md.usage)}


def _rotation_status(md, a) -> dict[str, Any]:
    """Keys that do not rotate (asymmetric, HMAC, imported) answer false, as AWS's do;
    a key pending deletion answers false too (it does not rotate while pending)."""
    enabled = md.rotation_enabled and md.state is not KeyState.PENDING_DELETION
    body: dict[str, Any] = {"KeyRotationEnabled": enabled, "KeyId": _arn(md.key_id)}
    if enabled:
        body.update(RotationPeriodInDays=md.rotation_interval_days, NextRotationDate=md.next_rotation_at)
    return body


def _import_parameters(out, a) -> dict[str, Any]:
    return {"KeyId": _arn(out.key_id), "ImportToken": F.b64(out.import_token.encode()),
            "PublicKey": F.b64(F.public_key_der(out.public_key_pem)), "ParametersValidTo": out.expires_at}


def _key_arn_of(md, a) -> dict[str, Any]:
    return {"KeyId": _arn(md.key_id)}


# -- the table ----------------------------------------------------------------------------------
NOT_OFFERED: dict[str, str] = {
    **dict.fromkeys("CreateGrant ListGrants ListRetirableGrants RetireGrant RevokeGrant".split(),
                    "grants: access is given by access-key policies (docs/API.md)"),
    **dict.fromkeys("GetKeyPolicy PutKeyPolicy ListKeyPolicies".split(),
                    "key policies: access is given by access-key policies (docs/API.md)"),
    **dict.fromkeys("TagResource UntagResource ListResourceTags".split(), "tags"),
    **dict.fromkeys("CreateCustomKeyStore ConnectCustomKeyStore DeleteCustomKeyStore DescribeCustomKeyStores "
                    "DisconnectCustomKeyStore UpdateCustomKeyStore".split(), "custom key stores"),
    **dict.fromkeys("ReplicateKey UpdatePrimaryRegion".split(), "multi-Region keys"),
    **dict.fromkeys("GenerateDataKeyPair GenerateDataKeyPairWithoutPlaintext".split(), "data key pairs"),
    **dict.fromkeys("DeriveSharedSecret Encapsulate Decapsulate".split(), "key agreement and KEM keys"),
    "ListKeyRotations": "a list of past rotations (DescribeKey and GetKeyRotationStatus tell the current state)",
    "GetKeyLastUsage": "key usage tracking (the audit log has it: `kms audit list --key`)",
}
"""AWS operations keyhold does not offer, and what they are about (their answer:
UnsupportedOperationException, after authentication)."""

NOT_OFFERED_FIELDS: dict[str, str] = {
    "DryRun": "dry runs", "DryRunModifiers": "dry runs", "Recipient": "Nitro Enclaves recipients",
    "CustomKeyStoreId": "custom key stores", "XksKeyId": "external key stores",
    "MultiRegion": "multi-Region keys", "Tags": "tags",
    "Policy": "key policies (access is given by access-key policies, docs/API.md)",
}
"""Request fields keyhold refuses when set (true, non-empty) rather than ignore: each
would mean something keyhold does not do. GrantTokens, BypassPolicyLockoutSafetyCheck,
ImportType, KeyMaterialDescription and KeyMaterialId are accepted and ignored (grant
tokens only add rights, and there are no grants; the others describe one material)."""


def _refuse(name: str, what: str) -> Operation:
    def args(fields: Mapping[str, Any]) -> dict[str, Any]:
        raise F.Unsupported(f"keyhold does not offer {name}: no {what}")

    return Operation(name, _never, args=args, result=_empty, action="not_offered")


_ROWS = [
    # -- keys
    Operation("CreateKey", "create_key", args=_create_key_args, result=lambda md, a: _metadata(md)),
    Operation("DescribeKey", "describe_key", args=_key, result=lambda md, a: _metadata(md), keys=_the_key),
    Operation("ListKeys", _list_keys, args=_list_args, result=_keys_page, action="list_keys"),
    Operation("EnableKey", "enable_key", args=_key, result=_empty, keys=_the_key),
    Operation("DisableKey", "disable_key", args=_key, result=_empty, keys=_the_key),
    Operation("ScheduleKeyDeletion", "schedule_key_deletion",
              args=lambda f: {**_key(f), "pending_days": F.integer(f, "PendingWindowInDays", 30)},
              result=lambda md, a: {"KeyId": _arn(md.key_id), "DeletionDate": md.deletion_date,
                                    "KeyState": md.state.value, "PendingWindowInDays": a["pending_days"]},
              keys=_the_key),
    Operation("CancelKeyDeletion", "cancel_key_deletion", args=_key, result=_key_arn_of, keys=_the_key),
    Operation("UpdateKeyDescription", "update_key_description",
              args=lambda f: {**_key(f), "description": F.text(f, "Description", "")}, result=_empty, keys=_the_key),
    # -- aliases (a keyhold key has at most one)
    Operation("ListAliases", _list_aliases,
              args=lambda f: {**_list_args(f), "key": None if f.get("KeyId") is None else F.key_name(f["KeyId"])},
              result=_aliases_page, keys=lambda a: () if a["key"] is None else (a["key"],), action="list_keys"),
    Operation("CreateAlias", _create_alias, args=_alias_args(new=True), result=_empty,
              keys=lambda a: (a["key"], NewAlias(a["alias"])), action="update_key_alias"),
    Operation("UpdateAlias", _update_alias, args=_alias_args(new=False), result=_empty,
              keys=lambda a: (a["alias"], a["key"]), action="update_key_alias"),
    Operation("DeleteAlias", _delete_alias, args=lambda f: {"alias": F.alias_name(F.required(f, "AliasName"), new=False)},
              result=_empty, keys=lambda a: (a["alias"],), action="update_key_alias"),
    # -- symmetric and RSA encryption, data keys
    Operation("Encrypt", _encrypt, args=_encrypt_args, keys=_the_key, action="encrypt_data",
              result=lambda out, a: {"CiphertextBlob": F.b64(out[1]), "KeyId": _arn(out[0]),
                                     "EncryptionAlgorithm": a["algorithm"]}),
    Operation("Decrypt", _decrypt, args=_decrypt_args, action="decrypt_data",
              keys=lambda a: (_decrypting_key(a["key"], a["ciphertext"]),),
              result=lambda out, a: {"KeyId": _arn(out[0]), "Plaintext": F.b64(out[1]),
                                     "EncryptionAlgorithm": a["algorithm"]}),
    Operation("ReEncrypt", _re_encrypt, args=_re_encrypt_args, action="decrypt_data",
              keys=lambda a: (("decrypt_data", _decrypting_key(a["source_key"], a["ciphertext"])),
                              ("encrypt_data", a["destination_key"])),
              result=lambda out, a: {"CiphertextBlob": F.b64(out.ciphertext), "SourceKeyId": _arn(out.source_key_id),
                                     "KeyId": _arn(out.key_id), "SourceEncryptionAlgorithm": a["source_algorithm"],
                                     "DestinationEncryptionAlgorithm": a["destination_algorithm"]}),
    Operation("GenerateDataKey", "create_datakey", args=_data_key_args(True), keys=_the_key,
              result=lambda dk, a: {"CiphertextBlob": F.b64(dk.ciphertext), "Plaintext": F.b64(dk.plaintext),
                                    "KeyId": _arn(dk.key_id)}),
    Operation("GenerateDataKeyWithoutPlaintext", "create_datakey", args=_data_key_args(False), keys=_the_key,
              result=lambda dk, a: {"CiphertextBlob": F.b64(dk.ciphertext), "KeyId": _arn(dk.key_id)}),
    Operation("GenerateRandom", "gen_random", args=lambda f: {"length": F.integer(f, "NumberOfBytes")},
              result=lambda out, a: {"Plaintext": F.b64(out)}),
    # -- signatures and MACs
    Operation("Sign", _on_key("sign"), args=_sign_args, keys=_the_key, action="sign",
              result=lambda out, a: {"KeyId": _arn(out[0]), "Signature": F.b64(out[1]), "SigningAlgorithm": a["algorithm"]}),
    Operation("Verify", _on_key("verify"), args=_verify_args, keys=_the_key, action="verify", result=_verified),
    Operation("GetPublicKey", _public_key, args=_key, keys=_the_key, action="get_public_key", result=_public_key_fields),
    Operation("GenerateMac", _on_key("generate_mac"), args=_mac_args, keys=_the_key, action="generate_mac",
              result=lambda out, a: {"Mac": F.b64(out[1]), "MacAlgorithm": a["algorithm"], "KeyId": _arn(out[0])}),
    Operation("VerifyMac", _on_key("verify_mac"), args=lambda f: {**_mac_args(f), "mac": F.blob(f, "Mac")},
              keys=_the_key, action="verify_mac", result=_mac_verified),
    # -- rotation
    Operation("EnableKeyRotation", "enable_key_rotation",
              args=lambda f: {**_key(f), "interval_days": F.integer(f, "RotationPeriodInDays", 365)},
              result=_empty, keys=_the_key),
    Operation("DisableKeyRotation", "disable_key_rotation", args=_key, result=_empty, keys=_the_key),
    Operation("GetKeyRotationStatus", "describe_key", args=_key, result=_rotation_status, keys=_the_key),
    Operation("RotateKeyOnDemand", "rotate_key", args=_key, result=_key_arn_of, keys=_the_key),
    # -- imported key material
    Operation("GetParametersForImport", "get_parameters_for_import", keys=_the_key, result=_import_parameters,
              args=lambda f: {**_key(f),
                              "wrapping_algorithm": F.WRAPPING_ALGORITHMS.parse(F.required(f, "WrappingAlgorithm")),
                              "wrapping_key_spec": F.WRAPPING_KEY_SPECS.parse(F.required(f, "WrappingKeySpec"))}),
    Operation("ImportKeyMaterial", "import_key_material", args=_import_args, result=_key_arn_of, keys=_the_key),
    Operation("DeleteImportedKeyMaterial", "delete_imported_key_material", args=_key, result=_key_arn_of,
              keys=_the_key),
]

OPERATIONS: dict[str, Operation] = {
    op.name: op for op in [*_ROWS, *(_refuse(name, what) for name, what in NOT_OFFERED.items())]
}

CRYPTO = frozenset(
    "Encrypt Decrypt ReEncrypt GenerateDataKey GenerateDataKeyWithoutPlaintext Sign Verify GetPublicKey "
    "GenerateMac VerifyMac".split()
)
"""Operations that use a key's material: a key of the wrong spec or usage for them is
InvalidKeyUsageException; elsewhere a key rule (rotate an RSA key, import into a
KMS-made key, disable a default key) is UnsupportedOperationException."""

ERRORS: list[tuple[type[BaseException], frozenset[str] | None, str, int]] = [
    # (exception class, operations it applies to (None: all), AWS error code, HTTP status):
    # the first row whose class the error is an instance of, for this operation
    (errors.RequestExpired, None, "InvalidSignatureException", 400),
    (errors.AuthFailed, None, "UnrecognizedClientException", 400),
    (errors.AccessDenied, None, "AccessDeniedException", 400),
    (errors.UnknownOperation, None, "UnknownOperationException", 400),
    (F.Unsupported, None, "UnsupportedOperationException", 400),
    (F.InvalidArn, None, "InvalidArnException", 400),
    (F.InvalidAliasName, None, "InvalidAliasNameException", 400),
    (F.InvalidMarker, None, "InvalidMarkerException", 400),
    (F.LimitExceeded, None, "LimitExceededException", 400),
    (F.InvalidSignature, None, "KMSInvalidSignatureException", 400),
    (F.InvalidMac, None, "KMSInvalidMacException", 400),
    (errors.MalformedRequest, None, "SerializationException", 400),
    (kms_errors.NotFound, None, "NotFoundException", 400),
    (kms_errors.AlreadyExists, None, "AlreadyExistsException", 400),
    (kms_errors.KeyDisabled, None, "DisabledException", 400),
    (kms_errors.KeyUnavailable, None, "KMSInvalidStateException", 400),
    (kms_errors.IncorrectKey, None, "IncorrectKeyException", 400),
    (kms_errors.InvalidCiphertext, None, "InvalidCiphertextException", 400),
    (kms_errors.KeyRuleViolation, CRYPTO, "InvalidKeyUsageException", 400),
    (kms_errors.KeyRuleViolation, None, "UnsupportedOperationException", 400),
    (kms_errors.InvalidImportToken, None, "InvalidImportTokenException", 400),
    (kms_errors.ExpiredImportToken, None, "ExpiredImportTokenException", 400),
    (kms_errors.IncorrectKeyMaterial, None, "IncorrectKeyMaterialException", 400),
    (kms_errors.KeyImportError, None, "InvalidCiphertextException", 400),  # the material did not unwrap
    (kms_errors.InvalidRequest, None, "ValidationException", 400),
    (kms_errors.StoreError, None, "DependencyTimeoutException", 500),
    (kms_errors.KmsError, None, "KMSInternalException", 500),
]
INTERNAL = ("KMSInternalException", 500)


def error_code(error: BaseException, operation: str) -> tuple[str, int]:
    """The AWS code and HTTP status of an error raised while serving `operation`."""
    return next(((code, status) for cls, ops, code, status in ERRORS
                 if isinstance(error, cls) and (ops is None or operation in ops)), INTERNAL)


def _message(error: BaseException, status: int) -> str:
    """What the client is told: keyhold's own message for a refusal (it names the key and
    the rule, never material), nothing that helps an attacker for a signature, nothing
    of an internal error."""
    if status >= 500:
        return "internal error; the server's log has the details"
    if isinstance(error, errors.AuthFailed) and not isinstance(error, errors.RequestExpired):
        return "The security token included in the request is invalid."
    return str(error) if isinstance(error, (kms_errors.KmsError, errors.ServeError)) else "internal error"


class AwsKms:
    name = "aws"
    operations: Mapping[str, Operation] = OPERATIONS

    def accepts(self, req: WireRequest) -> bool:
        return req.method == "POST" and req.path == "/" and (req.header("x-amz-target") or "").startswith(TARGET_PREFIX)

    def operation(self, req: WireRequest) -> str:
        name = (req.header("x-amz-target") or "")[len(TARGET_PREFIX):]
        m = _SCOPE_REGION.search(req.header("authorization") or "")
        _REQUEST.set(_Request(name, m[1] if m else F.DEFAULT_REGION))
        return name

    def authenticate(self, req: WireRequest, ctx) -> Principal:
        return sigv4.authenticate(req, ctx, "kms", must_sign=SIGNED_HEADERS)

    def fields(self, req: WireRequest) -> dict[str, Any]:
        data = json_object(req.body)
        for name, what in NOT_OFFERED_FIELDS.items():
            if data.get(name):
                raise F.Unsupported(f"keyhold does not offer {what}: drop {name}")
        return data

    def respond(self, op: Operation, fields: dict[str, Any], request_id: str) -> WireResponse:
        return WireResponse(200, json.dumps(fields).encode(), (("content-type", CONTENT_TYPE), ("x-amzn-requestid", request_id)))

    def fail(self, error: Exception, request_id: str) -> WireResponse:
        code, status = error_code(error, _REQUEST.get().operation)
        body = {"__type": code, "message": _message(error, status)}
        return WireResponse(status, json.dumps(body).encode(), (("content-type", CONTENT_TYPE), ("x-amzn-requestid", request_id)))


API = AwsKms()
