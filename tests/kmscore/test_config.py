"""The deployment config: every mistake an operator makes gets one exact line,
`<file>: <key path>: <message>`, and all of them come at once."""

from __future__ import annotations

import dataclasses
import shutil
import textwrap
from pathlib import Path

import pytest

from kmscore import Kms
from kmscore.config import ConfigError, PlannedKms, check_deployment, load_config

from fsmount.plugin import FRONTEND as FSMOUNT
from sidecar.plugin import FRONTEND as SIDECAR

FRONTENDS = [FSMOUNT, SIDECAR]
UPSTREAM = "http://127.0.0.1:9"


@pytest.fixture
def kms(tmp_path: Path):
    with Kms(tmp_path / "home", caller="test") as k:
        k.create_key("app/data")
        k.create_key("app/mac", "HMAC_256")
        yield k


def write(tmp_path: Path, text: str, name: str = "deploy.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path, kms=None, env=None) -> list[str]:
    """Every problem `kms check` would print for this file."""
    try:
        dep = load_config(path, env={} if env is None else env, frontends=FRONTENDS)
    except ConfigError as e:
        return [str(p) for p in e.problems]
    return [str(p) for p in check_deployment(dep, kms, FRONTENDS)] if kms is not None else []


def dirs(tmp_path: Path) -> tuple[Path, Path]:
    cipher, mnt = tmp_path / "cipher", tmp_path / "mnt"
    cipher.mkdir(exist_ok=True)
    mnt.mkdir(exist_ok=True)
    return cipher, mnt


PROXY = f"""
[[proxy]]
listen = "127.0.0.1:8081"
upstream = "{UPSTREAM}"
"""

# The table of mistakes from the issue: (what, TOML, the exact line after "<file>: ").
MISTAKES = [
    ("typo in a key", PROXY + """
        [[proxy.route]]
        match = { path = "/x" }
        reqest = { action = "encrypt" }
        """, "proxy[0].route[0].reqest: unknown key 'reqest' (did you mean 'request'?)"),
    ("wrong type", PROXY + """
        limits = { max_buffered_body = "16M" }
        """, "proxy[0].limits.max_buffered_body: expected an integer, got a string"),
    ("unknown key alias", PROXY + """
        [[proxy.route]]
        request = { action = "encrypt", key = "billing/pii" }
        """, "proxy[0].route[0].request.key: no key with id or alias 'billing/pii'"),
    ("sign route with an AES key", PROXY + """
        [[proxy.route]]
        request = { action = "encrypt", key = "app/data" }
        [[proxy.route]]
        request = { action = "sign", key = "app/data" }
        """, "proxy[0].route[1].request.key: sign needs an HMAC, RSA or EC key; app/data is AES_256"),
    ("duplicate listen port", PROXY + PROXY,
     "proxy[1].listen: 127.0.0.1:8081 is also used by proxy[0]"),
    ("missing env var", """
        [[proxy]]
        upstream = "${API_UPSTREAM}"
        """, "proxy[0].upstream: environment variable ${API_UPSTREAM} is not set"),
    ("unknown section", """
        [[mounts]]
        cipher_dir = "/x"
        """, "mounts: unknown section 'mounts' (did you mean 'mount'?)"),
    ("missing required key", """
        [[proxy]]
        listen = "127.0.0.1:8081"
        mode = "forward"
        [[mount]]
        cipher_dir = "/x"
        """, "mount[0].mount_point: required key is missing"),
    ("bad choice", PROXY + """
        unmatched = "drop"
        """, "proxy[0].unmatched: expected 'pass' or 'deny'"),
    ("key declared twice", """
        [[keys]]
        alias = "app/x"
        [[keys]]
        alias = "app/x"
        """, "keys[1].alias: 'app/x' is already declared by keys[0]"),
    ("reserved alias", """
        [[keys]]
        alias = "billing/default"
        """, "keys[0].alias: alias 'billing/default' is reserved: aliases ending in '/default' belong to the "
             "default keys that the KMS creates for its services"),
]


@pytest.mark.parametrize("what, text, expected", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_has_its_exact_message(tmp_path, kms, what, text, expected):
    path = write(tmp_path, text)
    assert problems(path, kms) == [f"{path}: {expected}"]


def test_mount_point_not_empty(tmp_path, kms):
    cipher, mnt = dirs(tmp_path)
    (mnt / "left-over.txt").write_text("x")
    path = write(tmp_path, f"""
        [[mount]]
        cipher_dir = "{cipher}"
        mount_point = "{mnt}"
        """)
    assert problems(path, kms) == [
        f"{path}: mount[0].mount_point: {mnt} is not empty (its files would be hidden under the mount)"
    ]


def test_all_problems_at_once_in_file_order(tmp_path, kms):
    path = write(tmp_path, """
        [kms]
        revocation_bound = "soon"
        [[proxy]]
        upstream = "${NOPE}"
        bogus = 1
        [[proxy.route]]
        request = { action = "zip" }
        """)
    expected_keys = "access_log, frame_size, limits, listen, literal_semicolons, metrics, mode, name, route, unmatched, upstream, " \
        "upstream_ca, verify_upstream, workers"
    assert problems(path, kms) == [
        f"{path}: proxy[0].upstream: environment variable ${{NOPE}} is not set",
        f"{path}: kms.revocation_bound: expected a number, got a string",
        f"{path}: proxy[0].route[0].request.action: expected 'encrypt', 'decrypt', 'sign' or 'verify'",
        f"{path}: proxy[0].bogus: unknown key 'bogus' (expected one of: {expected_keys})",
    ]


def test_toml_syntax_and_missing_file(tmp_path):
    bad = write(tmp_path, "[[proxy]\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad, env={}, frontends=FRONTENDS)
    assert str(e.value).startswith(f"{bad}: not valid TOML: ") and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file$"):
        load_config(tmp_path / "nope.toml", env={}, frontends=FRONTENDS)


def test_secrets_from_env_never_show(tmp_path, kms):
    secret = "s3cr3t-Token-Value"
    path = write(tmp_path, """
        [[proxy]]
        listen = "${LISTEN}"
        upstream = "http://127.0.0.1:9"
        """)
    found = problems(path, kms, env={"LISTEN": secret})
    assert found == [f"{path}: proxy[0].listen: expected host:port, got '${{LISTEN}}'"]
    dep = load_config(write(tmp_path, '[[proxy]]\nupstream = "http://${HOST}:9"\n'), env={"HOST": secret},
                      frontends=FRONTENDS)
    assert dep.entries("proxy")[0].upstream == f"http://{secret}:9"
    assert secret not in repr(dep)


def test_kms_section_resolves_against_the_config_folder(tmp_path):
    folder = tmp_path / "etc"
    folder.mkdir()
    path = write(folder, """
        [kms]
        home = "run/kms"
        root_key = { source = "file", path = "secrets/root.key" }
        revocation_bound = 2
        """)
    dep = load_config(path, env={}, frontends=FRONTENDS)
    assert dep.home == folder / "run" / "kms"
    assert dep.root_key.kind == "file" and dep.root_key.value == str(folder / "secrets" / "root.key")
    assert dep.kms.revocation_bound == 2 and dep.kms.audit.verify_on_start
    with pytest.raises(dataclasses.FrozenInstanceError):
        dep.home = None  # type: ignore[misc]


def test_root_key_from_env_needs_the_variable(tmp_path):
    path = write(tmp_path, '[kms]\nroot_key = { source = "env", var = "KEYHOLD_ROOT" }\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, env={}, frontends=FRONTENDS)
    assert str(e.value) == f"{path}: kms.root_key.var: environment variable $KEYHOLD_ROOT is not set"
    dep = load_config(path, env={"KEYHOLD_ROOT": "x"}, frontends=FRONTENDS)
    assert (dep.root_key.kind, dep.root_key.value) == ("env", "KEYHOLD_ROOT")
    path = write(tmp_path, '[kms]\nroot_key = { source = "hsm" }\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, env={}, frontends=FRONTENDS)
    assert str(e.value).startswith(f"{path}: kms.root_key: ")


def test_declared_keys_are_compared_never_changed(tmp_path, kms):
    path = write(tmp_path, """
        [[keys]]
        alias = "app/data"
        spec = "HMAC_256"
        [[keys]]
        alias = "app/mac"
        spec = "HMAC_256"
        rotation_days = 90
        """)
    assert problems(path, kms) == [
        f"{path}: keys[0].spec: key app/data is AES_256 in the key store, not HMAC_256 "
        "(kms up never changes an existing key: fix the config or the key)",
        f"{path}: keys[0].usage: key app/data is ENCRYPT_DECRYPT in the key store, not GENERATE_VERIFY_MAC "
        "(kms up never changes an existing key: fix the config or the key)",
        f"{path}: keys[1]: only KMS-generated AES_256 keys rotate; drop rotation_days",
    ][2:]  # the shape error comes first and alone: no store check runs on a malformed file
    path = write(tmp_path, '[[keys]]\nalias = "app/data"\nspec = "HMAC_256"\n')
    assert problems(path, kms) == [
        f"{path}: keys[0].spec: key app/data is AES_256 in the key store, not HMAC_256 "
        "(kms up never changes an existing key: fix the config or the key)",
        f"{path}: keys[0].usage: key app/data is ENCRYPT_DECRYPT in the key store, not GENERATE_VERIFY_MAC "
        "(kms up never changes an existing key: fix the config or the key)",
    ]
    assert kms.describe_key("app/data").spec.value == "AES_256"


def test_keys_declared_in_the_file_count_as_present_but_are_not_created(tmp_path, kms):
    path = write(tmp_path, PROXY + """
        [[proxy.route]]
        request = { action = "sign", key = "billing/sig" }
        [[proxy.route]]
        request = { action = "encrypt", key = "billing/pii" }

        [[keys]]
        alias = "billing/sig"
        spec = "EC_P256"
        [[keys]]
        alias = "billing/pii"
        """)
    assert problems(path, kms) == []
    aliases = {m.alias for m in kms.list_keys()}
    assert "billing/sig" not in aliases and "billing/pii" not in aliases
    assert "sidecar/default" not in aliases  # checking does not create default keys either


def test_planned_kms_reports_declared_spec(tmp_path, kms):
    dep = load_config(write(tmp_path, '[[keys]]\nalias = "new/ec"\nspec = "ec_p384"\n'), env={}, frontends=FRONTENDS)
    planned = PlannedKms(kms, dep.keys)
    assert planned.describe_key("new/ec").spec.value == "EC_P384"
    assert planned.describe_key("app/mac").spec.value == "HMAC_256"


def test_several_mounts_are_placed(tmp_path, kms):
    cipher, mnt = dirs(tmp_path)
    (tmp_path / "a-file").write_text("x")
    path = write(tmp_path, f"""
        [[mount]]
        cipher_dir = "{cipher}"
        mount_point = "{mnt}"
        [[mount]]
        cipher_dir = "{tmp_path / 'a-file'}"
        mount_point = "{mnt}2"
        key = "nope/key"
        """)
    found = problems(path, kms)
    assert f"{path}: mount[1].cipher_dir: {tmp_path / 'a-file'} is not a directory" in found
    assert f"{path}: mount[1].key: no key with id or alias 'nope/key'" in found
    assert not any("mount[0]" in p for p in found)


CONFIG = Path(__file__).resolve().parents[2] / "config"


def test_example_config_is_valid_on_a_fresh_host(tmp_path):
    """The quick start: checks clean against a store that does not exist yet, and against
    the store `kms up` would make."""
    from kmscore.config import NoKeyStore
    from kmscore.deploy import open_kms

    path = tmp_path / "example.toml"
    shutil.copy(CONFIG / "example.toml", path)
    dep = load_config(path, env={}, frontends=FRONTENDS)
    assert dep.home == tmp_path / "run" / "kms"
    assert [len(dep.entries("mount")), len(dep.entries("proxy"))] == [1, 1]
    actions = [r.request.action for r in dep.entries("proxy")[0].route if r.request]
    assert {"encrypt", "sign"} <= set(actions)
    assert any(r.request and r.request.fields for r in dep.entries("proxy")[0].route)
    assert check_deployment(dep, NoKeyStore(), FRONTENDS) == []
    with open_kms(dep) as kms:
        assert check_deployment(dep, kms, FRONTENDS) == []


def test_production_example_is_valid(tmp_path):
    from kmscore.config import NoKeyStore

    env = {"BILLING_UPSTREAM_HOST": "billing.internal", "CREDENTIALS_DIRECTORY": "/run/credentials/keyhold.service"}
    dep = load_config(CONFIG / "production.toml", env=env, frontends=FRONTENDS)
    assert dep.root_key.value == "/run/credentials/keyhold.service/root.key"
    assert dep.entries("proxy")[0].upstream == "https://billing.internal:9443"
    assert check_deployment(dep, NoKeyStore(), FRONTENDS) == []
    with pytest.raises(ConfigError) as e:
        load_config(CONFIG / "production.toml", env={}, frontends=FRONTENDS)
    assert [p.path for p in e.value.problems] == ["kms.root_key.path", "proxy[0].upstream"]
