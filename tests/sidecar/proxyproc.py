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
    def __init__(self, home: Path, config: Path) -> None:
        env = {**os.environ, "KMS_HOME": str(home)}
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "kms-proxy"), "--config", str(config)],
                                     env=env, stderr=subprocess.PIPE, text=True)
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

    def peak_rss(self) -> int:
        """VmHWM: the most resident memory the proxy ever used, in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def alive(self) -> bool:
        return self.proc.poll() is None

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
