"""The sidecar's own answer where mitmproxy would send its HTML error page.

mitmproxy answers transport failures itself, below the addon hooks: an upstream that is
down or dies before its response headers (502), a request it cannot parse, such as
Content-Length together with Transfer-Encoding (400), a body over its own limits (413).
Its page is HTML with `Server: mitmproxy`. A client of the sidecar must get the same
JSON error, with `X-Keyhold-Error`, that every other refusal gets, and no banner naming
the proxy software. mitmproxy has no hook for these pages, so `install()` swaps the two
module-level functions that build them (HTTP/1 `make_error_response`, and the HTML body
of the HTTP/2 page, whose header list is fixed inside mitmproxy: an HTTP/2 client still
sees `content-type: text/html` there, with a JSON body). The hostile-transport tests
fail if a mitmproxy upgrade moves them.
"""

from __future__ import annotations

import json
import logging

from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1, _http2

log = logging.getLogger("keyhold.sidecar")
ERROR_HEADER = "X-Keyhold-Error"
BANNER = "keyhold-sidecar"

REASONS: dict[int, tuple[str, str]] = {
    # status: (reason code, who is at fault)
    400: ("bad_request", "request"),
    408: ("client_timeout", "request"),
    413: ("too_large", "request"),
    414: ("too_large", "request"),
    431: ("too_large", "request"),
    502: ("upstream_failed", "response"),
    504: ("upstream_timeout", "response"),
}
"""Reason codes of mitmproxy's own errors; any other status is `transport_error`."""


def error_body(status: int, message: str) -> bytes:
    """The JSON body of every sidecar error (the same shape as routing.error_response)."""
    reason, direction = REASONS.get(status, ("transport_error", "response" if status >= 500 else "request"))
    return json.dumps({"error": {"status": status, "reason": reason, "rule": "-", "direction": direction,
                                 "message": _clean(message)}}).encode()


def _clean(message: str) -> str:
    """mitmproxy's messages name a socket error or a parse error; keep them to one short line."""
    line = " ".join(str(message).split()).replace("mitmproxy", "the proxy")  # no banner in the text either
    return line[:200] or "transport error"


def make_error_response(status_code: int, message: str = "") -> bytes:
    """A drop-in for mitmproxy's `_http1.make_error_response`: bytes of a whole response."""
    body = error_body(status_code, message)
    reason = json.loads(body)["error"]["reason"]
    resp = http.Response.make(
        status_code,
        body,
        http.Headers(Content_Type="application/json", Connection="close", Cache_Control="no-store",
                     **{ERROR_HEADER.replace("-", "_"): reason}),
    )
    return http1.assemble_response(resp)


class _Version:
    """Stands in for `mitmproxy.version` inside the HTTP/2 layer: its `server` header."""

    MITMPROXY = BANNER


_REPLACED = ((_http1, "make_error_response", make_error_response), (_http2, "format_error", error_body),
             (_http2, "version", _Version))


def install() -> None:
    """Put the sidecar's error pages in place of mitmproxy's (idempotent). A mitmproxy
    that no longer has one of them gets a warning: its own page would be sent there."""
    for module, name, ours in _REPLACED:
        if not hasattr(module, name):
            log.warning("mitmproxy has no %s.%s any more: its own error page may be sent", module.__name__, name)
        setattr(module, name, ours)
