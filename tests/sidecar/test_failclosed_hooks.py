"""An exception in a sidecar hook refuses the flow; mitmproxy alone would log it and
forward the flow as if the hook had not run (a plaintext body past an encrypt rule)."""

from __future__ import annotations

import json

from mitmproxy.test import tflow

from sidecar.addons.failclosed import FailClosed


class Broken:
    """A real addon with a bug: every hook raises."""

    def requestheaders(self, flow):
        raise KeyError("a bug")

    def responseheaders(self, flow):
        raise ValueError("a bug")

    def response(self, flow):
        raise RuntimeError("a bug")


def test_a_failing_request_hook_answers_500_and_forwards_nothing():
    aborted = []
    addon = FailClosed(Broken(), aborted.append)
    flow = tflow.tflow()
    addon.requestheaders(flow)  # does not raise
    assert flow.response.status_code == 500
    assert json.loads(flow.response.content)["error"]["reason"] == "internal"
    assert flow.response.headers["X-Keyhold-Error"] == "internal"
    assert aborted == []


def test_a_failing_response_headers_hook_replaces_the_upstream_body():
    addon = FailClosed(Broken(), lambda flow: None)
    flow = tflow.tflow(resp=True)
    addon.responseheaders(flow)
    assert flow.response.status_code == 500
    ours = flow.response.stream(b"upstream bytes") + flow.response.stream(b"")
    assert b"upstream bytes" not in b"".join(ours) and b"internal" in b"".join(ours)


def test_a_failing_hook_after_a_streamed_response_cuts_the_connection():
    aborted = []
    addon = FailClosed(Broken(), aborted.append)
    flow = tflow.tflow(resp=True)
    flow.response.stream = True
    addon.response(flow)
    assert aborted == [flow]


def test_only_the_hooks_the_addon_has_are_exposed():
    addon = FailClosed(Broken(), lambda flow: None)
    assert hasattr(addon, "requestheaders") and not hasattr(addon, "request") and not hasattr(addon, "error")


def test_a_raw_tcp_relay_is_cut_and_relays_nothing():
    """mitmproxy makes no TCP flows with rawtcp off; if one appears, Guard cuts it and
    empties what was read (mitmproxy's TCP layer ignores flow.kill())."""
    from sidecar.addons.guard import Guard
    from sidecar.addons.routing import Runtime

    cut = []
    guard = Guard(Runtime(kms=None, tables={}, abort=cut.append))
    flow = tflow.ttcpflow()
    guard.tcp_start(flow)
    guard.tcp_message(flow)
    assert cut == [flow] and flow.messages[-1].content == b""
