"""A 2 GiB upload and download through whole-body encryption, in constant memory.

The sidecar runs as its own `kms-proxy` process so that its peak RSS (VmHWM) is its
own, not the test runner's.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
pytest.importorskip("kmscore.envelope", reason="the envelope format (kmscore.envelope) is not installed")
from conftest import free_port

GiB = 1 << 30
BLOCK = 1 << 20
PEAK_LIMIT = 200 * (1 << 20)


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def blocks(n: int, seed: bytes):
    """n MiB of deterministic, incompressible bytes (the same on upload and check)."""
    base = hashlib.shake_256(seed).digest(BLOCK)
    for i in range(n):
        yield base[:-8] + i.to_bytes(8, "big")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_two_gib_up_and_down_in_constant_memory(kms, upstream, tmp_path):
    listen = f"127.0.0.1:{free_port()}"
    cfg = tmp_path / "deploy.toml"
    cfg.write_text(f'''
[[proxy]]
listen = "{listen}"
upstream = "{upstream.url}"
limits = {{ max_buffered_body = 1048576 }}

[[proxy.route]]
match = {{ path = "/store/*", methods = ["PUT"] }}
request = {{ action = "encrypt", key = "app/data" }}

[[proxy.route]]
match = {{ path = "/store/*", methods = ["GET"] }}
response = {{ action = "decrypt", key = "app/data" }}
''')
    env = {**os.environ, "KMS_HOME": str(kms.home)}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "kms-proxy"), "--config", str(cfg)],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "listening on" not in line:
            line = proc.stderr.readline()
            assert line, "kms-proxy exited"
        n = 2 * GiB // BLOCK
        want = hashlib.sha256()
        for b in blocks(n, b"keyhold"):
            want.update(b)
        with httpx.Client(base_url=f"http://{listen}", timeout=300) as c:
            r = c.put("/store/huge", content=blocks(n, b"keyhold"), headers={"content-type": "video/mp4"})
            assert r.status_code == 201
            stored = upstream.last()
            assert stored.length > 2 * GiB and stored.headers["content-type"] == "application/vnd.keyhold.envelope"
            got, size = hashlib.sha256(), 0
            with c.stream("GET", "/store/huge") as resp:
                assert resp.status_code == 200 and resp.headers["content-type"] == "video/mp4"
                for chunk in resp.iter_raw(BLOCK):
                    got.update(chunk)
                    size += len(chunk)
        peak = peak_rss(proc.pid)
        print(f"\nsidecar peak RSS for 2 GiB up + down: {peak / (1 << 20):.1f} MiB")
        assert size == 2 * GiB and got.digest() == want.digest()
        assert peak < PEAK_LIMIT
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        (upstream.dir / "huge").unlink(missing_ok=True)
