"""`kms check` on configs that would encrypt nothing: errors and warnings with the key path.

The real `kms check` on a fresh host (no key store yet); each file is one mistake."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sidecar.config import ProxyEntry
from sidecar.routelint import lint_entry

KMS = str(Path(sys.executable).parent / "kms")
HEAD = '[kms]\nhome = "kms-home"\n[[proxy]]\nupstream = "http://127.0.0.1:9"\n'


def kms_check(tmp_path: Path, text: str) -> tuple[int, list[str]]:
    path = tmp_path / "deploy.toml"
    path.write_text(textwrap.dedent(text))
    r = subprocess.run([KMS, "check", str(path)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "Traceback" not in r.stderr
    lines = [line.removeprefix(f"{path}: ") for line in r.stderr.splitlines() if line.startswith(str(path))]
    return r.returncode, lines


def test_empty_file_is_an_error(tmp_path):
    code, lines = kms_check(tmp_path, "")
    assert code == 2 and lines == ["the file declares nothing to run: no [[keys]], [[mount]], [serve], [[proxy]]"]
    code, lines = kms_check(tmp_path, "[kms]\nrevocation_bound = 2\n")
    assert code == 2 and "declares nothing" in lines[0]


def test_path_without_leading_slash_never_matches(tmp_path):
    code, lines = kms_check(tmp_path, HEAD + 'unmatched = "deny"\n[[proxy.route]]\nmatch = { path = "store/*" }\n'
                                         'request = { action = "encrypt" }\n')
    assert code == 2
    assert lines == ["proxy[0].route[0].match.path: 'store/*' never matches: request paths start with / (write '/store/*')"]


def test_route_without_action_shadowing_an_encrypt_route(tmp_path):
    code, lines = kms_check(tmp_path, HEAD + '''unmatched = "deny"
        [[proxy.route]]
        name = "health"
        match = { path = "/api/*" }
        [[proxy.route]]
        match = { path = "/api/store/*", methods = ["PUT"] }
        request = { action = "encrypt" }
        ''')
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("proxy[0].route[1]: never applies: route[0] (health) comes first")


def test_unmatched_traffic_passing_in_reverse_mode_is_said_clearly(tmp_path):
    code, lines = kms_check(tmp_path, HEAD + '[[proxy.route]]\nmatch = { path = "/store/*" }\nrequest = { action = "encrypt" }\n')
    assert code == 0
    assert lines == ['proxy[0].unmatched: warning: requests that match no route pass to the upstream unchanged '
                     '(bodies in plaintext); set unmatched = "deny" to refuse them, or add a last route that matches everything']
    for fix in ('unmatched = "deny"\n', ''):
        tail = '[[proxy.route]]\nmatch = { path = "/store/*" }\nrequest = { action = "encrypt" }\n'
        if not fix:
            tail += '[[proxy.route]]\nname = "rest"\n'  # a catch-all: nothing is unmatched
        code, lines = kms_check(tmp_path, HEAD + fix + tail)
        assert (code, lines) == (0, [])


RULES = [
    ({"path": "/store/*"}, None),
    ({"path": "*"}, None),
    ({"path": "/a?c/*"}, None),
    ({"path": "/api//x/*"}, "write '/api/x/*'"),
    ({"path": "/api/./x"}, "write '/api/x'"),
    ({"path": "/%73tore/*"}, "write '/store/*'"),
    ({"path": "/store%2F*"}, "are refused"),
    ({"path": "/store;v=1/*"}, "';' are refused"),
    ({"path": "store"}, "start with /"),
    ({"host": "api.example.com:443"}, "without the port"),
    ({"host": "api.example.com."}, "trailing dot"),
]


@pytest.mark.parametrize("match, message", RULES, ids=[str(m) for m, _ in RULES])
def test_route_pattern_table(match, message):
    entry = ProxyEntry.model_validate({"upstream": "http://x", "unmatched": "deny",
                                       "route": [{"match": match, "request": {"action": "encrypt"}}]})
    found = [(p, m) for p, m, severity in lint_entry(entry) if severity == "error"]
    if message is None:
        assert found == []
    else:
        [(path, text)] = found
        assert path.startswith("route[0].match.") and message in text


@pytest.mark.parametrize("first, later, shadowed", [
    ({"path": "*"}, {"path": "/x"}, True),
    ({"path": "/a/*"}, {"path": "/a/b/*"}, True),
    ({"path": "/a/b/*"}, {"path": "/a/*"}, False),  # an exception carved out first: meant
    ({"path": "/a/*", "methods": ["GET"]}, {"path": "/a/*"}, False),
    ({"path": "/a/*", "methods": ["GET", "PUT"]}, {"path": "/a/*", "methods": ["PUT"]}, True),
    ({"host": "*.example.com"}, {"host": "api.example.com"}, True),
    ({"host": "api.example.com"}, {}, False),
    ({"path": "/a?"}, {"path": "/ab"}, False),  # not decided for ? and [ globs: never a false alarm
])
def test_shadowing_table(first, later, shadowed):
    entry = ProxyEntry.model_validate({"upstream": "http://x", "unmatched": "deny", "route": [
        {"match": first}, {"match": later, "request": {"action": "encrypt"}}]})
    found = [p for p, _, severity in lint_entry(entry) if severity == "error"]
    assert found == (["route[1]"] if shadowed else [])


def test_kms_proxy_says_so_at_start(tmp_path, kms):
    """`kms proxy --config` refuses the errors like `kms check` and prints the warning."""
    import os
    import signal

    from conftest import free_port

    env = {**os.environ, "KMS_HOME": str(kms.home)}
    path = tmp_path / "p.toml"
    path.write_text(f'[[proxy]]\nlisten = "127.0.0.1:{free_port()}"\nupstream = "http://127.0.0.1:9"\n'
                    '[[proxy.route]]\nmatch = { path = "/x/*" }\nrequest = { action = "encrypt", key = "app/data" }\n')
    proc = subprocess.Popen([KMS, "proxy", "--config", str(path)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not lines or "listening on" not in lines[-1]:
            lines.append(proc.stderr.readline())
            assert lines[-1], lines
        assert any("proxy[0].unmatched: warning: requests that match no route pass" in line for line in lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    path.write_text(path.read_text().replace('"/x/*"', '"x/*"'))
    r = subprocess.run([KMS, "proxy", "--config", str(path)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "route[0].match.path: 'x/*' never matches" in r.stderr
