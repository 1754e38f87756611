"""keyhold's own API: the Kms facade itself, one operation per facade method
(`POST /keyhold/v1/<method>`, SigV4 with service `keyhold`), for kmscore.remote, so that
front ends on other hosts run unchanged: every argument, result and error (class and
message) crosses as the facade has it.

The wire format (which kinds the arguments and results are, how bytes, enums, key
metadata and errors are written) is `kmscore.remotewire`, shared with the client; this
module only turns its rows into the dispatcher's `Operation` rows and says which keys
each call touches, for the caller's policy. See docs/api/facade.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from kmscore import blob
from kmscore import errors as kms_errors
from kmscore import remotewire as rw
from kmscore.specs import DEFAULT_SERVICES
from kmsserve import errors
from kmsserve.auth import sigv4
from kmsserve.operations import FACADE_OPERATIONS
from kmsserve.wire import NewAlias, Operation, Principal, WireRequest, WireResponse, json_object

PREFIX = rw.PATH_PREFIX
_PATH = re.compile(r"^/keyhold/v1/(?P<op>[a-z_]+)$")
_HEADERS = (("content-type", rw.CONTENT_TYPE),)


def _named_key(args: Mapping[str, Any]) -> tuple[str, ...]:
    return (args["key"],)


def _blob_key(args: Mapping[str, Any]) -> tuple[str, ...]:
    """decrypt_data / decrypt_datakey: the key named, else the one inside the blob (an RSA
    ciphertext names no key: the facade then needs `key`, and refuses without it)."""
    if args.get("key") is not None:
        return (args["key"],)
    return (blob.peek_key(args["ciphertext"])[0],)


def _default_key(args: Mapping[str, Any]) -> tuple[str, ...]:
    """A service's default key; an unknown service names no key (the facade refuses it)."""
    return (f"{args['service']}/default",) if args["service"] in DEFAULT_SERVICES else ()


def _aliasing_key(args: Mapping[str, Any]) -> tuple[str, ...]:
    """The key renamed, and the alias it gets (the policy must allow both)."""
    return (args["key"], *((NewAlias(args["alias"]),) if args.get("alias") else ()))


def _creating_key(args: Mapping[str, Any]) -> tuple[Any, ...]:
    """A key made with an alias is checked against that alias (create_key on `mine/*`
    confines a caller's new keys to mine/); without one it is an operation on no key."""
    return (NewAlias(args["alias"]),) if args.get("alias") else ()


KEYS = {
    "update_key_alias": _aliasing_key,
    "create_key": _creating_key,
    "list_keys": lambda a: (), "gen_random": lambda a: (),
    "decrypt_data": _blob_key, "decrypt_datakey": _blob_key, "default_key": _default_key,
}
"""Which keys a call touches, for the policy; every other call names its `key`."""


def _row(call: rw.Call) -> Operation:
    return Operation(
        call.method, call.method,
        args=lambda fields: rw.decode_args(call, fields),
        result=lambda out, args: {"result": call.result.encode(out)},
        keys=KEYS.get(call.method, _named_key),
    )


OPERATIONS: dict[str, Operation] = {m: _row(c) for m, c in rw.CALLS.items() if m in FACADE_OPERATIONS}

SERVE_ERRORS: list[tuple[type[errors.ServeError], str, int]] = [
    (errors.AuthFailed, "AccessDenied", 401),
    (errors.AccessDenied, "AccessDenied", 403),
    (errors.UnknownOperation, "InvalidRequest", 404),
    (errors.MalformedRequest, "InvalidRequest", 400),
]
"""kmsserve's own refusals, as the kmscore error the client raises (kmscore.AccessDenied,
kmscore.InvalidRequest): (class, wire error type, HTTP status), the first that matches."""

KMS_STATUS: list[tuple[type[kms_errors.KmsError], int]] = [
    (kms_errors.NotFound, 404),
    (kms_errors.AlreadyExists, 409),
    (kms_errors.KeyUnavailable, 409),
    (kms_errors.StoreError, 503),
    (kms_errors.AuditError, 503),
]
"""kmscore's errors cross under their own class name with their message; the status is
for people reading logs and proxies in between (the client goes by the name): 400 for
the caller's mistakes, these for the rest, 500 for KmsError itself (a bug)."""

AUTH_FAILED = ("the request's signature is not valid: unknown or disabled access key, wrong secret, "
               "or a clock more than 15 minutes off")


class FacadeApi:
    name = "keyhold"
    operations: Mapping[str, Operation] = OPERATIONS

    def accepts(self, req: WireRequest) -> bool:
        return req.path.startswith(PREFIX)

    def operation(self, req: WireRequest) -> str:
        m = _PATH.match(req.path)
        if m is None:
            raise errors.UnknownOperation("no such operation")
        return m["op"]

    def authenticate(self, req: WireRequest, ctx) -> Principal:
        if req.method != "POST":
            raise errors.MalformedRequest("the facade API takes POST requests")
        # no honest repeats: kmscore.remote signs a fresh nonce into every request, so a
        # signature seen before is a replay however soon it comes back
        return sigv4.authenticate(req, ctx, rw.SERVICE, repeats=False)

    def fields(self, req: WireRequest) -> dict[str, Any]:
        return json_object(req.body)

    def respond(self, op: Operation, fields: dict[str, Any], request_id: str) -> WireResponse:
        return WireResponse(200, json.dumps(fields).encode(), (*_HEADERS, ("x-request-id", request_id)))

    def fail(self, error: Exception, request_id: str) -> WireResponse:
        if isinstance(error, kms_errors.KmsError):
            name = type(error).__name__
            kind = name if name in rw.ERROR_CLASSES else "KmsError"
            status = 500 if kind == "KmsError" else next((s for c, s in KMS_STATUS if isinstance(error, c)), 400)
            message = str(error)  # kmscore's messages are written to be shown (no key material)
        elif isinstance(error, errors.ServeError):
            kind, status = next(((k, s) for c, k, s in SERVE_ERRORS if isinstance(error, c)), ("InvalidRequest", 400))
            plain_auth = isinstance(error, errors.AuthFailed) and not isinstance(error, errors.RequestExpired)
            message = AUTH_FAILED if plain_auth else str(error)  # never which part of a signature failed
        else:
            kind, status, message = "KmsError", 500, "internal error"
        body = rw.error_body(kind, message)
        return WireResponse(status, json.dumps(body).encode(), (*_HEADERS, ("x-request-id", request_id)))


API = FacadeApi()
