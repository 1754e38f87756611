"""What bench/sidecar_remote.py found: the sidecar's data-key cache was never used for
whole-body envelopes, so every decrypted request was a DecryptDataKey call — on a host
using the remote facade, a network round trip on mitmproxy's event loop per request.

The cause is a class of defect, not one line: `DataKeyCache` defines `__len__`, so an
*empty* cache is falsy, and `cache or kms` (sidecar.bodies.Opener) picked the bare Kms
every time — the cache stayed empty forever. Any optional-dependency test written as
truthiness (`x or y`, `if cache:`) falls into it. A cache is a service, not a container
whose emptiness means "absent": it is always truthy now (kmscore/dkcache.py).

Counted on the server's audit log, with a real `kms serve` and a real `kms proxy` on its
remote facade; every process is stopped before its audit is read (each flushes on
SIGTERM)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kmscore import Kms
from kmscore.dkcache import DataKeyCache
from kmscore.envelope import new_envelope, open_envelope
from tests.e2e.kmsup import recording_upstream
from tests.serve.conftest import clean_env, free_port, stop_process, stop_server, write_access_key_file

KMS = str(Path(sys.executable).with_name("kms"))
ENVELOPE_TYPE = "application/vnd.keyhold.envelope"
needs_mitmproxy = pytest.mark.skipif(importlib.util.find_spec("mitmproxy") is None,
                                     reason="the sidecar needs mitmproxy (Python >= 3.12)")

POLICY = """
[[allow]]
operations = ["list_keys"]
keys = ["*"]

[[allow]]
operations = ["describe_key", "key_usable", "create_datakey", "decrypt_datakey"]
keys = ["found/*"]
"""

CONFIG = """
[kms]
url = "{url}"
access_key_file = "app.key"
home = "logs"

[[proxy]]
listen = "127.0.0.1:{listen}"
upstream = "http://127.0.0.1:{upstream}"
workers = 1  # one data-key cache: the test counts its unwraps

[[proxy.route]]
name = "open"
match = {{ path = "/open/*", methods = ["POST"] }}
request = {{ action = "decrypt", key = "found/bodies" }}
"""


def decrypt_datakey_calls(kms: Kms, caller_part: str = "") -> int:
    return sum(r["count"] for r in kms.audit_records(None, operation="DecryptDataKey") if caller_part in r["caller"])


def test_an_empty_data_key_cache_is_still_a_cache(tmp_path):
    """`cache or kms` must choose the cache, also before its first entry."""
    with Kms(tmp_path / "home", caller="test") as kms:
        kms.create_key("found/bodies")
        header, _ = new_envelope(kms, "found/bodies", 65536)
        cache = DataKeyCache(kms)
        assert len(cache) == 0
        assert cache, "an empty DataKeyCache is falsy: `cache or kms` bypasses it"
        for _ in range(5):
            open_envelope(cache or kms, header)
        assert len(cache) == 1
        assert decrypt_datakey_calls(kms) == 1


@pytest.fixture
def upstream():
    with recording_upstream() as up:
        yield up.port


def wait_listening(proc: subprocess.Popen, port: int, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"kms proxy exited: {log.read_text()}"
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
            return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"kms proxy did not listen within {timeout:.0f} s: {log.read_text()}"
        time.sleep(0.1)


@needs_mitmproxy
def test_a_remote_sidecar_unwraps_a_repeated_envelope_once(tmp_path, server, upstream):
    """Five requests with the same envelope: one DecryptDataKey on the server, not five."""
    from sidecar.bodies import seal_all

    with Kms(server.home, caller="test") as kms:
        kms.create_key("found/bodies")
        body = seal_all(kms, "found/bodies", b"x" * 4096, 65536, {"content-type": "text/plain"})
    host = tmp_path / "frontend"
    host.mkdir()
    write_access_key_file(host / "app.key", server.access_key(POLICY, name="found-sidecar"))
    listen = free_port()
    (host / "deploy.toml").write_text(CONFIG.format(url=server.url, listen=listen, upstream=upstream))
    log = host / "proxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([KMS, "proxy", "--config", str(host / "deploy.toml")], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=clean_env(), cwd=host)
    try:
        wait_listening(proc, listen, log)
        with httpx.Client(base_url=f"http://127.0.0.1:{listen}", timeout=30) as http:
            for _ in range(5):
                r = http.post("/open/x", content=body, headers={"Content-Type": ENVELOPE_TYPE})
                assert r.status_code == 200, r.text
    finally:
        stop_process(proc)
    stop_server(server)  # its audit journal reaches the store on SIGTERM
    with Kms(server.home, caller="test") as kms:
        assert decrypt_datakey_calls(kms, "found-sidecar") == 1
