"""JSON field encryption end to end: upstream sees tokens, client sees its values back."""

from __future__ import annotations

import json

from conftest import error_of

from sidecar import tokens

DOC = {
    "user": {"name": "Ada", "ssn": "078-05-1120", "age": 36},
    "cards": [{"number": 4111111111111111, "exp": "12/30"}, {"number": None}, {"number": {"a": [1, True]}}],
    "note": "untouched",
}


def test_upstream_sees_tokens_and_other_fields_intact(client, upstream):
    r = client.post("/fields/x", json=DOC)
    assert r.status_code == 200
    seen = json.loads(upstream.last().body)
    assert tokens.is_token(seen["user"]["ssn"])
    assert all(tokens.is_token(c["number"]) for c in seen["cards"])
    assert seen["user"]["name"] == "Ada" and seen["user"]["age"] == 36 and seen["note"] == "untouched"
    assert seen["cards"][0]["exp"] == "12/30"
    assert b"078-05-1120" not in upstream.last().body and b"4111111111111111" not in upstream.last().body
    # the upstream echoes the tokens; the response rule decrypts them with their types
    assert r.json() == DOC


def test_missing_fields_are_skipped(client, upstream):
    r = client.post("/fields/x", json={"other": 1, "cards": []})
    assert r.status_code == 200 and r.json() == {"other": 1, "cards": []}


def test_not_json_fails_closed(client, upstream):
    r = client.post("/fields/x", content=b"ssn=078-05-1120", headers={"content-type": "text/plain"})
    assert r.status_code == 422
    err = error_of(r)
    assert err["rule"] == "fields" and err["reason"] == "bad_body" and "not JSON" in err["message"]
    assert upstream.received == []


def test_tokens_cannot_be_swapped_between_fields(client, upstream, kms):
    a = tokens.seal(kms, "app/data", "user.ssn", "111")
    b = tokens.seal(kms, "app/data", "cards[*].number", 222)
    ok = client.post("/dec-fields", json={"user": {"ssn": a}, "cards": [{"number": b}]})
    assert ok.status_code == 200
    assert json.loads(upstream.last().body) == {"user": {"ssn": "111"}, "cards": [{"number": 222}]}
    upstream.clear()
    swapped = client.post("/dec-fields", json={"user": {"ssn": b}, "cards": [{"number": a}]})
    assert swapped.status_code == 422
    assert "failed authentication" in error_of(swapped)["message"]
    assert upstream.received == []


def test_token_under_another_key_is_refused(client, upstream, kms):
    t = tokens.seal(kms, "app/other", "user.ssn", "111")
    r = client.post("/dec-fields", json={"user": {"ssn": t}})
    assert r.status_code == 422 and upstream.received == []


def test_malformed_and_plain_tokens_fail_closed(client, upstream, kms):
    good = tokens.seal(kms, "app/data", "user.ssn", "111")
    tampered = good[:-3] + ("A" if good[-3] != "A" else "B") + good[-2:]
    for bad in ("khf1.!!!", "khf9.AAAA", tampered, "plain", 42):
        r = client.post("/dec-fields", json={"user": {"ssn": bad}})
        assert r.status_code == 422, bad
        assert error_of(r)["reason"] == "bad_body"
    assert upstream.received == []


def test_bad_tokens_from_upstream_are_not_passed_on(client, upstream):
    upstream.reply = (json.dumps({"user": {"ssn": "khf1.AAAA"}}).encode(), "application/json", {})
    r = client.get("/reply/fields")
    assert r.status_code == 502
    assert error_of(r)["direction"] == "response"
    assert "khf1" not in r.text


def test_big_json_over_the_limit_is_413(client, upstream):
    doc = {"user": {"ssn": "1"}, "pad": "x" * (200 * 1024)}
    r = client.post("/fields/x", json=doc)
    assert r.status_code == 413
    assert error_of(r)["reason"] == "too_large"
    assert upstream.received == []


def test_big_chunked_json_over_the_limit_is_413(client, upstream):
    def gen():
        yield b'{"user":{"ssn":"1"},"pad":"'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    r = client.post("/fields/x", content=gen(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert upstream.received == []


def test_big_upstream_json_over_the_limit_is_not_passed_on(client, upstream):
    big = json.dumps({"user": {"ssn": "khf1.x"}, "pad": "upstream-secret" * 10000}).encode()
    upstream.reply = (big, "application/json", {})
    r = client.get("/reply/fields")
    assert r.status_code == 502
    assert error_of(r)["reason"] == "too_large"
    assert b"upstream-secret" not in r.content
