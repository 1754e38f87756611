"""sidecar.headerfields gives mitmproxy's answers, and the hook chain uses it: a 4 KiB
encrypted or fields request makes (almost) no call of mitmproxy's slow per-name lookup."""

from __future__ import annotations

import json

import pytest
from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

from kmscore.dkcache import DataKeyCache
from sidecar import headerfields
from sidecar.addons import Metrics, Routing, Runtime, Signing, Transform
from sidecar.addons.failclosed import Chain, FailClosed
from sidecar.addons.guard import Framing, Guard
from sidecar.config import ProxyEntry
from sidecar.engine import mode_spec
from sidecar.rules import compile_entry

CASES = [
    [],
    [(b"Content-Length", b"12")],
    [(b"content-length", b"12"), (b"CONTENT-LENGTH", b"12")],
    [(b"Transfer-Encoding", b"")],
    [(b"X-A", b"1"), (b"x-a", b"2"), (b"X-b", b"3")],
    [(b"Host", b"caf\xc3\xa9.example"), (b"host", b"\xff\xfe")],
    [(b"Upgrade", b"websocket"), (b"Connection", b"upgrade")],
]
NAMES = [b"content-length", b"transfer-encoding", b"x-a", b"x-b", b"host", b"upgrade", b"missing"]


@pytest.mark.parametrize("fields", CASES)
def test_lookups_answer_as_mitmproxy_headers_do(fields):
    headers = http.Headers(fields)
    for name in NAMES:
        text = name.decode()
        assert headerfields.has(headers, name) is (text in headers)
        assert headerfields.get(headers, name) == headers.get(text)
        assert headerfields.get(headers, name, "dflt") == headers.get(text, "dflt")
        assert headerfields.get_all(headers, name) == headers.get_all(text)


def _flow(spec: str, body: bytes):
    f = tflow.tflow()
    f.client_conn.proxy_mode = ProxyMode.parse(spec)
    f.request.method = "POST"
    f.request.path = "/api/users"
    f.request.headers["content-type"] = "application/json"
    f.request.content = body
    return f


@pytest.mark.parametrize("rule", [{"action": "encrypt", "key": "app/data"},
                                  {"action": "encrypt", "key": "app/data", "fields": ["user.ssn"]}])
def test_the_hook_chain_barely_calls_mitmproxys_header_lookup(kms, monkeypatch, rule):
    entry = ProxyEntry.model_validate({"name": "p", "listen": "127.0.0.1:1", "upstream": "http://127.0.0.1:9",
                                       "route": [{"request": rule}]})
    rt = Runtime(kms=kms, tables={mode_spec(entry): compile_entry(entry, kms)}, dkcache=DataKeyCache(kms))
    addons = (Routing(rt), Guard(rt, lambda flow, data: None), Transform(rt), Signing(rt), Framing(rt), Metrics())
    chain = Chain([FailClosed(a, rt.abort) for a in addons])
    body = json.dumps({"user": {"ssn": "078-05-1120"}, "pad": "x" * 4000}).encode()
    flow = _flow(mode_spec(entry), body)
    calls = []
    original = http.Headers.get_all
    monkeypatch.setattr(http.Headers, "get_all", lambda self, name: calls.append(name) or original(self, name))
    chain.requestheaders(flow)
    chain.request(flow)
    flow.response = tflow.tresp()
    chain.responseheaders(flow)
    chain.response(flow)
    assert flow.request.content != body and flow.response.status_code == 200  # the rule was applied
    # left: mitmproxy's own `host`/`pretty_host` properties read by Routing (Host header)
    assert len(calls) <= 3, calls
