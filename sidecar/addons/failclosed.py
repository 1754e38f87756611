"""FailClosed: an exception in any sidecar hook refuses the flow instead of passing it.

mitmproxy catches an exception raised by an addon hook, logs it and carries on with the
flow as if the hook had not run: a bug in routing would forward a body that a rule says
must be encrypted, in plaintext. Each sidecar addon is wrapped, so a hook that raises
answers the flow with a 500 JSON error (before its headers left) or cuts its
connections (after), and the traceback goes to the log, never to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from mitmproxy import http

from sidecar.addons.routing import DETAIL, error_response, state_of

log = logging.getLogger("keyhold.sidecar")
HOOKS = ("requestheaders", "request", "responseheaders", "response", "error", "http_connect", "tcp_start",
         "tcp_message")
_BEFORE_RESPONSE = ("requestheaders", "request", "http_connect")


class FailClosed:
    """Wraps one addon; only the hooks it defines are exposed to mitmproxy."""

    def __init__(self, inner: object, abort: Callable[[object], None]) -> None:
        self.inner = inner
        self.name = f"keyhold-{type(inner).__name__.lower()}"
        self._abort = abort
        for hook in HOOKS:
            fn = getattr(inner, hook, None)
            if fn is not None:
                setattr(self, hook, self._guarded(hook, fn))

    def _guarded(self, hook: str, fn):
        def call(flow) -> None:
            try:
                fn(flow)
            except Exception:  # noqa: BLE001 - the one place that turns a bug into a refusal
                log.exception("request %s: internal error in %s.%s; refused", flow.id, type(self.inner).__name__, hook)
                refuse(flow, hook, self._abort)

        call.__name__ = hook
        return call


class Chain:
    """The sidecar's addons as one mitmproxy addon, each hook calling theirs in order.

    mitmproxy dispatches every event (connections, TLS, layers, HTTP) to every addon it
    holds, through a context manager and a coroutine each: about 3-4 us per addon per
    event, some 12 events per request. Registered one by one, the six sidecar addons
    cost more CPU per request than the rules themselves (measured with py-spy under wrk:
    mitmproxy's addonmanager went from 8 % to 13 % of the samples); as one addon, each
    event pays once. The order, and every hook's FailClosed guard, are unchanged.
    """

    name = "keyhold"

    def __init__(self, addons: Sequence[FailClosed]) -> None:
        self.members = list(addons)  # not `addons`: mitmproxy would dispatch to each again
        for hook in HOOKS:
            calls = tuple(getattr(a, hook) for a in self.members if hasattr(a, hook))
            if calls:
                setattr(self, hook, _in_order(hook, calls))


def _in_order(hook: str, calls: tuple):
    if len(calls) == 1:
        return calls[0]

    def call(flow) -> None:
        for fn in calls:
            fn(flow)

    call.__name__ = hook
    return call


def refuse(flow, hook: str, abort: Callable[[object], None]) -> None:
    """Answer or cut a flow whose hook failed: no byte of it goes on unchecked."""
    flow.metadata[DETAIL] = f"internal error in the {hook} hook"
    st = state_of(flow)
    if st is not None:
        st.outcome, st.error = "error", "internal"
    if not isinstance(flow, http.HTTPFlow):
        flow.kill()
        return
    rule = st.rule if st is not None else "-"
    direction = "request" if hook in _BEFORE_RESPONSE else "response"
    if hook == "error":
        return  # the flow is over already
    if hook == "response" and flow.response is not None and flow.response.stream:
        abort(flow)  # its headers and body have left: cutting off is all that is left
        return
    flow.response = error_response(500, "internal", rule, direction, "internal error while applying the rule")
    if hook == "responseheaders":
        body = flow.response.content
        flow.response.stream = lambda chunk: [] if chunk else [body]  # drop the upstream's body
