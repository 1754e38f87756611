"""Create and rotate commits reach the disk in long-running processes (issue 15 item 7):
strace counts the fsyncs of the store's write-ahead log while one process keeps the
store open and commits key changes. A rotation whose ciphertexts were handed out must
survive a power loss, so every such commit is synced (PRAGMA synchronous=FULL)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

STRACE = shutil.which("strace")
COMMITS = r"""
import sys
from kmscore import Kms
with Kms(sys.argv[1]) as kms:
    kms.create_key("warm/up")
    print("ready", flush=True)
    for i in range(5):
        kms.create_key(f"app/k{i}")
        kms.rotate_key(f"app/k{i}")
"""


@pytest.mark.skipif(STRACE is None, reason="strace is needed: setup.sh installs it")
def test_every_create_and_rotate_commit_is_fsynced(home, tmp_path, kh):
    trace = tmp_path / "trace"
    out = subprocess.run(
        [STRACE, "-f", "-y", "-qq", "-e", "trace=fsync,fdatasync", "-o", str(trace), sys.executable, "-c", COMMITS, str(home)],
        capture_output=True, env=kh.clean_env(), timeout=120,
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    lines = kh.strace_lines(trace)
    wal_syncs = [l for l in lines if re.search(r"sync\(\d+</[^>]*keys\.db-wal>\)", l)]
    assert len(wal_syncs) >= 10, "\n".join(lines[-20:])  # 5 creates + 5 rotations, each synced
