"""Verified signatures: no replay (a nonce, required by default, accepted once within the
window, in bounded memory that survives a reload) and required covered components
(default: @method, @target-uri with its query, content-digest, content-type).

Signatures are made by the independent `http-message-signatures` package; the sidecar
is the real embedded mitmproxy in front of the recording upstream.
"""

from __future__ import annotations

import httpx
import pytest
from conftest import error_of, free_port
from test_signing import ec_signer, kms_hmac, signed_request  # noqa: F401  (ec_signer is a fixture)
from http_message_signatures.resolvers import MappingKeyResolver

from sidecar import httpsig
from sidecar.config import ProxyEntry
from sidecar.replay import ReplayCacheFull, ReplayGuard

BODY = b'{"amount":12}'


def resend(client, req: httpx.Request) -> httpx.Response:
    return client.send(httpx.Request(req.method, req.url, content=BODY, headers=req.headers))


def test_replayed_request_is_refused(client, upstream, sidecar, ec_signer):
    req = signed_request(sidecar.urls["main"], "/verify/ec?amount=12", BODY, *ec_signer)
    assert resend(client, req).status_code == 200
    r = resend(client, req)
    assert r.status_code == 401 and error_of(r)["reason"] == "replayed"
    assert len(upstream.received) == 1


def test_replay_is_remembered_across_a_reload(client, upstream, sidecar, ec_signer):
    req = signed_request(sidecar.urls["main"], "/verify/ec", BODY, *ec_signer)
    assert resend(client, req).status_code == 200
    before = list(sidecar.entries)
    changed = [before[0].model_copy(update={"route": before[0].route[::-1]}), *before[1:]]
    sidecar.apply(changed)
    try:
        assert resend(client, req).status_code == 401
    finally:
        sidecar.apply(before)
    assert len(upstream.received) == 1


def test_nonce_is_required_by_default(client, upstream, sidecar, ec_signer):
    r = client.send(signed_request(sidecar.urls["main"], "/verify/ec", BODY, *ec_signer, nonce=False))
    assert r.status_code == 401 and "nonce" in error_of(r)["message"]
    assert upstream.received == []


@pytest.mark.parametrize("covers, missing", [
    (("@method", "@authority", "@path", "content-digest", "content-type"), "@target-uri"),  # no query
    (("@method", "@target-uri", "content-digest"), "content-type"),
    (("@target-uri", "content-digest", "content-type"), "@method"),
])
def test_signature_must_cover_the_default_components(client, upstream, sidecar, ec_signer, covers, missing):
    req = signed_request(sidecar.urls["main"], "/verify/ec?amount=12", BODY, *ec_signer, covers=covers)
    r = client.send(req)
    assert r.status_code == 401 and missing in error_of(r)["message"]
    assert upstream.received == []


def test_changed_query_is_refused_and_equivalent_coverage_is_accepted(client, upstream, sidecar, ec_signer):
    base = sidecar.urls["main"]
    req = signed_request(base, "/verify/ec?amount=12", BODY, *ec_signer)
    r = client.send(httpx.Request("POST", base + "/verify/ec?amount=12000", content=BODY, headers=req.headers))
    assert r.status_code == 401 and upstream.received == []
    covers = ("@method", "@authority", "@path", "@query", "content-digest", "content-type")
    assert client.send(signed_request(base, "/verify/ec?amount=12", BODY, *ec_signer, covers=covers)).status_code == 200


def test_signatures_made_here_carry_a_fresh_nonce(client, upstream):
    client.post("/sign/hmac", json={"a": 1})
    client.post("/sign/hmac", json={"a": 1})
    nonces = [httpsig.parse_signature_input(r.headers["signature-input"])["sig1"].param("nonce") for r in upstream.received]
    assert all(isinstance(n, str) and len(n) >= 16 for n in nonces) and nonces[0] != nonces[1]


def test_full_replay_memory_fails_closed(client, upstream, sidecar, ec_signer):
    live, sidecar.runtime.replay = sidecar.runtime.replay, ReplayGuard(capacity=1)
    try:
        assert client.send(signed_request(sidecar.urls["main"], "/verify/ec", BODY, *ec_signer)).status_code == 200
        r = client.send(signed_request(sidecar.urls["main"], "/verify/ec", BODY, *ec_signer))
        assert r.status_code == 503 and error_of(r)["reason"] == "replay_cache_full"
    finally:
        sidecar.runtime.replay = live
    assert len(upstream.received) == 1


@pytest.fixture(scope="module")
def relaxed(sidecar, upstream):
    """Routes that ask for less, explicitly: no nonce; only method, path and digest."""
    entry = ProxyEntry.model_validate({
        "name": "relaxed", "listen": f"127.0.0.1:{free_port()}", "upstream": upstream.url,
        "route": [
            {"name": "no-nonce", "match": {"path": "/no-nonce"},
             "request": {"action": "verify", "key": "app/mac", "require_nonce": False}},
            {"name": "path-only", "match": {"path": "/path-only"},
             "request": {"action": "verify", "key": "app/mac", "covers": ["@method", "@path", "content-digest"]}},
        ],
    })
    before = list(sidecar.entries)
    sidecar.apply([*before, entry])
    yield f"http://{entry.listen}"
    sidecar.apply(before)


def test_per_route_requirements(relaxed, client, upstream, kms):
    hmac = (kms_hmac(kms, "app/mac"), MappingKeyResolver(public_keys={}, private_keys={"k": b"unused"}), "k")
    r = client.send(signed_request(relaxed, "/no-nonce", BODY, *hmac, nonce=False))
    assert r.status_code == 200, r.text
    r = client.send(signed_request(relaxed, "/path-only?any=1", BODY, *hmac, covers=("@method", "@path", "content-digest")))
    assert r.status_code == 200, r.text
    assert len(upstream.received) == 2


def test_config_refuses_covers_without_the_digest():
    with pytest.raises(ValueError, match="content-digest"):
        ProxyEntry.model_validate({"upstream": "http://x", "route": [
            {"request": {"action": "verify", "key": "k", "covers": ["@method"]}}]})
    with pytest.raises(ValueError, match="@nope"):
        ProxyEntry.model_validate({"upstream": "http://x", "route": [
            {"request": {"action": "verify", "key": "k", "covers": ["@nope", "content-digest"]}}]})


# -- the guard itself (sans-IO, time passed in) ------------------------------------------
def test_guard_remembers_within_the_window_and_forgets_after():
    g = ReplayGuard(capacity=2)
    assert g.claim("k", "n1", until=100, now=0)
    assert not g.claim("k", "n1", until=100, now=99)  # a replay inside the window
    assert g.claim("other-key", "n1", until=100, now=1)  # another scope
    with pytest.raises(ReplayCacheFull):
        g.claim("k", "n2", until=100, now=2)  # full: refuse rather than forget
    assert g.claim("k", "n2", until=300, now=101)  # expired entries made room
    assert len(g) == 1


def test_guard_memory_is_bounded_by_capacity():
    g = ReplayGuard(capacity=1000)
    for i in range(1000):
        assert g.claim("k", "n" * 200 + str(i), until=10, now=0)
    assert len(g) == 1000 and max(len(t) for t in g._until) == 16  # fixed-size digests, not the nonces


def test_check_refuses_components_the_direction_does_not_have(kms):
    from sidecar.config import check

    entry = ProxyEntry.model_validate({"upstream": "http://x", "unmatched": "deny", "route": [
        {"request": {"action": "verify", "key": "app/mac", "covers": ["@status", "content-digest"]},
         "response": {"action": "sign", "key": "app/mac", "covers": ["@method", "@status", "content-digest"]}}]})
    assert check([entry], kms) == [("route[0].request.covers", "a request has no @status"),
                                   ("route[0].response.covers", "a response has no @method")]
