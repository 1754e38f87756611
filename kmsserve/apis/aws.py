"""The AWS KMS JSON 1.1 API (`POST /`, `X-Amz-Target: TrentService.<Operation>`, SigV4
with service `kms`), as a table: boto3 and the `aws kms` CLI work unchanged.

Skeleton: the table is filled in by the AWS adapter work (issue 12)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from kmscore import errors as kms_errors
from kmsserve import errors
from kmsserve.auth import sigv4
from kmsserve.wire import Operation, Principal, WireRequest, WireResponse

TARGET_PREFIX = "TrentService."
CONTENT_TYPE = "application/x-amz-json-1.1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in [
        Operation(
            "GenerateRandom", "gen_random",
            args=lambda f: {"length": f.get("NumberOfBytes")},
            result=lambda out, a: {"Plaintext": _b64(out)},
        ),
    ]
}

# (exception class, AWS error code, HTTP status): the first class the error is an instance of
ERRORS: list[tuple[type[BaseException], str, int]] = [
    (errors.RequestExpired, "InvalidSignatureException", 400),
    (errors.AuthFailed, "UnrecognizedClientException", 400),
    (errors.AccessDenied, "AccessDeniedException", 400),
    (errors.UnknownOperation, "UnknownOperationException", 400),
    (errors.MalformedRequest, "SerializationException", 400),
    (kms_errors.NotFound, "NotFoundException", 400),
    (kms_errors.InvalidRequest, "ValidationException", 400),
    (kms_errors.KmsError, "KMSInternalException", 500),
]


class AwsKms:
    name = "aws"
    operations: Mapping[str, Operation] = OPERATIONS

    def accepts(self, req: WireRequest) -> bool:
        return req.method == "POST" and req.path == "/" and (req.header("x-amz-target") or "").startswith(TARGET_PREFIX)

    def operation(self, req: WireRequest) -> str:
        return (req.header("x-amz-target") or "")[len(TARGET_PREFIX):]

    def authenticate(self, req: WireRequest, ctx) -> Principal:
        return sigv4.authenticate(req, ctx, "kms")

    def fields(self, req: WireRequest) -> dict[str, Any]:
        try:
            data = json.loads(req.body or b"{}")
        except ValueError:
            raise errors.MalformedRequest("the body is not JSON") from None
        if not isinstance(data, dict):
            raise errors.MalformedRequest("the body is not a JSON object")
        return data

    def respond(self, op: Operation, fields: dict[str, Any], request_id: str) -> WireResponse:
        return WireResponse(200, json.dumps(fields).encode(), (("content-type", CONTENT_TYPE), ("x-amzn-requestid", request_id)))

    def fail(self, error: Exception, request_id: str) -> WireResponse:
        code, status = next(((c, s) for cls, c, s in ERRORS if isinstance(error, cls)), ("KMSInternalException", 500))
        message = str(error) if isinstance(error, kms_errors.KmsError) and status < 500 else (
            "The security token included in the request is invalid." if isinstance(error, errors.AuthFailed) and not isinstance(error, errors.RequestExpired)
            else str(error) if isinstance(error, errors.ServeError) else "internal error")
        body = {"__type": code, "message": message}
        return WireResponse(status, json.dumps(body).encode(), (("content-type", CONTENT_TYPE), ("x-amzn-requestid", request_id)))


API = AwsKms()
