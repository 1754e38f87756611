"""Routing: find the proxy entry and the route of each request; fail closed on errors.

Runs first. Reverse mode keeps the client's Host header (option keep_host_header) so
that inbound signatures over `@target-uri` can be checked against what the client
signed; this addon then points Host at the upstream itself.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mitmproxy import http

from kmscore.errors import InvalidCiphertext, KeyRuleViolation, KeyUnavailable, KmsError, NotFound

from sidecar.errors import SidecarError
from sidecar.rules import Route, RouteTable, Step

log = logging.getLogger("keyhold.sidecar")
METADATA = "keyhold"
ERROR_HEADER = "X-Keyhold-Error"
DETAIL = "keyhold.detail"


@dataclass
class Runtime:
    """What every addon shares. `tables` is replaced whole on reload, never mutated."""

    kms: object
    tables: dict[str, RouteTable]  # by mitmproxy mode spec
    clock: Callable[[], float] = time.time
    dkcache: object | None = None
    abort: Callable[[http.HTTPFlow], None] = lambda flow: flow.kill()
    """Cut a flow's connections now (set by the engine; mitmproxy has no public call for it)."""


@dataclass
class FlowState:
    proxy: str
    table: RouteTable
    route: Route | None
    target_uri: str  # what the client asked for (scheme://authority/path?query)
    started: float = field(default_factory=time.monotonic)
    outcome: str = "ok"
    error: str | None = None
    key_ids: set[str] = field(default_factory=set)
    bytes_in: int = 0
    bytes_out: int = 0
    done: bool = False

    def step(self, direction: str) -> Step | None:
        return None if self.route is None else getattr(self.route, direction)

    @property
    def rule(self) -> str:
        return self.route.name if self.route else "-"


def state_of(flow: http.HTTPFlow) -> FlowState | None:
    return flow.metadata.get(METADATA)


def error_response(status: int, reason: str, rule: str, direction: str, message: str) -> http.Response:
    body = {"error": {"status": status, "reason": reason, "rule": rule, "direction": direction, "message": message}}
    return http.Response.make(
        status,
        json.dumps(body).encode(),
        {"Content-Type": "application/json", ERROR_HEADER: reason, "Cache-Control": "no-store"},
    )


def classify(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, reason code, one-line message) for an error while applying a rule."""
    if isinstance(exc, SidecarError):
        return exc.status, exc.reason, str(exc)
    if isinstance(exc, KeyUnavailable):
        return 503, "key_unavailable", str(exc)
    if isinstance(exc, (KeyRuleViolation, NotFound)):
        return 500, "key_misconfigured", str(exc)
    if isinstance(exc, InvalidCiphertext):
        return 422, "bad_ciphertext", str(exc) or "ciphertext failed authentication"
    if isinstance(exc, KmsError):
        return 503, "kms_error", str(exc)
    if isinstance(exc, RecursionError):  # json.loads of a body nested deeper than Python recurses
        return 422, "bad_body", "the body is nested too deeply to read"
    return 500, "internal", f"{type(exc).__name__} while applying the rule"


def fail(flow: http.HTTPFlow, direction: str, exc: BaseException) -> None:
    """Answer the flow with a JSON error instead of forwarding anything; log without bodies."""
    st = state_of(flow)
    status, reason, message = classify(exc)
    if direction == "response" and status < 500 and status != 401:
        status = 502  # the upstream sent something the rule cannot accept
    rule = st.rule if st else "-"
    if st:
        st.outcome = "denied" if status < 500 else "error"
        st.error = reason
    flow.metadata[DETAIL] = message  # logged once, with the request id, when the flow ends (Metrics)
    if reason == "internal":
        log.error("request %s: rule %s (%s) failed: %s", flow.id, rule, direction, message, exc_info=True)
    flow.response = error_response(status, reason, rule, direction, message)


class Routing:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        mode = flow.client_conn.proxy_mode
        table = self.rt.tables.get(mode.full_spec)
        if table is None:  # a listener from a config that is being replaced
            flow.response = error_response(503, "reloading", "-", "request", "proxy is reconfiguring")
            return
        req = flow.request
        authority = req.host_header or req.pretty_host
        if table.entry.mode == "reverse":
            scheme = "https" if flow.client_conn.tls_established else "http"
            target = f"{scheme}://{authority}{req.path}"
            req.host_header = _hostport(req.scheme, req.host, req.port)
            host = authority.rsplit(":", 1)[0] if not authority.endswith("]") else authority
        else:
            target = req.url
            host = req.host  # where the request really goes, whatever its Host header says
        route = table.match(host.strip("[]"), req.path.split("?", 1)[0], req.method)
        st = FlowState(table.entry.label, table, route, target)
        flow.metadata[METADATA] = st
        if route is None and table.entry.unmatched == "deny":
            st.outcome = "denied"
            st.error = "no_route"
            flow.response = error_response(403, "no_route", "-", "request", "no route matches this request")


def _hostport(scheme: str, host: str, port: int) -> str:
    default = {"http": 80, "https": 443}.get(scheme)
    host = f"[{host}]" if ":" in host else host
    return host if port == default else f"{host}:{port}"
