"""Guard and Framing: what the sidecar refuses because it could not apply a rule to it,
and the framing fixes that keep a transformed message true.

Guard runs after Routing and before Transform, so a refusal is answered before any byte
of the body is forwarded:

- a protocol upgrade (WebSocket, h2c) on a route with a step: after `101` the bytes are
  no longer HTTP messages and no rule could see them. Refused with 403 unless the route
  sets `allow_upgrade = true` (then they pass as they are, unencrypted); a 101 the
  upstream sends unasked on such a route is a 502;
- HTTP/2 with prior knowledge on a cleartext port (the `PRI * HTTP/2.0` preface):
  mitmproxy cannot proxy it, so the client gets an HTTP/2 GOAWAY `HTTP_1_1_REQUIRED`
  that says so, not a silently closed connection (HTTP/2 over TLS is transformed);
- an HTTP/1.0 request with a body but no Content-Length on a route with a request step:
  HTTP/1.0 has no other framing for request bodies, the body's end cannot be known, so
  411 instead of forwarding an empty body;
- raw TCP relays (the engine turns mitmproxy's `rawtcp` off, so bytes that do not parse
  as HTTP inside a CONNECT tunnel get a 400; a TCP flow that appears anyway is cut).

Range requests on routes that decrypt (or encrypt) responses lose their `Range`/`If-Range`
headers, so the upstream sends the whole envelope and the client gets the whole
plaintext (a server may always answer a Range request with 200); a 206 that arrives
anyway is refused.

Framing runs after Transform and Signing:

- a streamed request body always reaches an HTTP/1.1 upstream framed: an HTTP/1.0 or
  HTTP/2 request goes upstream chunked (it used to arrive as an empty body); a body
  streamed to an HTTP/1.0 client is not chunked (HTTP/1.0 has no chunked coding) and
  ends at connection close;
- a body the sidecar rewrote keeps no validator of the bytes it replaced: ETag,
  Accept-Ranges, Content-MD5 and Digest go (and Content-Length on a HEAD answer, which
  gave the envelope's size);
- every error a rule or the guard answers carries `X-Keyhold-Request-Id`, the id it
  was logged under (mitmproxy's own transport errors are built without the flow).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

from mitmproxy import http, tcp
from mitmproxy.net.http import http1

from sidecar import headerfields
from sidecar.addons.routing import DETAIL, ERROR_HEADER, Runtime, fail, state_of
from sidecar.errors import SidecarError

log = logging.getLogger("keyhold.sidecar")
REQUEST_ID = "X-Keyhold-Request-Id"
HTTP10_CLIENT = "keyhold.http10"
RAW_REFUSED = "keyhold.raw_refused"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
STALE_VALIDATORS = frozenset({b"etag", b"accept-ranges", b"content-md5", b"digest", b"repr-digest"})
RANGE_HEADERS = frozenset({b"range", b"if-range"})
_ERROR = ERROR_HEADER.lower().encode()

H2_PREFACE_METHOD = "PRI"
H2_GOAWAY_MESSAGE = (b"keyhold sidecar: HTTP/2 without TLS (prior knowledge) is not supported here; "
                     b"use HTTP/1.1, or HTTP/2 over TLS")


def h2_goaway(debug: bytes, error_code: int = 0xD) -> bytes:
    """An empty server SETTINGS frame and a GOAWAY (RFC 9113 6.5, 6.8), default
    HTTP_1_1_REQUIRED: what an HTTP/2 client understands as "not here, and why"."""
    settings = struct.pack(">I", 0)[1:] + b"\x04\x00" + struct.pack(">I", 0)
    payload = struct.pack(">II", 0, error_code) + debug
    return settings + struct.pack(">I", len(payload))[1:] + b"\x07\x00" + struct.pack(">I", 0) + payload


class Refused(SidecarError):
    """A request the sidecar will not forward because no rule could be applied to it."""

    status = 403
    reason = "refused"


class Guard:
    def __init__(self, runtime: Runtime, send_raw: Callable[[object, bytes], None] | None = None) -> None:
        self.rt = runtime
        self.send_raw = send_raw or (lambda flow, data: flow.kill())
        """Write bytes to a flow's client and close it (set by the engine)."""

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        st = state_of(flow)
        if req.method == H2_PREFACE_METHOD and req.http_version == "HTTP/2.0":
            if st is not None:  # Metrics logs the refusal when the flow ends
                st.outcome, st.error = "denied", "http2_prior_knowledge"
            flow.metadata[DETAIL] = "HTTP/2 prior knowledge on a cleartext listener: GOAWAY HTTP_1_1_REQUIRED"
            self.send_raw(flow, h2_goaway(H2_GOAWAY_MESSAGE))
            return
        if st is None or st.error or flow.response is not None or st.route is None:
            return
        route = st.route
        has_step = route.request is not None or route.response is not None
        upgrade = headerfields.get(req.headers, b"upgrade", "")
        if upgrade and has_step and not self._allows_upgrade(st):
            fail(flow, "request", Refused(
                f"upgrade to {upgrade!r} refused: route {route.name} has a {route.action} rule that cannot be "
                "applied to an upgraded connection (set allow_upgrade = true on the route to let it pass "
                "unencrypted)", reason="upgrade_refused"))
            return
        if (route.request is not None and req.http_version == "HTTP/1.0" and req.method.upper() in BODY_METHODS
                and not headerfields.has(req.headers, b"content-length")
                and not headerfields.has(req.headers, b"transfer-encoding")):
            fail(flow, "request", SidecarError(
                f"an HTTP/1.0 {req.method} needs a Content-Length on route {route.name}: the end of its body "
                "cannot be known otherwise", status=411, reason="length_required"))
            return
        if route.response is not None and route.response.kind in ("encrypt", "decrypt"):
            _drop(req.headers, RANGE_HEADERS)  # a rewritten body is made from the whole upstream body

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or st.error or flow.response is None:
            return
        route = st.route
        if (flow.response.status_code == 101 and route is not None and (route.request or route.response)
                and not self._allows_upgrade(st)):
            # an upstream switching protocols: mitmproxy would then pipe both directions raw
            fail(flow, "response", Refused(
                f"the upstream switched protocols (101) on route {route.name}, whose {route.action} rule "
                "cannot be applied to an upgraded connection", status=502, reason="upgrade_refused"))
            # after a 101 mitmproxy has made the upstream connection a pipe and would wait on
            # it for ever: write the answer to an HTTP/1 client directly, and end the flow
            flow.response.headers[REQUEST_ID] = flow.id
            if flow.request.http_version.startswith("HTTP/1"):
                self.send_raw(flow, http1.assemble_response(flow.response))
            else:
                flow.kill()
            return
        step = st.step("response")
        if step is not None and step.kind in ("encrypt", "decrypt") and flow.response.status_code == 206:
            fail(flow, "response", SidecarError(
                f"the upstream sent a partial response (206), which route {st.rule} cannot {step.kind}",
                status=502, reason="partial_content"))
            flow.response.stream = _instead(flow.response.content)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        """No raw relay: a tunnel whose bytes are not HTTP would pass every rule by. (With
        `rawtcp` off mitmproxy makes none; this holds if an option ever turns one on.)
        mitmproxy's TCP layer does not look at `flow.kill()`: cut the connection, and
        `tcp_message` empties whatever was already read."""
        flow.metadata[RAW_REFUSED] = True
        log.warning("refused connection=%s reason=raw_tcp: a raw TCP relay to %s", flow.id, flow.server_conn.address)
        self.rt.abort(flow)

    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        if flow.metadata.get(RAW_REFUSED) and flow.messages:
            flow.messages[-1].content = b""

    @staticmethod
    def _allows_upgrade(st) -> bool:
        """The `allow_upgrade` of the config route the matched route was compiled from
        (routes compile one to one, in order; if that ever changes, nothing is allowed)."""
        table = st.table
        if len(table.routes) != len(table.entry.route):
            return False
        for compiled, configured in zip(table.routes, table.entry.route):
            if compiled is st.route:
                return bool(getattr(configured, "allow_upgrade", False))
        return False


class Framing:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        if req.http_version == "HTTP/1.0":
            flow.metadata[HTTP10_CLIENT] = True
        if (not req.stream or flow.response is not None
                or headerfields.has(req.headers, b"content-length")
                or headerfields.has(req.headers, b"transfer-encoding")):
            return
        # Transform streams this body and took its Content-Length away. Only HTTP/1.1 knows
        # chunked; an HTTP/1.0 or HTTP/2 request without it reaches an HTTP/1.1 upstream as
        # an empty body followed by stray bytes. (An HTTP/2 upstream drops the header.)
        req.headers["transfer-encoding"] = "chunked"
        if req.http_version == "HTTP/1.0":
            req.http_version = "HTTP/1.1"
            req.headers["connection"] = "close"  # the HTTP/1.0 client expects the close

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if resp is None:
            return
        st = state_of(flow)
        if headerfields.has(resp.headers, _ERROR):
            resp.headers[REQUEST_ID] = flow.id
            return
        if resp.stream:
            streamed_response_headers(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if resp is None:
            return
        if headerfields.has(resp.headers, _ERROR):
            resp.headers[REQUEST_ID] = flow.id
            return
        st = state_of(flow)
        if st is not None and not resp.stream:
            _drop_validators(st, resp, flow.request.method)


def streamed_response_headers(flow: http.HTTPFlow) -> None:
    """Headers of a response whose body streams: set when the stream is decided, in
    `responseheaders` or later, when a buffered body switches to streaming
    (sidecar.bodylimit), just before the headers leave."""
    resp = flow.response
    if flow.metadata.get(HTTP10_CLIENT) and headerfields.has(resp.headers, b"transfer-encoding"):
        del resp.headers["transfer-encoding"]  # the body ends when the connection closes
        resp.headers["connection"] = "close"
    st = state_of(flow)
    if st is not None:
        _drop_validators(st, resp, flow.request.method)


def _instead(body: bytes):
    """A stream callable that drops the upstream's body and sends `body` at its end."""
    return lambda chunk: [] if chunk else [body]


def _drop(headers, names: frozenset[bytes]) -> None:
    """Remove every field named in `names` (lower-case bytes): one pass over the raw
    fields, and none at all when no such field is there (mitmproxy's per-name calls are slow)."""
    fields = headers.fields
    if any(name.lower() in names for name, _ in fields):
        headers.fields = tuple((name, value) for name, value in fields if name.lower() not in names)


def _drop_validators(st, resp: http.Response, method: str) -> None:
    step = st.step("response")
    if step is None or step.kind not in ("encrypt", "decrypt") or st.error:
        return
    _drop(resp.headers, STALE_VALIDATORS)
    if method == "HEAD" and step.whole_body:
        resp.headers.pop("content-length", None)  # the envelope's size, not the plaintext's
