"""Transform: encrypt or decrypt whole bodies (envelopes) or selected JSON fields (tokens).

Bodies up to `limits.max_buffered_body` are transformed whole, so any failure becomes
a JSON error and nothing is forwarded. Larger (or chunked) whole-body bodies stream
through the envelope's frames in constant memory; a failure after the headers have
left can only abort the connection, which the peer sees as a truncated message
(never as plaintext that was meant to be encrypted).

Memory: every body the proxy holds is bounded. Bodies no rule transforms stream
through. Buffered bodies (fields, sign, verify, small whole-body ones) are bounded per
flow by the bytes actually read (sidecar.bodylimit: a chunked body is refused with 413
as soon as it passes the limit), then by their decoded size and compression ratio
(sidecar.decoding), then by the number of JSON values they parse into. Streams check on
every chunk that their key is still usable (revocation within the data-key cache's
bound, both directions).
"""

from __future__ import annotations

import json
import logging

from mitmproxy import http

from sidecar import bodies, bodylimit, decoding, fields, headerfields, tokens
from sidecar.addons.routing import Runtime, classify, fail, state_of
from sidecar.errors import BadBody, TooLarge
from sidecar.rules import Step

log = logging.getLogger("keyhold.sidecar")
REFUSED_BODY_LIMIT = 64 * 1024
"""A request already answered (no route, reloading) buffers no more than this of its body."""
STREAM_AFTER = 1 << 20
"""A whole-body message of unknown length is buffered up to this (or the limit, if lower)
and then streamed: small ones keep clean JSON errors; large ones cost no more memory
than this, whatever the limit (copies of a 16 MiB buffer would cost ~60 MiB)."""
MAX_JSON_VALUES = 1_000_000
"""JSON bodies parse into Python objects of ~30..230 bytes per value: past this many
values (an estimate counted from `,` and `:`), a fields body is refused with 413."""


class Transform:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        bodylimit.install()

    def _key_check(self, key_id: str) -> None:
        """Raise if the key may no longer be used (asked on every chunk of a stream)."""
        cache = self.rt.dkcache
        if cache is not None:
            cache.check(key_id)
        else:
            self.rt.kms.key_usable(key_id, "decrypt")

    # -- requests --------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._headers(flow, flow.request, "request")

    def request(self, flow: http.HTTPFlow) -> None:
        self._body(flow, flow.request, "request")

    # -- responses -------------------------------------------------------------------
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._headers(flow, flow.response, "response")

    def response(self, flow: http.HTTPFlow) -> None:
        self._body(flow, flow.response, "response")

    # -- shared ----------------------------------------------------------------------
    def _headers(self, flow: http.HTTPFlow, msg: http.Message, direction: str) -> None:
        """Decide buffer or stream before the body arrives."""
        st = state_of(flow)
        limit = st.table.entry.limits.max_buffered_body if st is not None else REFUSED_BODY_LIMIT
        if direction == "request" and flow.response is not None:
            limit = min(limit, REFUSED_BODY_LIMIT)  # answered already: the body is only drained
        bodylimit.set_limit(flow, limit)  # whatever is buffered below, never more than this
        if st is None or st.error or (direction == "request" and flow.response is not None):
            return
        if direction == "response" and (flow.request.method == "HEAD" or flow.response.status_code in (204, 304)):
            return  # no body follows, whatever Content-Length says
        step = st.step(direction)
        size = _declared_size(msg)
        if step is None:
            if direction == "request" and st.pending is not None:
                return  # a 405 waits for the body (routing.request): buffer it, bounded, never stream it on
            if size is None or size > limit:
                msg.stream = _passthrough(st)  # nothing to apply: never buffer a large body
            return
        if size is not None and size <= limit:
            return  # buffered: handled in request()/response()
        if step.kind in ("encrypt", "decrypt") and not step.fields:
            try:
                if step.kind == "encrypt" and size is not None:
                    msg.stream = self._streamer(flow, direction, st, step, msg)  # known to be large
                else:
                    # chunked, or a large envelope: buffered while small, streamed once over
                    # the limit (for decryption, the envelope header and its authenticated
                    # type are known by then, before any response header leaves)
                    if step.kind == "decrypt":
                        bodies.check_envelope_headers(msg.headers)
                    bodylimit.set_switch(flow, direction, self._switcher(flow, direction, st, step, msg, limit))
            except Exception as e:  # noqa: BLE001 - every failure must fail closed
                self._fail_early(flow, direction, e, size, limit)
            else:
                st.key_ids.add(step.key_id or step.key)
            return
        if size is not None:
            self._fail_early(flow, direction, TooLarge(
                f"the body ({size} bytes) is over the {limit}-byte limit for {step.name} rules"), size, limit)

    def _fail_early(self, flow, direction, exc, size, limit) -> None:
        fail(flow, direction, exc)  # logs, counts, and sets the JSON error response
        if direction == "response":
            # mitmproxy would still read the upstream body into the response it holds (ours):
            # stream it into nothing instead and send our JSON body when the upstream is done
            flow.response.stream = _replacement(flow.response.content)
        else:
            # the answer leaves with the first chunk of the body (sidecar.bodylimit); the
            # rest is read and dropped, never buffered
            bodylimit.set_limit(flow, min(limit, REFUSED_BODY_LIMIT))

    def _switcher(self, flow, direction: str, st, step: Step, msg: http.Message, limit: int):
        """When to stop buffering a whole-body message and stream it (sidecar.bodylimit)."""

        threshold = min(limit, STREAM_AFTER)

        def switch(buf):
            if len(buf) <= threshold:
                return None  # may still end small: transformed whole, with clean errors
            if step.kind == "encrypt":
                return self._streamer(flow, direction, st, step, msg)
            header = bodies.peek_header(bytes(buf))  # long since complete: a header is < 9 KiB
            return None if header is None else self._streamer(flow, direction, st, step, msg, header)

        return switch

    def _streamer(self, flow, direction: str, st, step: Step, msg: http.Message, header=None):
        """The stream callable of a whole-body rule; for decryption, `header` is the
        envelope's (read from the first bytes), so its key and metadata are checked and
        its Content-Type restored before any header leaves."""
        frame = st.table.entry.frame_size
        if step.kind == "encrypt":
            fn = bodies.Sealer(self.rt.kms, step.key, frame, bodies.metadata_of(msg.headers), check=self._key_check)
            bodies.seal_headers(msg.headers)
        else:
            fn = bodies.Opener(self.rt.kms, self.rt.dkcache, step.key_id, check=self._key_check)
            fn.open_header(header)  # a wrong key or a revoked one: a clean error, nothing sent yet
            bodies.restore_headers(msg.headers, bodies.metadata_of_header(header))
        msg.headers.pop("content-length", None)
        if msg.http_version == "HTTP/1.1":
            msg.headers["transfer-encoding"] = "chunked"
        return _guarded(flow, direction, st, fn, self.rt.abort)

    def _body(self, flow: http.HTTPFlow, msg: http.Message | None, direction: str) -> None:
        st = state_of(flow)
        if st is None or st.error or msg is None or msg.stream:
            return
        if direction == "request" and flow.response is not None:
            return
        step = st.step(direction)
        st.bytes_in += len(msg.raw_content or b"")
        if step is None or step.kind not in ("encrypt", "decrypt"):
            return
        try:
            limit = st.table.entry.limits.max_buffered_body
            if len(msg.raw_content or b"") > limit:
                raise TooLarge(f"the body is over the {limit}-byte limit for {step.name} rules")
            if step.fields:
                self._fields(st, step, msg)
            elif step.kind == "encrypt":
                if msg.raw_content:
                    meta = bodies.metadata_of(msg.headers)
                    _set_raw(msg, bodies.seal_all(self.rt.kms, step.key, msg.raw_content, st.table.entry.frame_size, meta))
                    bodies.seal_headers(msg.headers)
            elif msg.raw_content:
                bodies.check_envelope_headers(msg.headers)
                plain, meta = bodies.open_body(self.rt.kms, msg.raw_content, self.rt.dkcache, step.key_id)
                _set_raw(msg, plain)
                bodies.restore_headers(msg.headers, meta)
            elif bodies.ENVELOPE_TYPE in headerfields.get(msg.headers, b"content-type", ""):
                bodies.open_headers(msg.headers)  # HEAD, 204, 304: only the headers to restore
            st.key_ids.add(step.key_id or step.key)
        except Exception as e:  # noqa: BLE001 - every failure must fail closed
            fail(flow, direction, e)

    def _fields(self, st, step: Step, msg: http.Message) -> None:
        encoded = headerfields.has(msg.headers, b"content-encoding")
        limit = st.table.entry.limits.max_buffered_body
        text = decoding.decode(msg.raw_content, msg.headers["content-encoding"], limit) if encoded else msg.raw_content
        if not text:
            return
        _check_json_size(text)
        try:
            doc = json.loads(text)
        except (UnicodeDecodeError, ValueError):
            raise BadBody(f"the body is not JSON; rule {step.name} needs JSON fields") from None
        kms = self.rt.kms
        for path in step.fields:
            if step.kind == "encrypt":
                fields.rewrite(doc, path, lambda v, p=path.text: tokens.seal(kms, step.key, p, v))
            else:
                fields.rewrite(doc, path, lambda v, p=path.text: tokens.open_(kms, p, v, step.key))
        out = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        if encoded:
            try:
                msg.content = out  # re-encoded with the message's Content-Encoding
                return
            except ValueError:  # a stack of codings mitmproxy cannot write: send it unencoded
                msg.headers.pop("content-encoding")
        _set_raw(msg, out)


def _check_json_size(text: bytes) -> None:
    """Refuse (413) a body that would parse into more values than MAX_JSON_VALUES: an
    upper estimate (every value but the first follows a `,` or `:`, or opens with `[`),
    counted at C speed before anything is parsed."""
    if len(text) // 2 < MAX_JSON_VALUES:
        return  # too short to hold that many
    estimate = text.count(b",") + text.count(b":") + text.count(b"[") + 1
    if estimate > MAX_JSON_VALUES:
        raise TooLarge(f"the JSON body holds more than {MAX_JSON_VALUES} values")


def _set_raw(msg: http.Message, data: bytes) -> None:
    """Replace the body bytes as they go on the wire, keeping the framing headers true."""
    msg.raw_content = data
    if not headerfields.has(msg.headers, b"transfer-encoding"):
        msg.headers["content-length"] = str(len(data))


def _declared_size(msg: http.Message) -> int | None:
    """The Content-Length, or None when the body is chunked / unknown."""
    if headerfields.has(msg.headers, b"transfer-encoding"):
        return None
    try:
        return int(headerfields.get(msg.headers, b"content-length", "0"))
    except ValueError:
        return None


def _passthrough(st):
    """A stream callable for a body no rule touches: forwarded as it comes, counted."""

    def stream(chunk: bytes) -> bytes:
        st.bytes_in += len(chunk)
        st.bytes_out += len(chunk)
        return chunk

    return stream


def _replacement(body: bytes):
    """A stream callable that drops what arrives and yields `body` at the end."""

    def stream(chunk: bytes) -> list[bytes]:
        return [] if chunk else [body]

    return stream


def _guarded(flow, direction: str, st, fn, abort):
    """Wrap a stream callable: count bytes; on a failure mid-stream, log it and cut both
    connections (the peer sees a truncated message); never hand mitmproxy an empty chunk
    (it would be written as the `0\r\n\r\n` terminator of a chunked body)."""
    failed = False

    def stream(chunk: bytes) -> list[bytes]:
        nonlocal failed
        if failed:
            return []
        st.bytes_in += len(chunk)
        try:
            out = fn(chunk)
        except Exception as e:  # noqa: BLE001 - headers are gone: cutting off is all that is left
            failed = True
            status, reason, message = classify(e)
            st.outcome, st.error = "error", reason
            log.warning("rule %s (%s) failed mid-stream, connection cut: %s: %s", st.rule, direction, reason, message)
            abort(flow)
            return []
        st.bytes_out += len(out)
        return [out] if out else []

    return stream
