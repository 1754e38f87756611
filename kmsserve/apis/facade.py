"""keyhold's own API: the Kms facade itself, one operation per facade method
(`POST /keyhold/v1/<method>`, SigV4 with service `keyhold`), for kmscore.remote, so that
front ends on other hosts run unchanged: every argument, result and error (class and
message) crosses as the facade has it.

Skeleton: the table is filled in by the remote facade work."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kmsserve import errors
from kmsserve.wire import Operation, Principal, WireRequest, WireResponse

PREFIX = "/keyhold/v1/"
_PATH = re.compile(r"^/keyhold/v1/(?P<op>[a-z_]+)$")
OPERATIONS: dict[str, Operation] = {}


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
        raise errors.AuthFailed("not implemented yet")

    def fields(self, req: WireRequest) -> dict[str, Any]:
        raise errors.MalformedRequest("not implemented yet")

    def respond(self, op: Operation, fields: dict[str, Any], request_id: str) -> WireResponse:
        raise NotImplementedError

    def fail(self, error: Exception, request_id: str) -> WireResponse:
        return WireResponse(501, b'{"error": {"type": "KmsError", "message": "not implemented"}}',
                            (("content-type", "application/json"),))


API = FacadeApi()
