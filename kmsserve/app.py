"""The ASGI app: a request's bytes in, the right wire API's dispatcher, bytes out.

Starlette gives the request and response objects and runs the blocking dispatcher
(signature check, policy, facade call, audit) in its thread pool, so a slow store or a
scrypt-class root key never stalls the event loop. Every API is tried in order; the
first that accepts the request (by path and headers) answers it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kmscore import audit
from kmsserve.auth.accesskeys import AccessKeys
from kmsserve.wire import Principal, WireApi, WireRequest, dispatch

MAX_BODY = 256 * 1024
"""A KMS request is small (4 KiB of plaintext at most, import material a few KiB)."""


class ServerContext:
    """What the dispatcher needs (kmsserve.wire.ServeContext), on one Kms."""

    def __init__(self, kms: Any, access_keys: AccessKeys) -> None:
        self.kms = kms
        self.access_keys = access_keys
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.time()

    def secret_of(self, access_key_id: str) -> tuple[Principal, str] | None:
        key = self.access_keys.get(access_key_id)
        if key is None or not key.enabled:
            return None
        return Principal(key.access_key_id, key.name, key.policy), key.secret

    def seen(self, principal: Principal, signature: str, signed_at: float, window: float = 15 * 60.0) -> bool:
        now = self.now()
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen = {k: t for k, t in self._seen.items() if t > now}
            slot = (principal.access_key_id, signature)
            if self._seen.get(slot, 0.0) > now:
                return True
            self._seen[slot] = signed_at + window
        return False

    def resolve(self, key: str) -> tuple[str | None, str | None]:
        return self.kms.key_name(key)

    def audit(self, principal: Principal | None, operation: str, key_id: str | None, outcome: str) -> None:
        caller = principal.audit_name if principal else "unauthenticated"
        self.kms._audit.record(operation, key_id, outcome, caller)

    @contextlib.contextmanager
    def calling_as(self, principal: Principal) -> Iterator[None]:
        with audit.calling_as(principal.audit_name):
            yield


def create_app(apis: Sequence[WireApi], ctx: ServerContext) -> Starlette:
    async def handle(request: Request) -> Response:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return JSONResponse({"message": f"request body over {MAX_BODY} bytes"}, status_code=413)
        scope = request.scope
        req = WireRequest(
            method=request.method,
            path=scope.get("raw_path", scope["path"].encode()).decode("latin-1").partition("?")[0],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]),
            body=bytes(body),
            client=f"{request.client.host}:{request.client.port}" if request.client else "",
        )
        api = next((a for a in apis if a.accepts(req)), None)
        if api is None:
            return JSONResponse({"message": "no KMS API at this path"}, status_code=404)
        out = await run_in_threadpool(dispatch, api, req, ctx)
        return Response(out.body, status_code=out.status, headers=dict(out.headers))

    return Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])])
