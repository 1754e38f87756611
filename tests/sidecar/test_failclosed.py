"""Fail closed: whenever a rule cannot be applied the client gets a JSON error and the
upstream receives nothing. Also: route matching and the dead-upstream 502."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import error_of, free_port

from kmscore import Kms
from sidecar.config import ProxyEntry


def test_disabled_key_fails_closed_and_recovers(client, upstream, kms):
    kms.disable_key("app/off")
    try:
        r = client.post("/off", json={"secret": 1})
        assert r.status_code == 503
        err = error_of(r)
        assert err["reason"] == "key_unavailable" and err["rule"] == "off" and "app/off" in err["message"]
        assert b"secret" not in r.content
        assert upstream.received == []
    finally:
        kms.enable_key("app/off")


def test_kms_store_gone_fails_closed(client, upstream, sidecar, tmp_path):
    """A real Kms whose store was closed under the proxy: the rule answers 5xx, nothing leaks."""
    gone = Kms(tmp_path / "home", caller="test:gone")
    gone.close()
    live, sidecar.runtime.kms = sidecar.runtime.kms, gone
    try:
        r = client.post("/fields/x", json={"user": {"ssn": "secret-ssn"}})
    finally:
        sidecar.runtime.kms = live
    assert r.status_code >= 500
    assert error_of(r)["rule"] == "fields"
    assert b"secret-ssn" not in r.content
    assert upstream.received == []


def test_route_match_on_host_and_method(client, upstream):
    def sent(method="POST", **headers):
        upstream.clear()
        r = client.request(method, "/host" if method == "POST" else "/method", json={"s": "plain"}, headers=headers)
        assert r.status_code == 200
        return json.loads(upstream.last().body)["s"]

    assert sent(host="api.example.com").startswith("khf1.")  # host glob matches
    assert sent(host="API.Example.com:8443").startswith("khf1.")  # case and port do not matter
    assert sent() == "plain"  # 127.0.0.1 is not *.example.com
    upstream.clear()
    r = client.post("/method", json={"s": "plain"})  # the rule is PUT only: POST would skip it
    assert r.status_code == 405 and r.headers["allow"] == "PUT" and upstream.received == []
    assert sent("PUT").startswith("khf1.")


def test_unmatched_deny(sidecar, upstream):
    upstream.clear()
    with httpx.Client(base_url=sidecar.urls["strict"]) as c:
        assert c.post("/ok", content=b"x").status_code == 200
        assert len(upstream.received) == 1
        r = c.post("/other", content=b"x")
        assert r.status_code == 403 and error_of(r)["reason"] == "no_route"
    assert len(upstream.received) == 1


def test_dead_upstream_is_502_and_reload_adds_a_listener(sidecar, upstream):
    dead = ProxyEntry.model_validate({
        "name": "dead", "listen": f"127.0.0.1:{free_port()}", "upstream": f"http://127.0.0.1:{free_port()}",
        "route": [{"request": {"action": "encrypt", "key": "app/data", "fields": ["a"]}}],
    })
    before = list(sidecar.entries)
    changes = sidecar.apply([*before, dead])
    assert any("started" in c for c in changes)
    try:
        r = httpx.post(f"http://{dead.listen}/x", json={"a": 1}, timeout=30)
        assert r.status_code == 502
        # the other listeners kept serving through the reload
        assert httpx.post(sidecar.urls["strict"] + "/ok", content=b"x").status_code == 200
    finally:
        sidecar.apply(before)
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"http://{dead.listen}/x", json={"a": 1}, timeout=5)


def test_errors_are_logged_without_bodies(client, upstream, caplog):
    caplog.set_level("WARNING", logger="keyhold.sidecar")
    r = client.post("/fields/x", content=b"not json but secret-value-123")
    assert r.status_code == 422
    text = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "fields" in text and "bad_body" in text
    assert "secret-value-123" not in text


@pytest.mark.parametrize("accept", ["application/json", "*/*"])
def test_error_body_shape(client, accept):
    r = client.post("/fields/x", content=b"x", headers={"accept": accept})
    err = error_of(r)
    assert set(err) == {"status", "reason", "rule", "direction", "message"}
    assert err["status"] == r.status_code and r.headers["x-keyhold-error"] == err["reason"]
