"""`RouteTable.decide`, pure: which route takes a request, and when a method is refused.

The real-proxy behaviour is in test_hostile_methods.py; this table also covers what a
real client cannot send today (HTTP/2 bodies without Content-Length: `has_body=None`)."""

from __future__ import annotations

import pytest

from sidecar.config import ProxyEntry
from sidecar.rules import compile_entry

ENC = {"action": "encrypt", "key": "k"}
TABLE = compile_entry(ProxyEntry.model_validate({"upstream": "http://x", "route": [
    {"name": "put", "match": {"path": "/store/*", "methods": ["PUT", "POST"]}, "request": ENC},
    {"name": "get", "match": {"path": "/store/*", "methods": ["GET"]}, "response": {"action": "decrypt", "key": "k"}},
    {"name": "loose", "match": {"path": "/loose/*", "methods": ["PUT"], "other_methods": "pass"}, "request": ENC},
    {"name": "reply", "match": {"path": "/reply", "methods": ["GET"]}, "response": ENC},
    {"name": "fields", "match": {"path": "/both/*", "methods": ["PUT"]}, "request": ENC},
    {"name": "both-patch", "match": {"path": "/both/*", "methods": ["PATCH"]}, "request": {**ENC, "fields": ["a"]}},
    {"name": "pass", "match": {"path": "/Public/*"}},
    {"name": "pay", "match": {"path": "/pay", "methods": ["POST"]}, "request": {"action": "verify", "key": "m"}},
    {"name": "rest", "match": {"path": "/*"}, "request": ENC},
]}))

CASES = [
    # method, path, has_body -> route name, refused by, needs the body to tell
    ("PUT", "/store/a", True, "put", None, False),
    ("put", "/store/a", True, "put", None, False),
    ("GET", "/store/a", False, "get", None, False),
    ("GET", "/store/a", True, "get", "put", False),
    ("GET", "/store/a", None, "get", "put", True),  # HTTP/2 without Content-Length: decided on the body
    ("DELETE", "/store/a", False, "rest", None, False),
    ("PATCH", "/STORE/a", True, "rest", None, False),  # any case; the catch-all encrypts it
    ("PATCH", "/loose/a", True, "rest", None, False),  # other_methods = "pass"
    ("POST", "/reply", False, "rest", "reply", False),  # the response would leave unencrypted
    ("HEAD", "/reply", False, "rest", None, False),  # no response body
    ("PATCH", "/both/a", True, "both-patch", None, False),  # its own encrypt rule takes it
    ("GET", "/Public/x", True, "pass", None, False),
    ("GET", "/PUBLIC/x", True, "rest", None, False),  # exact case on a route without an action
    ("PUT", "/pay", True, "rest", "pay", False),  # encrypting is not verifying: no skipping the signature
    ("POST", "/pay", True, "pay", None, False),
    ("DELETE", "/store/a", None, "rest", None, False),  # the taker encrypts too
]


@pytest.mark.parametrize("method, path, has_body, route, refused_by, pending", CASES,
                         ids=[f"{m} {p} body={b}" for m, p, b, *_ in CASES])
def test_decide_table(method, path, has_body, route, refused_by, pending):
    d = TABLE.decide("example.com", path, method, has_body)
    assert (d.route.name if d.route else None) == route
    assert (d.refused_by.name if d.refused_by else None) == refused_by
    assert d.needs_body_check is pending
    if refused_by == "put":
        assert d.allow == ("POST", "PUT")
