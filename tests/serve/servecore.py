"""serve-core's test helpers (kept out of conftest.py so that the serve branches'
additions there do not collide): a `kms serve` with any options (TLS, timeouts) and
AWS KMS requests signed with kmsserve's own SigV4 for raw httpx/socket tests."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.serve.conftest import KMS_BIN, AccessKey, Server, clean_env, kms


def start_server_with(home: Path, *args: str, timeout: float = 30) -> Server:
    """A `kms serve` with exactly these options after `serve` (give --listen with a free
    port; TLS unless --plain-http); its URL's scheme follows."""
    assert kms(home, "init").returncode in (0, 1)
    listen = args[args.index("--listen") + 1]
    port = int(listen.rpartition(":")[2])
    log = home.parent / f"serve-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([KMS_BIN, "--home", str(home), "serve", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=clean_env(), stdin=subprocess.DEVNULL)
    scheme = "http" if "--plain-http" in args else "https"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"kms serve exited {proc.returncode}: {log.read_text()}")
        if b"listening on" in log.read_bytes():
            return Server(home, f"{scheme}://127.0.0.1:{port}", proc, log)
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError(f"kms serve did not listen within {timeout}s: {log.read_text()}")


def signed_request(url: str, key: AccessKey, target: str, body: bytes = b"{}", *, now: float | None = None,
                   region: str = "eu-west-1", extra: dict[str, str] | None = None) -> tuple[str, dict[str, str], bytes]:
    """(url, headers, body) of an AWS KMS JSON request signed with kmsserve's own SigV4
    (`now` lets a test sign in the past); send it with httpx."""
    from urllib.parse import urlsplit

    from kmsserve.auth import sigv4

    headers = {"Host": urlsplit(url).netloc, "Content-Type": "application/x-amz-json-1.1",
               "X-Amz-Target": f"TrentService.{target}", **(extra or {})}
    headers.update(sigv4.sign("POST", "/", "", headers, body, access_key_id=key.access_key_id, secret=key.secret,
                              region=region, service="kms", now=now))
    return url + "/", headers, body
