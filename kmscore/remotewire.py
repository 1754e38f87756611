"""The facade's own wire format (sans-IO): how each facade call crosses the network.

Shared by both ends so that they cannot drift apart: `kmscore.remote` (the client,
`RemoteKms`) encodes arguments and decodes results with it, `kmsserve.apis.facade`
(the server) does the reverse. One row per facade method: its parameters, each with a
kind, and the kind of its result. Which parameters are required, and their defaults,
come from `kmscore.Kms` itself (inspect.signature), so a facade change shows up here.

    POST /keyhold/v1/<method>          SigV4, service "keyhold"
    {"key": "app/db", "plaintext": "<base64>", "context": {"k": "v"}}
    200 {"result": "<base64>"}
    4xx/5xx {"error": {"type": "NotFound", "message": "no key with id or alias 'x'"}}

Bytes are base64 (standard alphabet, padded), enums their values, KeyMetadata /
DataKey / ImportParameters JSON objects of their fields (times as POSIX seconds),
errors the kmscore exception class's name and its message, so that the client raises
the same class with the same message. See docs/api/facade.md.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from kmscore import errors
from kmscore.errors import InvalidRequest, KmsError
from kmscore.metadata import DataKey, ImportParameters, KeyMetadata
from kmscore.specs import KeySpec, KeyState, KeyUsage, Origin

PATH_PREFIX = "/keyhold/v1/"
SERVICE = "keyhold"
"""The SigV4 service name of the facade API."""
REGION = "keyhold"
"""The SigV4 region the client signs with (the server accepts any)."""
CONTENT_TYPE = "application/json"
NONCE_HEADER = "x-keyhold-nonce"
"""Random per request and signed, so that no two requests share a signature (the server
refuses a signature it has seen as a replay)."""


@dataclass(frozen=True)
class Kind:
    """How one value crosses: `encode` to JSON (client arguments, server results) and
    `decode` from JSON (InvalidRequest on a value of the wrong shape)."""

    name: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


def _expect(*types: type) -> Callable[[Any], Any]:
    names = " or ".join("null" if t is type(None) else t.__name__ for t in types)

    def check(value: Any) -> Any:
        if isinstance(value, bool) and bool not in types:  # JSON true is not a number here
            raise InvalidRequest(f"expected {names}, got {type(value).__name__}")
        if not isinstance(value, types):
            raise InvalidRequest(f"expected {names}, got {type(value).__name__}")
        return value

    return check


def _b64_encode(value: Any) -> str:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidRequest(f"expected bytes, got {type(value).__name__}")
    return base64.b64encode(bytes(value)).decode()


def _b64_decode(value: Any) -> bytes:
    if not isinstance(value, str):
        raise InvalidRequest(f"expected base64 text, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("a bytes field is not valid base64") from None


def _enum_encode(value: Any) -> Any:
    if value is None or isinstance(value, str) and not isinstance(value, enum.Enum):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    raise InvalidRequest(f"expected a name (text), got {type(value).__name__}")


def _context_decode(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidRequest("encryption context keys and values must be strings")
    return value


def _context_encode(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"an encryption context is a mapping of text to text, not {type(value).__name__}")
    return _context_decode(dict(value))


def _float_decode(value: Any) -> float | None:
    return None if value is None else float(_expect(int, float)(value))


_META_ENUMS = {"state": KeyState, "spec": KeySpec, "usage": KeyUsage, "origin": Origin}


def _metadata_encode(meta: KeyMetadata) -> dict[str, Any]:
    return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(meta).items()}


def _metadata_decode(data: Any) -> KeyMetadata:
    if not isinstance(data, dict):
        raise InvalidRequest("key metadata must be an object")
    try:
        return KeyMetadata(**{k: (_META_ENUMS[k](v) if k in _META_ENUMS else v) for k, v in data.items()})
    except (TypeError, ValueError) as e:
        raise InvalidRequest(f"key metadata is not valid: {e}") from None


def _datakey_encode(dk: DataKey) -> dict[str, Any]:
    return {"key_id": dk.key_id, "ciphertext": _b64_encode(dk.ciphertext),
            "plaintext": None if dk.plaintext is None else _b64_encode(dk.plaintext)}


def _datakey_decode(data: Any) -> DataKey:
    if not isinstance(data, dict) or not isinstance(data.get("key_id"), str):
        raise InvalidRequest("a data key must be an object with key_id, ciphertext, plaintext")
    plain = data.get("plaintext")
    return DataKey(data["key_id"], _b64_decode(data.get("ciphertext")), None if plain is None else _b64_decode(plain))


def _import_decode(data: Any) -> ImportParameters:
    if not isinstance(data, dict):
        raise InvalidRequest("import parameters must be an object")
    try:
        return ImportParameters(**data)
    except TypeError as e:
        raise InvalidRequest(f"import parameters are not valid: {e}") from None


def _same(value: Any) -> Any:
    return value


STR = Kind("str", _expect(str), _expect(str))
OPT_STR = Kind("str or null", _expect(str, type(None)), _expect(str, type(None)))
INT = Kind("int", _expect(int), _expect(int))
OPT_INT = Kind("int or null", _expect(int, type(None)), _expect(int, type(None)))
BOOL = Kind("bool", _expect(bool), _expect(bool))
OPT_FLOAT = Kind("number or null", _float_decode, _float_decode)
BYTES = Kind("bytes", _b64_encode, _b64_decode)
CONTEXT = Kind("context", _context_encode, _context_decode)
NAME = Kind("name", _enum_encode, _expect(str, type(None)))
"""An enum (KeySpec, SigningAlgorithm, ...) as its value; the facade parses the name."""
METADATA = Kind("KeyMetadata", _metadata_encode, _metadata_decode)
METADATA_LIST = Kind(
    "list of KeyMetadata",
    lambda ms: [_metadata_encode(m) for m in ms],
    lambda data: [_metadata_decode(m) for m in _expect(list)(data)],
)
DATAKEY = Kind("DataKey", _datakey_encode, _datakey_decode)
IMPORT_PARAMETERS = Kind("ImportParameters", asdict, _import_decode)
PEM = Kind("str", _same, _expect(str))


@dataclass(frozen=True)
class Call:
    """One facade method on the wire: its parameters (name -> kind) and result kind."""

    method: str
    params: dict[str, Kind]
    result: Kind

    @functools.cached_property
    def signature(self) -> inspect.Signature:
        """The embedded facade's own signature (without self): required parameters and
        defaults come from there."""
        from kmscore.facade import Kms

        sig = inspect.signature(getattr(Kms, self.method))
        return sig.replace(parameters=[p for n, p in sig.parameters.items() if n != "self"])

    @property
    def repeatable(self) -> bool:
        """May the client send it again when a connection broke before the answer? Reads
        and cryptographic calls yes (a second ciphertext or data key does no harm); a
        lifecycle change or an import no (it might have been done once already)."""
        return self.method not in CHANGES

    def required(self) -> list[str]:
        return [n for n, p in self.signature.parameters.items() if p.default is inspect.Parameter.empty]


_KEY = {"key": STR}
_LIFECYCLE = ("describe_key enable_key disable_key cancel_key_deletion disable_key_rotation rotate_key "
              "delete_imported_key_material").split()

CALLS: dict[str, Call] = {c.method: c for c in [
    Call("create_key", {"alias": OPT_STR, "spec": NAME, "usage": NAME, "origin": NAME, "description": STR,
                        "rotation_days": OPT_INT}, METADATA),
    Call("list_keys", {}, METADATA_LIST),
    *(Call(m, _KEY, METADATA) for m in _LIFECYCLE),
    Call("schedule_key_deletion", {**_KEY, "pending_days": INT}, METADATA),
    Call("update_key_alias", {**_KEY, "alias": STR}, METADATA),
    Call("update_key_description", {**_KEY, "description": STR}, METADATA),
    Call("enable_key_rotation", {**_KEY, "interval_days": INT}, METADATA),
    Call("default_key", {"service": STR}, METADATA),
    Call("encrypt_data", {**_KEY, "plaintext": BYTES, "context": CONTEXT, "algorithm": NAME}, BYTES),
    Call("decrypt_data", {"ciphertext": BYTES, "context": CONTEXT, "key": OPT_STR, "algorithm": NAME}, BYTES),
    Call("create_datakey", {**_KEY, "bits": INT, "context": CONTEXT, "with_plaintext": BOOL}, DATAKEY),
    Call("encrypt_datakey", {**_KEY, "plaintext": BYTES, "context": CONTEXT}, BYTES),
    Call("decrypt_datakey", {"ciphertext": BYTES, "context": CONTEXT, "key": OPT_STR}, BYTES),
    Call("sign", {**_KEY, "message": BYTES, "algorithm": NAME, "message_type": NAME}, BYTES),
    Call("verify", {**_KEY, "message": BYTES, "signature": BYTES, "algorithm": NAME, "message_type": NAME}, BOOL),
    Call("get_public_key", _KEY, PEM),
    Call("generate_mac", {**_KEY, "message": BYTES, "algorithm": NAME}, BYTES),
    Call("verify_mac", {**_KEY, "message": BYTES, "mac": BYTES, "algorithm": NAME}, BOOL),
    Call("gen_random", {"length": INT}, BYTES),
    Call("get_parameters_for_import", {**_KEY, "wrapping_algorithm": NAME, "wrapping_key_spec": NAME},
         IMPORT_PARAMETERS),
    Call("import_key_material", {**_KEY, "import_token": STR, "encrypted_material": BYTES, "expires_at": OPT_FLOAT},
         METADATA),
    Call("key_usable", {**_KEY, "op": NAME}, OPT_FLOAT),
]}


CHANGES = frozenset(
    "create_key enable_key disable_key schedule_key_deletion cancel_key_deletion update_key_alias "
    "update_key_description enable_key_rotation disable_key_rotation rotate_key get_parameters_for_import "
    "import_key_material delete_imported_key_material".split()
)


def encode_args(call: Call, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The client's request body for bound arguments (InvalidRequest naming the argument)."""
    out = {}
    for name, value in arguments.items():
        try:
            out[name] = call.params[name].encode(value)
        except InvalidRequest as e:
            raise InvalidRequest(f"{call.method}: argument {name}: {e}") from None
    return out


def decode_args(call: Call, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The server's keyword arguments from a request body (InvalidRequest on an unknown,
    missing or ill-typed field)."""
    unknown = sorted(set(fields) - set(call.params))
    if unknown:
        raise InvalidRequest(f"{call.method}: unknown argument(s) {', '.join(unknown)}")
    missing = [n for n in call.required() if n not in fields]
    if missing:
        raise InvalidRequest(f"{call.method}: missing argument(s) {', '.join(missing)}")
    out = {}
    for name, value in fields.items():
        try:
            out[name] = call.params[name].decode(value)
        except InvalidRequest as e:
            raise InvalidRequest(f"{call.method}: argument {name}: {e}") from None
    return out


# -- errors -------------------------------------------------------------------------------
ERROR_CLASSES: dict[str, type[KmsError]] = {name: getattr(errors, name) for name in errors.__all__}
"""The kmscore exception classes that cross by name; anything else crosses as KmsError."""


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"error": {"type": error_type, "message": message}}


def error_from(body: Any, status: int) -> KmsError:
    """The kmscore exception a server's error answer stands for: the same class (by
    name) with the same message; an answer that is not one of ours is a KmsError."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict) or not isinstance(err.get("type"), str) or not isinstance(err.get("message"), str):
        return errors.KmsUnreachable(f"the KMS answered HTTP {status} without a keyhold error (is the url a keyhold server?)")
    cls = ERROR_CLASSES.get(err["type"], KmsError)
    return cls(err["message"])
