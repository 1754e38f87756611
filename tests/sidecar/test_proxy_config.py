"""Config: pydantic shape errors and semantic checks, each named by its place."""

from __future__ import annotations

import pytest

from sidecar.cli import load_config
from sidecar.config import ProxyEntry, check, parse_entries
from sidecar.errors import ConfigError
from sidecar.rules import compile_entry


def entry(**kw) -> ProxyEntry:
    return ProxyEntry.model_validate({"upstream": "http://127.0.0.1:9", **kw})


def test_semantic_errors_are_placed(kms):
    e = entry(route=[
        {"request": {"action": "encrypt", "key": "app/data", "fields": ["ok.path", "bad..path"]}},
        {"request": {"action": "sign", "key": "app/data"}},
        {"response": {"action": "encrypt", "key": "app/mac"}},
        {"request": {"action": "verify", "key": "no/such"}},
        {"request": {"action": "sign", "key": "app/ec", "algorithm": "hmac-sha256"}},
        {"request": {"action": "sign", "key": "app/ec384", "algorithm": "ecdsa-p256-sha256"}},
        {"request": {"action": "sign", "key": "app/mac", "algorithm": "nope"}},
        {"request": {"action": "sign", "key": "app/mac"}, "response": {"action": "decrypt"}},
    ])
    problems = dict(check([e], kms))
    assert "bad field path" in problems["route[0].request.fields"]
    assert "HMAC, RSA or EC" in problems["route[1].request.key"]
    assert "needs an AES_256 key" in problems["route[2].response.key"]
    assert "no/such" in problems["route[3].request.key"]
    assert "needs a HMAC key" in problems["route[4].request.algorithm"]
    assert "does not fit" in problems["route[5].request.algorithm"]
    assert "unknown algorithm" in problems["route[6].request.algorithm"]
    assert not any(k.startswith("route[7]") for k in problems)


def test_several_entries_are_prefixed(kms):
    a = entry(listen="127.0.0.1:1")
    b = entry(listen="127.0.0.1:1", route=[{"request": {"action": "encrypt", "key": "x/y"}}])
    problems = dict(check([a, b], kms))
    assert "[1].listen" in problems and "[1].route[0].request.key" in problems


@pytest.mark.parametrize("raw, where", [
    ({"upstream": "ftp://x"}, "proxy[0].upstream"),
    ({}, "proxy[0]"),
    ({"mode": "forward", "upstream": "http://x"}, "proxy[0]"),
    ({"upstream": "http://x", "listen": "nope"}, "proxy[0].listen"),
    ({"upstream": "http://x", "bogus": 1}, "proxy[0].bogus"),
    ({"upstream": "http://x", "route": [{"request": {"action": "zip"}}]}, "proxy[0].route[0].request.action"),
    ({"upstream": "http://x", "route": [{"request": {"action": "sign"}}]}, "proxy[0].route[0].request"),
    ({"upstream": "http://x", "route": [{"request": {"action": "encrypt", "algorithm": "x"}}]}, "proxy[0].route[0].request"),
])
def test_shape_errors_are_one_line_with_place(raw, where):
    with pytest.raises(ConfigError) as e:
        parse_entries([raw])
    assert str(e.value).startswith(where + ":") and "\n" not in str(e.value)


def test_load_config_from_toml(tmp_path):
    p = tmp_path / "deploy.toml"
    p.write_text('''
[[mount]]
cipher_dir = "/x"
mount_point = "/y"

[[proxy]]
name = "api"
listen = "127.0.0.1:8081"
upstream = "http://127.0.0.1:8080"

[[proxy.route]]
name = "users"
match = { path = "/users/*", methods = ["post", "PUT"] }
request = { action = "encrypt", fields = ["user.ssn"] }
response = { action = "decrypt", fields = ["user.ssn"] }
''')
    [e], dep = load_config(str(p))
    assert dep is not None and len(dep.entries("mount")) == 1
    table = compile_entry(e)
    assert table.match("h", "/users/1", "POST").name == "users"
    assert table.match("h", "/users/1", "GET") is None
    assert table.match("h", "/other", "POST") is None
    p.write_text("[[proxy]]\nupstream = 1\n")
    with pytest.raises(ConfigError, match=r"deploy.toml: proxy\[0\].upstream"):
        load_config(str(p))
    p.write_text("[[proxy]\n")
    with pytest.raises(ConfigError, match="deploy.toml"):
        load_config(str(p))


def test_default_key_is_created_on_first_use(kms):
    e = entry(route=[{"request": {"action": "encrypt"}}])
    assert check([e], kms) == []
    meta = kms.describe_key("sidecar/default")
    assert getattr(meta.spec, "value", meta.spec) == "AES_256"
