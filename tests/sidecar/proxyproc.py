"""A real `kms-proxy` process for tests that measure it (peak RSS) or kill its keys.

Its stderr is drained by a thread (a proxy that logs every refusal must never block on
a full pipe) and kept, so a test can show what the proxy said.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

MiB = 1 << 20


class ProxyProcess:
    def __init__(self, home: Path, config: Path, workers: int = 1) -> None:
        env = {**os.environ, "KMS_HOME": str(home)}
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "kms-proxy"), "--config", str(config),
                                      "--workers", str(workers)], env=env, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        ready = threading.Event()

        def drain() -> None:
            for line in self.proc.stderr:
                self.lines.append(line)
                if "listening on" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        ready.wait(60)
        if self.proc.poll() is not None or not any("listening on" in x for x in self.lines):
            self.stop()
            raise AssertionError("kms-proxy did not start:\n" + "".join(self.lines))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        """The proxy and its worker processes (a pool's parent serves no request itself)."""
        out = [self.pid]
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            try:
                out += [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                pass
        return out

    def _status(self, field: str) -> int:
        values = []
        for pid in self.pids():
            try:
                text = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            values += [int(line.split()[1]) * 1024 for line in text.splitlines() if line.startswith(field)]
        if not values:
            raise AssertionError(f"no {field}")
        return max(values)

    def peak_rss(self) -> int:
        """VmHWM: the most resident memory one proxy process (or worker) ever used, in bytes."""
        return self._status("VmHWM:")

    def rss(self) -> int:
        return self._status("VmRSS:")

    def alive(self) -> bool:
        """Running, and no worker of it ever ended (the pool restarts one that does)."""
        return self.proc.poll() is None and not any(
            "sidecar worker" in line and " ended (" in line for line in self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def write_config(path: Path, listen: str, upstream_url: str, routes: str, limits: str = "") -> Path:
    path.write_text(f'''
[[proxy]]
listen = "{listen}"
upstream = "{upstream_url}"
{limits}
{routes}
''')
    return path
