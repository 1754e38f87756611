"""A real `kms proxy` (or `kms up`) process on a TOML config, for the hostile-client tests.

Its stderr is drained by a thread into `lines`, so a chatty proxy never blocks on a full
pipe and a test can assert on what it logged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent
WAIT = 30.0


class ProxyProcess:
    def __init__(self, config: Path, env: dict[str, str], argv: list[str]) -> None:
        self.config = config
        self.lines: list[str] = []
        self.proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, cwd="/")
        self._seen = threading.Condition()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stderr:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for(self, text: str, timeout: float = WAIT) -> str:
        """The first logged line containing `text`, waiting up to `timeout` s for it."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                hit = next((line for line in self.lines if text in line), None)
                if hit is not None:
                    return hit
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"{text!r} not logged (exit {self.proc.poll()}):\n{self.log}")
                self._seen.wait(min(left, 0.2))

    @property
    def log(self) -> str:
        with self._seen:
            return "\n".join(self.lines)

    def alive(self) -> bool:
        """The process runs, and none of its sidecar workers ever ended (a pool would
        restart it, which would hide a client that can kill one)."""
        return self.proc.poll() is None and not any("sidecar worker" in line and " ended (" in line
                                                    for line in self.lines)

    def children(self) -> list[int]:
        """The pids of its child processes (a sidecar pool's workers)."""
        out: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            try:
                out += [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                pass
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_proxy(config: Path, kms_home: Path, text: str, workers: int = 1) -> ProxyProcess:
    """`kms proxy --config FILE --workers N`, waiting until every entry listens."""
    config.write_text(text)
    env = {**os.environ, "KMS_HOME": str(kms_home)}
    p = ProxyProcess(config, env, [str(BIN / "kms"), "proxy", "--config", str(config), "--workers", str(workers)])
    for _ in range(text.count("[[proxy]]")):
        p.wait_for("listening on")
    return p


def start_up(config: Path, kms_home: Path, text: str) -> ProxyProcess:
    """`kms up FILE` on a config whose `[kms]` section names `kms_home`."""
    config.write_text(f'[kms]\nhome = "{kms_home}"\n\n{text}')
    env = {k: v for k, v in os.environ.items() if k not in ("KMS_HOME", "KMS_ROOT_KEY", "KMS_PASSPHRASE")}
    p = ProxyProcess(config, env, [str(BIN / "kms"), "up", str(config)])
    p.wait_for("running")
    return p
