"""Field tokens: a JSON value encrypted in place as a self-describing string.

    token   = "khf1." base64url(blob)          (no padding)
    blob    = a KMS ciphertext blob (kmscore.blob) of the value's compact JSON text
    context = {"keyhold:field": "<field path as written in the rule>"}

The field path is the encryption context, so the blob's AAD binds it: a token moved to
another field (or another rule's path) fails authentication. The plaintext is JSON, so
strings, numbers, booleans, null, objects and arrays come back with their type.
The wrapper is sans-IO; `seal`/`open_` take the Kms as an argument.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from kmscore.errors import InvalidCiphertext
from kmscore.specs import MAX_PLAINTEXT

from sidecar.errors import BadBody, TooLarge

PREFIX = "khf"
VERSION = "1"
HEAD = PREFIX + VERSION + "."
CONTEXT_KEY = "keyhold:field"
MAX_TOKEN = 8192


def context_for(path: str) -> dict[str, str]:
    return {CONTEXT_KEY: path}


def encode_value(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except ValueError:  # NaN, Infinity: Python's json reads them, but they are not JSON
        raise BadBody("NaN and Infinity are not JSON values") from None


def decode_value(data: bytes) -> Any:
    return json.loads(data.decode())


def wrap(blob: bytes) -> str:
    return HEAD + base64.urlsafe_b64encode(blob).rstrip(b"=").decode("ascii")


def unwrap(token: Any) -> bytes:
    """The blob inside a token; BadBody for anything that is not one (no detail leaks)."""
    if not isinstance(token, str) or not token.startswith(PREFIX):
        raise BadBody("the field does not hold a keyhold token")
    if not token.startswith(HEAD):
        raise BadBody(f"unsupported token version {token[len(PREFIX):].split('.', 1)[0]!r}")
    body = token[len(HEAD):]
    if len(body) > MAX_TOKEN or not body or "=" in body:
        raise BadBody("malformed token")
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise BadBody("malformed token") from None


def is_token(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(HEAD)


def seal(kms, key: str, path: str, value: Any) -> str:
    """A token for `value`; a value over the KMS's limit for one encryption is the
    client's mistake (413), not a KMS failure."""
    plain = encode_value(value)
    if len(plain) > MAX_PLAINTEXT:
        raise TooLarge(f"field {path} holds {len(plain)} bytes of JSON; a field token holds at most {MAX_PLAINTEXT}")
    return wrap(kms.encrypt_data(key, plain, context_for(path)))


def open_(kms, path: str, token: Any, key: str | None = None) -> Any:
    """Decrypt a token for `path`; a wrong field, key or tampered token is one opaque error."""
    blob = unwrap(token)
    try:
        plain = kms.decrypt_data(blob, context_for(path), key=key)
    except InvalidCiphertext:
        raise BadBody(f"token in field {path} failed authentication") from None
    try:
        return decode_value(plain)
    except (UnicodeDecodeError, ValueError):
        raise BadBody(f"token in field {path} does not hold a JSON value") from None
