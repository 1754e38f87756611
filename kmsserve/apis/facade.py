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
from kmsserve import errors
from kmsserve.auth import sigv4
from kmsserve.operations import FACADE_OPERATIONS
from kmsserve.wire import Operation, Principal, WireRequest, WireResponse

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
    return (f"{args['service']}/default",)


KEYS = {
    "create_key": lambda a: (), "list_keys": lambda a: (), "gen_random": lambda a: (),
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

# (exception class, wire error type, HTTP status): the first class the error is an instance of.
# kmscore's own errors cross under their class name (rw.ERROR_CLASSES) with their message.
ERRORS: list[tuple[type[BaseException], str, int]] = [
    (errors.AuthFailed, "AccessDenied", 401),
    (errors.AccessDenied, "AccessDenied", 403),
    (errors.UnknownOperation, "InvalidRequest", 404),
    (errors.MalformedRequest, "InvalidRequest", 400),
    (kms_errors.NotFound, "NotFound", 404),
    (kms_errors.AlreadyExists, "AlreadyExists", 409),
    (kms_errors.KeyUnavailable, "KeyUnavailable", 409),
    (kms_errors.StoreError, "StoreError", 500),
    (kms_errors.AuditError, "AuditError", 500),
    (kms_errors.KmsError, "", 400),
]
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
        return sigv4.authenticate(req, ctx, rw.SERVICE)

    def fields(self, req: WireRequest) -> dict[str, Any]:
        try:
            data = json.loads(req.body or b"{}")
        except ValueError:
            raise errors.MalformedRequest("the body is not JSON") from None
        if not isinstance(data, dict):
            raise errors.MalformedRequest("the body is not a JSON object")
        return data

    def respond(self, op: Operation, fields: dict[str, Any], request_id: str) -> WireResponse:
        return WireResponse(200, json.dumps(fields).encode(), (*_HEADERS, ("x-request-id", request_id)))

    def fail(self, error: Exception, request_id: str) -> WireResponse:
        kind, status = next(((k, s) for cls, k, s in ERRORS if isinstance(error, cls)), ("KmsError", 500))
        if isinstance(error, kms_errors.KmsError):
            name = type(error).__name__
            kind, message = (name if name in rw.ERROR_CLASSES else "KmsError"), str(error)
            if type(error) is kms_errors.KmsError:
                status = 500
        elif isinstance(error, errors.AuthFailed) and not isinstance(error, errors.RequestExpired):
            message = AUTH_FAILED  # never which part failed
        elif isinstance(error, errors.ServeError):
            message = str(error)
        else:
            message = "internal error"
        body = rw.error_body(kind, message)
        return WireResponse(status, json.dumps(body).encode(), (*_HEADERS, ("x-request-id", request_id)))


API = FacadeApi()
