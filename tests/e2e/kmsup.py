"""`kms up` as a real process, for the end-to-end tests (and tests/serve's front ends on a
remote facade): start it on a config, await a line of its log with a bound (never a
sleep of a guessed length), stop it, and take back any mount a failed test left; and a
real upstream for its proxies that records what reaches it.

Ports and stopping come from tests/serve/conftest.py (free_port, stop_process), so a
`kms up` is stopped as a `kms serve` is."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple, TypeVar

from tests.serve.conftest import free_port, stop_process

__all__ = ["KMS", "WAIT", "free_port", "wait_for", "up_env", "start_up", "wait_log", "stop", "mounts_at",
           "fuse_mounted", "unmount", "Request", "Upstream", "recording_upstream"]

KMS = str(Path(sys.executable).with_name("kms"))
WAIT = 30.0
T = TypeVar("T")


def wait_for(what: str, predicate: Callable[[], T], timeout: float = WAIT) -> T:
    """The predicate's first true value, polled every 0.1 s; AssertionError naming `what`
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)
    return value


def up_env(**extra: str) -> dict[str, str]:
    """This environment without any KMS_* variable (a developer's KMS_HOME, root key or log
    format must not reach the deployment under test), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_")}
    env.update(extra)
    return env


def start_up(config: Path, log: Path, *, env: dict[str, str] | None = None, cwd: str | Path | None = "/",
             args: tuple[str, ...] = ("up",)) -> subprocess.Popen:
    """`kms up CONFIG` (or `kms ARGS... CONFIG`) with its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen([KMS, *args, str(config)], stdout=out, stderr=subprocess.STDOUT,
                                env=up_env() if env is None else env, cwd=cwd, stdin=subprocess.DEVNULL)


def wait_log(proc: subprocess.Popen | None, log: Path, text: str, count: int = 1, timeout: float = WAIT) -> None:
    """Until `text` is in the log `count` times; at once an AssertionError with the log
    if the process exits first."""
    def seen() -> bool:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"kms exited with {proc.returncode}:\n{log.read_text()}")
        return log.read_text().count(text) >= count
    wait_for(f"{text!r} in {log}", seen, timeout)


def stop(proc: subprocess.Popen) -> int:
    """SIGTERM, then SIGKILL after a minute (a `kms up` unmounts before it exits); its
    exit status."""
    stop_process(proc, timeout=60)
    return proc.returncode


def mounts_at(path: Path) -> list[str]:
    """File system types mounted at `path`, bottom first."""
    with open("/proc/self/mounts") as f:
        return [line.split()[2] for line in f if line.split()[1] == str(path)]


def fuse_mounted(path: Path) -> bool:
    """A FUSE mount at `path` (not the read-only guard `kms up` keeps beneath it)."""
    return any(fstype.startswith("fuse") for fstype in mounts_at(path))


def unmount(path: Path) -> None:
    """Take back what a failed test left at `path`: the FUSE mount, then the guard."""
    if fuse_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False)
    if mounts_at(path):
        subprocess.run(["umount", "-l", str(path)], check=False)


class Request(NamedTuple):
    """One request as the upstream received it (header names lower-case)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    port: int
    received: list[Request] = field(default_factory=list)

    def last(self, path: str) -> Request:
        return next(r for r in reversed(self.received) if r.path == path)


@contextmanager
def recording_upstream() -> Iterator[Upstream]:
    """A real HTTP/1.1 server on a free loopback port that records every request and
    answers 200 {"ok": true}: what a proxy under test sent, as it arrived."""
    up = Upstream(0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _any(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            up.received.append(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            reply = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_GET = do_PUT = do_POST = do_DELETE = _any

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    up.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield up
    finally:
        server.shutdown()
        server.server_close()
