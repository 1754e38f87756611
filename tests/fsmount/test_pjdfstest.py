"""pjdfstest, the POSIX conformance suite, on a real keyhold mount: no subtest may fail.

The mount runs as root with allow_other and default_permissions (the kernel checks
modes, as on ext4; the suite switches users), its cipher directory on a small tmpfs (a
mount that stored a huge truncate as data would fill it and fail fast, not fill the
disk). pjdfstest is vendored in tests/conformance/ and built once into
$PJDFSTEST_BUILD (default /var/tmp/keyhold-pjdfstest). The run takes a few
minutes: it is the whole suite, 238 files and ~8,800 subtests.

KEYHOLD_PJDFSTEST="chmod rename/09.t" runs a subset (paths below pjdfstest/tests).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from kmscore import Kms

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "tests" / "conformance" / "pjdfstest.sh"
SUITE = REPO / "tests" / "conformance" / "pjdfstest" / "tests"
BUILD = os.environ.get("PJDFSTEST_BUILD", "/var/tmp/keyhold-pjdfstest")
TOOLS = ("autoreconf", "automake", "gcc", "make", "prove")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="pjdfstest needs root (it switches users and makes device nodes)"),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS),
        reason=f"pjdfstest needs {', '.join(TOOLS)} (./setup.sh test installs them)",
    ),
]


@pytest.fixture
def root_mount(mount_at):
    """A root mount (allow_other, default_permissions) with its cipher dir on a 256 MiB tmpfs."""
    top = Path(tempfile.mkdtemp(prefix="keyhold-pjdfstest-"))
    os.chmod(top, 0o755)  # the suite's other users must reach the mount point
    tmpfs = top / "tmpfs"
    tmpfs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,mode=0755", "tmpfs", str(tmpfs)], check=True)
    try:
        home, cipher, point = top / "kmshome", tmpfs / "cipher", top / "plain"
        cipher.mkdir()
        point.mkdir()
        with Kms(home, caller="test"):
            pass
        m = mount_at(home, cipher, point, top / "mount.log", "--allow-other")
        try:
            yield m
        finally:
            m.stop()
    finally:
        subprocess.run(["umount", "-l", str(tmpfs)], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


def failures(report: str) -> dict[str, str]:
    """{test file: its failed subtest numbers} from prove's summary report."""
    found: dict[str, str] = {}
    current = None
    for line in report.splitlines():
        m = re.match(r"^(\S+\.t)\s+\(Wstat: (\d+) Tests: (\d+) Failed: (\d+)\)", line)
        if m:
            current = m.group(1).split("/tests/", 1)[-1]
            if m.group(4) != "0" or m.group(2) != "0":
                found[current] = f"wait status {m.group(2)}" if m.group(4) == "0" else ""
            else:
                current = None
            continue
        m = re.match(r"^\s+Failed tests?:\s+(.*)$", line)
        if m and current in found:
            found[current] = m.group(1).strip()
        elif current in found and re.match(r"^\s+[\d, -]+$", line):
            found[current] += " " + line.strip()
        elif not line.startswith(" "):
            current = None
    return found


def test_pjdfstest_has_no_failed_subtest(root_mount):
    tests = os.environ.get("KEYHOLD_PJDFSTEST", "").split()
    env = {**os.environ, "PJDFSTEST_BUILD": BUILD}
    done = subprocess.run(
        ["bash", str(RUNNER), str(root_mount.path("t")), *tests],
        capture_output=True, text=True, env=env, timeout=1500,
    )
    out = done.stdout + done.stderr
    summary = re.search(r"pjdfstest: files=(\d+) subtests=(\d+) failed_files=(\d+) failed_subtests=(\d+)", out)
    assert summary, f"pjdfstest did not run:\n{out[-3000:]}"
    files, subtests, _failed_files, failed = map(int, summary.groups())
    if not tests:  # the whole suite ran, not an empty or partial one
        assert files == len(list(SUITE.rglob("*.t"))), out[-3000:]
        assert subtests > 8000, out[-3000:]
    named = "\n".join(f"  {f}: {which}" for f, which in sorted(failures(out).items()))
    assert failed == 0 and done.returncode == 0, f"pjdfstest: {failed} failed subtests:\n{named}\n{out[-2000:]}"
    log = Path(root_mount.log).read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
