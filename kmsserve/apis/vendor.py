"""The reference cloud's KMS v1.0 API (`POST /v1.0/{project_id}/kms/<operation>`, AK/SK
`SDK-HMAC-SHA256` signing), as a table: the vendor's SDK `huaweicloudsdkkms` works
unchanged. Facts about the API: ../shared/reference/vendor-kms-api.md.

Skeleton: the table and the signature check are filled in by the vendor adapter work."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kmsserve import errors
from kmsserve.wire import Operation, Principal, WireRequest, WireResponse

_PATH = re.compile(r"^/v1\.0/(?P<project>[^/]+)/kms/(?P<op>[a-z-]+)$")
OPERATIONS: dict[str, Operation] = {}


class VendorKms:
    name = "vendor"
    operations: Mapping[str, Operation] = OPERATIONS

    def accepts(self, req: WireRequest) -> bool:
        return _PATH.match(req.path) is not None

    def operation(self, req: WireRequest) -> str:
        m = _PATH.match(req.path)
        assert m is not None
        return m["op"]

    def authenticate(self, req: WireRequest, ctx) -> Principal:
        raise errors.AuthFailed("SDK-HMAC-SHA256 is not implemented yet")

    def fields(self, req: WireRequest) -> dict[str, Any]:
        raise errors.MalformedRequest("not implemented yet")

    def respond(self, op: Operation, fields: dict[str, Any], request_id: str) -> WireResponse:
        raise NotImplementedError

    def fail(self, error: Exception, request_id: str) -> WireResponse:
        return WireResponse(401, b'{"error": {"error_code": "APIGW.0301", "error_msg": "not implemented"}}',
                            (("content-type", "application/json"), ("x-request-id", request_id)))


API = VendorKms()
