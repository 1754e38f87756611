"""Pure parts of `kms up`: what a reload changes, `${VAR}` substitution, error paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmscore.config import ConfigError, parse_config
from kmscore.config.envsubst import substitute
from kmscore.config.problems import join_path
from kmscore.deploy.plan import describe_entry, plan_reload

from fsmount.plugin import FRONTEND as FSMOUNT
from sidecar.plugin import FRONTEND as SIDECAR

FRONTENDS = [FSMOUNT, SIDECAR]
PATH = Path("/etc/keyhold/deploy.toml")


def dep(**raw):
    return parse_config(raw, PATH, env={}, frontends=FRONTENDS)


PROXY = {"listen": "127.0.0.1:8081", "upstream": "http://127.0.0.1:8080"}
ROUTE = {"match": {"path": "/a/*"}, "request": {"action": "encrypt"}}
MOUNT = {"cipher_dir": "/srv/c", "mount_point": "/srv/m"}


def test_nothing_changed_is_an_empty_plan():
    a = dep(proxy=[PROXY], mount=[MOUNT], keys=[{"alias": "app/x"}])
    assert plan_reload(a, dep(proxy=[PROXY], mount=[MOUNT], keys=[{"alias": "app/x"}])).empty


def test_sections_start_stop_and_apply():
    a = dep(proxy=[PROXY], mount=[MOUNT])
    b = dep(proxy=[{**PROXY, "route": [ROUTE]}])
    plan = plan_reload(a, b)
    assert [(c.config_key, c.kind) for c in plan.sections] == [("mount", "stop"), ("proxy", "apply")]
    assert [(c.config_key, c.kind) for c in plan_reload(b, a).sections] == [("mount", "start"), ("proxy", "apply")]
    assert not plan.needs_restart


def test_new_keys_and_kms_changes_needing_a_restart():
    a = dep(kms={"home": "/var/lib/a"}, keys=[{"alias": "app/x"}])
    b = dep(kms={"home": "/var/lib/b", "revocation_bound": 1}, keys=[{"alias": "app/x"}, {"alias": "app/y"}])
    plan = plan_reload(a, b)
    assert [k.alias for k in plan.new_keys] == ["app/y"]
    assert plan.needs_restart == ("kms.home", "kms.revocation_bound")


def test_entry_summary_counts_routes_and_hides_defaults():
    entry = dep(proxy=[{**PROXY, "route": [ROUTE, ROUTE]}]).entries("proxy")[0]
    assert describe_entry(entry) == "listen=127.0.0.1:8081 mode=reverse upstream=http://127.0.0.1:8080 unmatched=pass 2 routes"


def test_several_problems_in_keys_and_kms_at_once():
    with pytest.raises(ConfigError) as e:
        dep(kms={"home": 1, "colour": "x"}, keys=[{"alias": "ok/x", "spec": "AES_128"}, {"spec": "AES_256"}])
    assert [str(p) for p in e.value.problems] == [
        f"{PATH}: kms.home: expected a string, got an integer",
        f"{PATH}: kms.colour: unknown key 'colour' (expected one of: access_key_file, audit, ca_file, fingerprint, home, metrics, revocation_bound, root_key, timeout, url)",
        f"{PATH}: keys[0].spec: expected 'AES_256', 'HMAC_256', 'HMAC_384', 'HMAC_512', 'RSA_2048', "
        "'RSA_3072', 'RSA_4096', 'EC_P256' or 'EC_P384'",
        f"{PATH}: keys[1].alias: required key is missing",
    ]


def test_sections_of_the_wrong_toml_shape():
    with pytest.raises(ConfigError) as e:
        dep(kms=[1], keys={"alias": "x"}, proxy={"listen": "x"})
    assert [str(p) for p in e.value.problems] == [
        f"{PATH}: kms: expected a table ([kms])",
        f"{PATH}: keys: expected an array of tables ([[keys]])",
        f"{PATH}: proxy: expected an array of tables ([[proxy]])",
    ]


def test_join_path():
    assert join_path("proxy", 0, "route", 2, "request.key") == "proxy[0].route[2].request.key"
    assert join_path("proxy", "[1].listen") == "proxy[1].listen"


names = st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True)
values = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)


literals = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="$"), max_size=5)


@given(st.dictionaries(names, values, max_size=4), st.lists(st.tuples(names, literals), max_size=4))
def test_substitution_replaces_known_and_reports_unknown(env, parts):
    text = "".join(f"{lit}${{{name}}}" for name, lit in parts)
    out, problems, used = substitute({"a": [{"b": text}]}, env)
    missing = [name for name, _ in parts if name not in env]
    assert [p for p in problems] == [("a[0].b", f"environment variable ${{{n}}} is not set") for n in missing]
    if not missing:
        assert out["a"][0]["b"] == "".join(f"{lit}{env[name]}" for name, lit in parts)
    assert set(used.values()) <= set(env)


def test_substitution_escape_and_bad_names():
    out, problems, _ = substitute({"x": "$${HOME} ${1BAD} $plain"}, {"HOME": "/root"})
    assert out["x"] == "${HOME}  $plain"
    assert problems == [("x", "bad variable reference ${1BAD}: use ${NAME} with letters, digits and _")]


def test_paths_inside_unions_and_bounds():
    with pytest.raises(ConfigError) as e:
        dep(kms={"root_key": {"source": "env", "vra": "X"}, "revocation_bound": 0},
            mount=[{**MOUNT, "frame_size": 100}])
    assert [str(p) for p in e.value.problems] == [
        f"{PATH}: kms.root_key.var: required key is missing",
        f"{PATH}: kms.root_key.vra: unknown key 'vra' (did you mean 'var'?)",
        f"{PATH}: kms.revocation_bound: expected a number greater than or equal to 0.1",
        f"{PATH}: mount[0].frame_size: expected a multiple of 4096",
    ]
