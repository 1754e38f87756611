"""Routing: find the proxy entry and the route of each request; fail closed on errors.

Runs first. Reverse mode keeps the client's Host header (option keep_host_header) so
that inbound signatures over `@target-uri` can be checked against what the client
signed; this addon then points Host at the upstream itself.

Routes see the request target in canonical form (`sidecar.canonical`) and that form
is what is forwarded: the path is rewritten to it, and an absolute-form target becomes
origin form, so the upstream receives exactly what was matched. A target or host that
cannot be read one way only is refused with 400; a method that would skip a route's
rule is refused with 405 (`RouteTable.decide`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mitmproxy import http

from kmscore.errors import InvalidCiphertext, KeyRuleViolation, KeyUnavailable, KmsError, NotFound

from sidecar import headerfields
from sidecar.canonical import BadTarget, canonical_host, canonical_target
from sidecar.errors import SidecarError
from sidecar.replay import ReplayGuard
from sidecar.rules import Decision, Route, RouteTable, Step

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
    random: Callable[[int], bytes] = os.urandom
    """Nonces of signatures made here (a seam for tests)."""
    replay: ReplayGuard = field(default_factory=ReplayGuard)
    """Nonces of verified signatures; survives reloads (the Runtime does)."""


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
    pending: Decision | None = None
    """A 405 that holds if the request turns out to have a body (HTTP/2 or 3 without
    Content-Length): `request()` decides, so no addon may stream this request's body."""

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


def refuse(flow: http.HTTPFlow, status: int, reason: str, rule: str, message: str, **headers: str) -> None:
    """Answer a request the sidecar will not route, before anything reaches the upstream.
    The log line names the reason and the rule, never the path (it may hold secrets)."""
    st = state_of(flow)
    if st is not None:
        st.outcome, st.error = "denied", reason
    log.warning("refused a %s request (rule %s): %s: %s", flow.request.method[:16], rule, reason, message)
    flow.response = error_response(status, reason, rule, "request", message)
    flow.response.headers.update(headers)


class Routing:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        mode = flow.client_conn.proxy_mode
        table = self.rt.tables.get(mode.full_spec)
        if table is None:  # a listener from a config that is being replaced
            flow.response = error_response(503, "reloading", "-", "request", "proxy is reconfiguring")
            return
        req, entry = flow.request, table.entry
        st = FlowState(entry.label, table, None, "")
        flow.metadata[METADATA] = st
        try:
            authority = _authority(req, entry.mode == "reverse")
            target = canonical_target(req.data.path, semicolons=entry.literal_semicolons)
            host = canonical_host(authority or _bracket(req.pretty_host))
        except BadTarget as e:
            return refuse(flow, e.status, e.reason, "-", str(e))
        if entry.mode == "reverse":
            scheme = "https" if flow.client_conn.tls_established else "http"
            st.target_uri = f"{scheme}://{authority or _bracket(req.pretty_host)}{req.path}"
            req.host_header = _hostport(req.scheme, req.host, req.port)
            if not (req.is_http2 or req.is_http3):
                req.data.authority = b""  # absolute form: the upstream gets the path it was matched on
        else:
            st.target_uri = req.url
        if req.data.path != target.origin_form.encode():
            req.path = target.origin_form
        decision = table.decide(host, target.path, req.method, _has_body(req))
        st.route = decision.route
        if decision.refused_by is not None:
            if decision.needs_body_check and decision.route is not None and decision.route.request is not None:
                decision = Decision(decision.route, decision.refused_by, decision.allow)  # it may stream: decide now
            if decision.needs_body_check:
                st.pending = decision  # decided in request(): the body must be buffered, never streamed, until then
            else:
                return _refuse_method(flow, decision)
        if decision.route is None and entry.unmatched == "deny":
            refuse(flow, 403, "no_route", "-", "no route matches this request")

    def request(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is not None and st.pending is not None and flow.response is None and flow.request.raw_content:
            _refuse_method(flow, st.pending)


def _refuse_method(flow: http.HTTPFlow, decision: Decision) -> None:
    route = decision.refused_by
    allow = ", ".join(decision.allow)
    refuse(flow, 405, "method_not_allowed", route.name,
           f"route {route.name} takes {allow} here; a {flow.request.method[:16]} request would skip its rule",
           Allow=allow)


def _authority(req: http.Request, reverse: bool) -> str | None:
    """The one authority the client named: the Host header, the `:authority` of HTTP/2 and
    3, or the authority of an absolute-form target (None: it named none, as HTTP/1.0
    may; reverse mode then matches the upstream's name, which is also the Host the
    upstream gets). Two that name different hosts are refused: in forward mode the
    upstream reads the Host header while the request goes to the target's host."""
    hosts = headerfields.get_all(req.headers, b"host")
    if len(hosts) > 1:
        raise BadTarget("the request has more than one Host header")
    header = hosts[0] if hosts else None
    if reverse:
        named = req.authority or None  # :authority, or an absolute-form target
    else:
        named = _bracket(req.host)  # forward mode: where the request really goes
    if named is not None and header is not None and canonical_host(named) != canonical_host(header):
        raise BadTarget("the request names two different hosts (its target or :authority and its Host header)")
    return (named if reverse else header) or header or named


def _bracket(host: str) -> str:
    """An IPv6 literal as an authority writes it (mitmproxy keeps hosts without brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _has_body(req: http.Request) -> bool | None:
    """Whether a body follows the headers; None when only the body itself can tell (HTTP/2
    and 3 without Content-Length)."""
    if headerfields.has(req.headers, b"transfer-encoding"):
        return True
    length = headerfields.get(req.headers, b"content-length")
    if length is not None:
        return length.strip() != "0"
    return None if (req.is_http2 or req.is_http3) else False


def _hostport(scheme: str, host: str, port: int) -> str:
    default = {"http": 80, "https": 443}.get(scheme)
    host = f"[{host}]" if ":" in host else host
    return host if port == default else f"{host}:{port}"
