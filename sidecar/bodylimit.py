"""A per-flow bound on the bodies mitmproxy buffers, counted in bytes actually read.

mitmproxy buffers a body that is not streamed until its end, and its only bound,
`body_size_limit`, is one global option that is checked against the declared
Content-Length *before* any addon runs: set low, it would refuse the multi-GiB uploads
that whole-body routes stream; left unset, a chunked body (no Content-Length) on a
fields, sign or verify route grows without limit. So the sidecar sets a bound per flow
(`set_limit`, from the route's `limits.max_buffered_body`) and this module checks it
each time mitmproxy appends a chunk to a buffered body, through mitmproxy's own
`HttpStream.check_body_size` (the one place that sees every buffered chunk, for
HTTP/1 and HTTP/2 alike).

Over the bound, the client gets the sidecar's JSON error at once (413 for a request;
502 for an upstream response, whose connection is closed), with `Connection: close`;
the rest of a request body is read and dropped, so memory stays at the bound and the
client still reads the answer (closing with unread data would reset the connection
and could destroy the answer before the client reads it).

A flow may instead *switch to streaming* part-way (`set_switch`), as mitmproxy's own
`stream_large_bodies` does: on each buffered chunk a callback sees the bytes so far and
may return a stream callable; the headers then leave (possibly rewritten by the
callback) and the buffered bytes go through the callable first. Whole-body rules use
it so that a chunked body is buffered while it is small (clean errors) and streamed
once it is large, and so that a streamed decryption knows the envelope's header
(its authenticated Content-Type) before the response headers leave.
"""

from __future__ import annotations

from mitmproxy import flow as mflow
from mitmproxy.net.http.http1 import expected_http_body_size
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers.http import _events as ev
from mitmproxy.proxy.layers.http import _hooks as hooks

from sidecar.addons.routing import fail
from sidecar.errors import TooLarge

LIMIT_KEY = "keyhold.buffer_limit"
SWITCH_KEY = "keyhold.stream_switch."
_original = http_layer.HttpStream.check_body_size


def set_limit(flow, limit: int) -> None:
    """Bound the buffered bodies of `flow` (both directions) to `limit` bytes."""
    flow.metadata[LIMIT_KEY] = limit


def set_switch(flow, direction: str, switch) -> None:
    """`switch(buffer) -> stream callable | None`, asked on each buffered chunk of that
    direction's body (`buffer` supports len() and bytes()); it may raise to refuse the
    flow (the error is answered as by `fail`)."""
    flow.metadata[SWITCH_KEY + direction] = switch


def _over(stream, request: bool, limit: int) -> int | None:
    """The size that breaks the bound (bytes read so far, or the declared length)."""
    buf = stream.request_body_buf if request else stream.response_body_buf
    if len(buf) > limit:
        return len(buf)
    try:
        declared = expected_http_body_size(stream.flow.request, None if request else stream.flow.response)
    except ValueError:
        return None
    return declared if declared is not None and declared > limit else None


def _check_body_size(self, request: bool):
    f = getattr(self, "flow", None)
    limit = f.metadata.get(LIMIT_KEY) if f is not None else None
    buf = self.request_body_buf if request else self.response_body_buf
    if limit is None or not buf:
        # before the body: the headers hooks have not decided yet whether it streams
        return (yield from _original(self, request))
    direction = "request" if request else "response"
    switch = f.metadata.get(SWITCH_KEY + direction)
    if switch is not None:
        try:
            fn = switch(buf)
        except Exception as e:  # noqa: BLE001 - a rule that cannot be applied: refuse, fail closed
            yield from _refuse(self, request, e)
            return True
        if fn is not None:
            yield from _switch(self, request, fn)
            return False
        if len(buf) <= limit:
            return False  # the switch decides; a declared length alone does not refuse
    if (size := _over(self, request, limit)) is not None:
        what = "the request body" if request else "the upstream response body"
        exc = TooLarge(f"{what} is over the {limit}-byte limit for buffered bodies on this route ({size}+ bytes)")
        yield from _refuse(self, request, exc)
        return True
    return (yield from _original(self, request))


def _switch(stream, request: bool, fn):
    """Stream from now on, the bytes buffered so far first (as mitmproxy's Step 3)."""
    f = stream.flow
    stream.flow.metadata.pop(SWITCH_KEY + ("request" if request else "response"), None)
    if request:
        f.request.stream = fn
        data = bytes(stream.request_body_buf)
        stream.request_body_buf.clear()
        yield from stream.start_request_stream()
        yield from stream.handle_event(ev.RequestData(stream.stream_id, data))
    else:
        from sidecar.addons.guard import streamed_response_headers  # an addon's rule; imported late (no cycle)

        f.response.stream = fn
        streamed_response_headers(f)
        data = bytes(stream.response_body_buf)
        stream.response_body_buf.clear()
        yield from stream.start_response_stream()
        yield from stream.handle_event(ev.ResponseData(stream.stream_id, data))


def _refuse(stream, request: bool, exc: Exception):
    f = stream.flow
    direction = "request" if request else "response"
    (stream.request_body_buf if request else stream.response_body_buf).clear()
    if not request or f.response is None:
        fail(f, direction, exc)
    resp = f.response
    resp.headers["connection"] = "close"
    resp.headers.pop("transfer-encoding", None)
    resp.headers["content-length"] = str(len(resp.raw_content or b""))
    f.error = mflow.Error(f"{direction} body refused while buffering: {exc}")
    yield hooks.HttpErrorHook(f)  # metrics and the access log see the refusal
    yield http_layer.SendHttp(ev.ResponseHeaders(stream.stream_id, resp, end_stream=False), stream.context.client)
    if resp.raw_content:
        yield http_layer.SendHttp(ev.ResponseData(stream.stream_id, resp.raw_content), stream.context.client)
    yield http_layer.SendHttp(ev.ResponseEndOfMessage(stream.stream_id), stream.context.client)
    if not request:
        yield http_layer.SendHttp(
            ev.RequestProtocolError(stream.stream_id, "response refused", ev.ErrorCode.RESPONSE_TOO_LARGE),
            stream.context.server,
        )
    stream.client_state = stream.state_errored  # the rest of the body is read and dropped
    stream.server_state = stream.state_errored
    f.live = False


def install() -> None:
    """Hook the per-flow bound into mitmproxy (idempotent)."""
    http_layer.HttpStream.check_body_size = _check_body_size
