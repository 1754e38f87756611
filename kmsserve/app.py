"""The ASGI app: a request's bytes in, the right wire API's dispatcher, bytes out.

Starlette gives the request and response objects and runs the blocking dispatcher
(signature check, policy, facade call, audit) in its thread pool, so a slow store or a
scrypt-class root key never stalls the event loop. Every API is tried in order; the
first that accepts the request (by path and headers) answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kmscore import audit
from kmsserve.auth import replay, sigv4
from kmsserve.auth.accesskeys import AccessKeys
from kmsserve.errors import Replayed, RequestTooLarge
from kmsserve.wire import Principal, WireApi, WireRequest, dispatch

MAX_BODY = 256 * 1024
"""A KMS request is small (4 KiB of plaintext at most, import material a few KiB)."""
BODY_TIMEOUT = 10.0
"""A body that has not arrived whole this long after its headers is refused."""


_CLAIMED: contextvars.ContextVar[Any] = contextvars.ContextVar("kmsserve_claimed_access_key", default=None)
"""The access key a request's signature names, if it exists: who a refusal is recorded for."""


class ServerContext:
    """What the dispatcher needs (kmsserve.wire.ServeContext), on one Kms."""

    def __init__(self, kms: Any, access_keys: AccessKeys, replay_capacity: int = replay.CAPACITY) -> None:
        self.kms = kms
        self.access_keys = access_keys
        self.replays = replay.ReplayMemory(sigv4.SKEW, replay_capacity)

    def now(self) -> float:
        return time.time()

    def secret_of(self, access_key_id: str) -> tuple[Principal, str] | None:
        key = self.access_keys.get(access_key_id)
        _CLAIMED.set(key)  # this request's context only (each runs in a copy)
        if key is None or not key.enabled:
            return None
        return Principal(key.access_key_id, key.name, key.policy), key.secret

    def seen(self, principal: Principal, signature: str, signed_at: float, repeats: bool = True) -> bool:
        """True if the signature was used inside its window (or is older than what the
        bounded memory still holds: kmsserve.auth.replay)."""
        try:
            self.replays.check(principal.access_key_id, signature, signed_at, self.now(), repeats=repeats)
        except Replayed:
            return True
        return False

    def resolve(self, key: str) -> tuple[str | None, str | None]:
        return self.kms.key_name(key)

    def audit(self, principal: Principal | None, operation: str, key_id: str | None, outcome: str) -> None:
        claimed = _CLAIMED.get()
        if principal is not None:
            caller = principal.audit_name
        elif claimed is not None:  # a known access key with a wrong signature, or disabled
            caller = f"unauthenticated (claims access-key {claimed.access_key_id} ({claimed.name}))"
        else:  # never the text a caller sent: an unknown id could be anything
            caller = "unauthenticated"
        self.kms.audit_event(operation, key_id, outcome, caller=caller)

    @contextlib.contextmanager
    def calling_as(self, principal: Principal) -> Iterator[None]:
        with audit.calling_as(principal.audit_name):
            yield


async def _read_body(request: Request, timeout: float) -> bytes:
    """The body, at most MAX_BODY bytes, whole within BODY_TIMEOUT (RequestTooLarge)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise RequestTooLarge(f"the request body is over {MAX_BODY} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY:
                    raise RequestTooLarge(f"the request body is over {MAX_BODY} bytes")
    except TimeoutError:
        raise RequestTooLarge(f"the request body did not arrive within {timeout:g} seconds") from None
    return bytes(body)


def create_app(apis: Sequence[WireApi], ctx: ServerContext, *, body_timeout: float = BODY_TIMEOUT) -> Starlette:
    async def handle(request: Request) -> Response:
        scope = request.scope
        req = WireRequest(
            method=request.method,
            path=scope.get("raw_path", scope["path"].encode()).decode("latin-1").partition("?")[0],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]),
            body=b"",
            client=f"{request.client.host}:{request.client.port}" if request.client else "",
        )
        api = next((a for a in apis if a.accepts(req)), None)
        if api is None:
            return JSONResponse({"message": "no KMS API at this path"}, status_code=404)
        try:
            body = await _read_body(request, body_timeout)
        except ClientDisconnect:  # nobody left to answer
            return Response(status_code=400)
        except RequestTooLarge as e:
            out = api.fail(e, "-")
            return Response(out.body, status_code=413, headers={**dict(out.headers), "connection": "close"})
        out = await run_in_threadpool(dispatch, api, dataclasses.replace(req, body=body), ctx)
        return Response(out.body, status_code=out.status, headers=dict(out.headers))

    return Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])])
