"""Prometheus metrics, the JSON access log (never body bytes), forward-proxy mode."""

from __future__ import annotations

import json
import ssl
import logging

import httpx
from conftest import free_port

from sidecar.config import ProxyEntry


def metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_by_rule_action_outcome(client, sidecar):
    before = httpx.get(sidecar.metrics_url).text
    client.post("/fields/m", json={"user": {"ssn": "1"}})
    client.post("/fields/m", content=b"not json")
    after = httpx.get(sidecar.metrics_url).text
    name = "keyhold_sidecar_requests_total"
    ok = dict(proxy="main", rule="fields", action="encrypt-fields+decrypt-fields", outcome="ok")
    denied = {**ok, "outcome": "denied"}
    assert metric(after, name, **ok) == metric(before, name, **ok) + 1
    assert metric(after, name, **denied) == metric(before, name, **denied) + 1
    assert metric(after, "keyhold_sidecar_request_seconds_count", proxy="main", rule="fields") >= 2
    assert metric(after, "keyhold_sidecar_body_bytes_total", proxy="main", direction="request") > 0


def test_access_log_has_rule_action_key_outcome_but_no_body(client, caplog, kms):
    caplog.set_level(logging.INFO, logger="keyhold.sidecar.access")
    client.post("/fields/a?token=q", json={"user": {"ssn": "secret-ssn-999"}})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "keyhold.sidecar.access"]
    rec = lines[-1]
    assert rec["rule"] == "fields" and rec["request_action"] == "encrypt-fields" and rec["outcome"] == "ok"
    assert rec["keys"] == [kms.describe_key("app/data").key_id] and rec["status"] == 200 and rec["path"] == "/fields/a"
    assert isinstance(rec["latency_ms"], float)
    assert "secret-ssn-999" not in caplog.text and "token=q" not in caplog.text


def test_forward_proxy_mode(sidecar, upstream):
    fwd = ProxyEntry.model_validate({
        "name": "fwd", "mode": "forward", "listen": f"127.0.0.1:{free_port()}",
        "route": [{"match": {"host": "127.0.0.1", "path": "/fwd*"},
                   "request": {"action": "encrypt", "key": "app/data", "fields": ["user.ssn"]},
                   "response": {"action": "decrypt", "key": "app/data", "fields": ["user.ssn"]}}],
    })
    before = list(sidecar.entries)
    sidecar.apply([*before, fwd])
    try:
        upstream.clear()
        with httpx.Client(proxy=f"http://{fwd.listen}", timeout=30) as c:
            r = c.post(f"{upstream.url}/fwd", json={"user": {"ssn": "078"}})
        assert r.status_code == 200 and r.json() == {"user": {"ssn": "078"}}
        assert json.loads(upstream.last().body)["user"]["ssn"].startswith("khf1.")
        # the rule follows the real destination, not a Host header the client made up
        with httpx.Client(proxy=f"http://{fwd.listen}", timeout=30) as c:
            c.post(f"{upstream.url}/fwd", json={"user": {"ssn": "078"}}, headers={"host": "elsewhere.example"})
        assert json.loads(upstream.last().body)["user"]["ssn"].startswith("khf1.")
    finally:
        sidecar.apply(before)


def test_forward_https_client_trusts_sidecar_ca_and_upstream_is_verified(sidecar):
    """HTTPS through the forward proxy: the client trusts the sidecar's CA (in the KMS
    home); the sidecar verifies the upstream, whose self-signed cert it does not trust."""
    from pathlib import Path

    from upstream import start_upstream, stop_upstream

    up, server = start_upstream(tls=True)
    fwd = ProxyEntry.model_validate({"name": "fwd-tls", "mode": "forward", "listen": f"127.0.0.1:{free_port()}"})
    before = list(sidecar.entries)
    sidecar.apply([*before, fwd])
    try:
        ca = Path(sidecar.confdir) / "mitmproxy-ca-cert.pem"
        assert ca.exists()
        with httpx.Client(proxy=f"http://{fwd.listen}", verify=ssl.create_default_context(cafile=str(ca)), timeout=30) as c:
            r = c.post(f"{up.url}/x", content=b"hello")
        assert r.status_code == 502  # TLS to the client worked; the upstream cert was refused
        assert up.received == []
        with httpx.Client(proxy=f"http://{fwd.listen}", timeout=30) as c:  # without the CA: refused
            try:
                c.post(f"{up.url}/x", content=b"hello")
                raise AssertionError("the sidecar CA must not be trusted by default")
            except httpx.ConnectError:
                pass
    finally:
        sidecar.apply(before)
        stop_upstream(up, server)
