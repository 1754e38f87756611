"""A file the CLI writes (encrypt-file, decrypt-file, exported keys) is on the disk
before it gets its name: the data is fsynced before the link, and the folder after it.

Without that, a power loss shortly after `kms encrypt-file` returns can leave an empty
or partial envelope under the final name (ext4 delays allocation; a link of an unsynced
file is not ordered after its data), while the user, seeing exit 0, has already removed
the plaintext. strace shows the order of the real console script's system calls."""

from __future__ import annotations

import os
import re
import shutil

import pytest

STRACE = shutil.which("strace")


def traced(tmp_path, kh, home, *args: str) -> list[str]:
    return kh.traced_kms(tmp_path, home, "fsync,fdatasync,linkat,link,rename,renameat,renameat2", *args)


def first(lines: list[str], pattern: str) -> int:
    for i, line in enumerate(lines):
        if re.search(pattern, line):
            return i
    raise AssertionError(f"no {pattern!r} in:\n" + "\n".join(lines[-30:]))


@pytest.mark.skipif(STRACE is None, reason="strace is needed: setup.sh installs it")
@pytest.mark.parametrize("command", ["encrypt-file", "decrypt-file"])
def test_an_output_is_synced_before_it_is_named_and_its_folder_after(tmp_path, kh, home, run_kms, command):
    run_kms("create-key", "--alias", "app/d")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (tmp_path / "p").write_bytes(os.urandom(300_000))
    assert run_kms("encrypt-file", "app/d", str(tmp_path / "p"), str(tmp_path / "e")).returncode == 0
    args = ("encrypt-file", "app/d", str(tmp_path / "p")) if command == "encrypt-file" else ("decrypt-file", str(tmp_path / "e"))
    lines = traced(tmp_path, kh, home, *args, str(out_dir / "result"))
    named = first(lines, r"(link|rename)\w*\(.*result")
    # the unnamed output (O_TMPFILE shows as "#NNN (deleted)" or the temporary's name) is synced before
    synced = first(lines, rf"f(data)?sync\(\d+<{re.escape(str(out_dir))}/[^>]*>")
    assert synced < named, "\n".join(lines)
    # and the folder, holding the new name, after
    folder = [i for i, l in enumerate(lines) if re.search(rf"f(data)?sync\(\d+<{re.escape(str(out_dir))}>\)", l)]
    assert folder and folder[-1] > named, "\n".join(lines)
    assert (out_dir / "result").stat().st_size > 0


@pytest.mark.skipif(STRACE is None, reason="strace is needed: setup.sh installs it")
def test_a_large_output_is_written_back_while_it_grows(tmp_path, kh, home, run_kms):
    """The disk starts on a buffered output before the final fsync (filepipe.EarlyWriteback):
    ranges well behind the write head are queued, in order, none past what was written.
    Buffered outputs are standard output redirected to a file (a named OUT is written with
    O_DIRECT where the file system takes it: tests/kmscore/test_cli_direct_output.py)."""
    run_kms("create-key", "--alias", "app/w")
    size = 48 << 20
    with open(tmp_path / "p", "wb") as f:
        f.truncate(size)  # a sparse input: zeros, read fast
    trace = tmp_path / "trace"
    with open(tmp_path / "e", "wb") as sealed:
        out = kh.subprocess.run(
            [STRACE, "-f", "-qq", "-e", "trace=sync_file_range,fsync", "-o", str(trace), kh.KMS_BIN,
             "--home", str(home), "--create-home", "encrypt-file", "app/w", str(tmp_path / "p"), "-"],
            stdout=sealed, stderr=kh.subprocess.PIPE, env=kh.clean_env(), timeout=120,
        )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    lines = kh.strace_lines(trace)
    queued = [tuple(map(int, m.groups())) for l in lines if (m := re.search(r"sync_file_range\(\d+, (\d+), (\d+), SYNC_FILE_RANGE_WRITE\)", l))]
    assert len(queued) >= 3, "\n".join(lines)
    assert [offset for offset, _ in queued] == sorted(offset for offset, _ in queued)
    assert queued[-1][0] + queued[-1][1] <= (tmp_path / "e").stat().st_size
