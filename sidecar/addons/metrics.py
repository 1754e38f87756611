"""Metrics and the access log: one record per finished flow, never a body byte.

Prometheus series (prometheus-client, a registry of our own so that two engines in one
process or a test run do not collide): requests by proxy/rule/action/outcome, bytes by
direction, and a latency histogram. Access-log lines are JSON objects.
"""

from __future__ import annotations

import json
import logging
import os
import time

from mitmproxy import http
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sidecar.addons.routing import DETAIL, ERROR_HEADER, state_of

access_log = logging.getLogger("keyhold.sidecar.access")
log = logging.getLogger("keyhold.sidecar")
_COUNTED = "keyhold.in_flight"
_PID = os.getpid()


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "keyhold_sidecar_requests", "Requests by proxy, rule, action and outcome",
            ["proxy", "rule", "action", "outcome"], registry=self.registry,
        )
        self.bytes = Counter(
            "keyhold_sidecar_body_bytes", "Body bytes received from clients / upstreams",
            ["proxy", "direction"], registry=self.registry,
        )
        self.latency = Histogram(
            "keyhold_sidecar_request_seconds", "Time from request headers to the end of the response",
            ["proxy", "rule"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.in_flight = Gauge("keyhold_sidecar_in_flight", "Requests being handled", registry=self.registry,
                               multiprocess_mode="livesum")  # workers of a pool: the sum of the live ones
        self.active = 0
        self._children: dict[tuple, tuple] = {}  # labels() is slow; look each label set up once

    def _series(self, proxy: str, rule: str, action: str, outcome: str) -> tuple:
        key = (proxy, rule, action, outcome)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = (
                self.requests.labels(proxy, rule, action, outcome),
                self.bytes.labels(proxy, "request"),
                self.bytes.labels(proxy, "response"),
                self.latency.labels(proxy, rule),
            )
        return found

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        flow.metadata[_COUNTED] = True
        self.active += 1
        self.in_flight.inc()

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is not None and st.outcome == "ok":
            st.outcome = "upstream_error"
            st.error = "upstream"
        if flow.error is not None:
            flow.metadata.setdefault(DETAIL, flow.error.msg)
        self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.pop(_COUNTED, False):  # once per flow, routed or not
            self.active -= 1
            self.in_flight.dec()
        st = state_of(flow)
        if st is None:
            if flow.response is not None and ERROR_HEADER in flow.response.headers:
                log.warning("refused request=%s proxy=- rule=- method=%s status=%s reason=%s", flow.id,
                            flow.request.method, flow.response.status_code, flow.response.headers[ERROR_HEADER])
            return
        if st.done:
            return
        st.done = True
        elapsed = time.monotonic() - st.started
        req_step, resp_step = st.step("request"), st.step("response")
        action = st.route.action if st.route else "pass"
        requests, req_bytes, resp_bytes, latency = self._series(st.proxy, st.rule, action, st.outcome)
        requests.inc()
        req_bytes.inc(len(flow.request.raw_content or b"") if not flow.request.stream else st.bytes_in)
        if flow.response is not None and not flow.response.stream:
            resp_bytes.inc(len(flow.response.raw_content or b""))
        latency.observe(elapsed)
        if st.outcome != "ok":
            log_refusal(flow, st)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(json.dumps({
                "ts": round(time.time(), 3),
                "proxy": st.proxy,
                "rule": st.rule,
                "method": flow.request.method,
                "path": flow.request.path.split("?", 1)[0],
                "status": flow.response.status_code if flow.response else None,
                "request_action": req_step.name if req_step else None,
                "response_action": resp_step.name if resp_step else None,
                "keys": sorted(st.key_ids),
                "outcome": st.outcome,
                "request_id": flow.id,
                "error": st.error,
                "latency_ms": round(elapsed * 1000, 3),
                "pid": _PID,  # which worker process of a pool served it
            }))


def log_refusal(flow: http.HTTPFlow, st) -> None:
    """One line per refused or failed request: its id (also sent to the client in
    X-Keyhold-Request-Id), proxy, route, reason and the one-line message. Never a body,
    a header value, a query string, a token or a key: the messages are built without them."""
    status = flow.response.status_code if flow.response is not None else "-"
    detail = " ".join(str(flow.metadata.get(DETAIL, "")).split())[:300]
    log.warning(
        "%s request=%s proxy=%s rule=%s method=%s path=%s status=%s reason=%s%s",
        "refused" if st.outcome == "denied" else "failed", flow.id, st.proxy, st.rule, flow.request.method,
        flow.request.path.split("?", 1)[0][:200], status, st.error or st.outcome, f": {detail}" if detail else "",
    )
