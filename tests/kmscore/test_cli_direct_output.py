"""`kms decrypt-file` writes a named output with O_DIRECT (issue 14: its aligned
plaintext writes took the page cache's slow path on this VM), falling back to buffered
writes where the file system refuses it, with the same bytes and the same durability and
errors; `encrypt-file` stays buffered (O_DIRECT measured slower for it), and both give
the same bytes either way.

The O_DIRECT path is observed in the real console script with strace (F_SETFL with
O_DIRECT on the unnamed output, then its writes), as the durability tests do; the
fallback is driven in-process (no file system here refuses O_DIRECT: tmpfs takes it
since Linux 6.6), and ENOSPC on a small ext4 image on a loop device (root only)."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from kmscore.cli import filepipe
from kmscore.cli.envelope import CHUNK
from kmscore.envelope import Header, ciphertext_length

STRACE = shutil.which("strace")
BLOCK = getattr(filepipe, "DIRECT_BLOCK", 6 << 20)  # (the getattr: these tests also run, and fail, on the code before O_DIRECT)
SIZES = [0, 1, 4095, 4096, 4097, CHUNK - 1, CHUNK, CHUNK + 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12345]


def takes_direct(folder: str) -> bool:
    """Whether a file in `folder` takes O_DIRECT writes of an aligned buffer."""
    import mmap

    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY | os.O_DIRECT, 0o600)
    except OSError:
        return False
    try:
        return os.write(fd, mmap.mmap(-1, 4096)) == 4096
    except OSError:
        return False
    finally:
        os.close(fd)


def _folder(base: str, **skip):
    if not os.path.isdir(base) or not os.access(base, os.W_OK):
        pytest.skip(f"no writable {base}")
    path = Path(tempfile.mkdtemp(prefix="kms-direct-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def disk():
    """A folder on a disk file system (/var/tmp), where O_DIRECT is taken."""
    for path in _folder("/var/tmp"):
        if not takes_direct(str(path)):
            pytest.skip("/var/tmp does not take O_DIRECT writes")
        yield path


@pytest.fixture
def shm():
    """A folder on tmpfs (/dev/shm): O_DIRECT refused (before Linux 6.6) or page-cache only."""
    yield from _folder("/dev/shm")


@pytest.fixture
def key(run_kms):
    assert run_kms("create-key", "--alias", "app/direct").returncode == 0
    return "app/direct"


@pytest.mark.parametrize("where", ["disk", "shm"])
def test_round_trips_around_alignment_and_buffer_boundaries(request, where, tmp_path, kh, home, key):
    """Every size: the envelope has the format's length, decrypt-file into a file gives
    back the input, and the same bytes as decrypt-file to a pipe (stdout: the buffered
    path) of the same envelope."""
    folder = request.getfixturevalue(where)
    data = os.urandom(max(SIZES))
    for size in SIZES:
        plain = tmp_path / "p"
        plain.write_bytes(data[:size])
        sealed, opened = folder / f"e{size}", folder / f"d{size}"
        enc = kh.kms_cli(home, "encrypt-file", key, str(plain), str(sealed))
        assert enc.returncode == 0, enc.stderr
        envelope = sealed.read_bytes()
        header = Header.decode(envelope[: len(envelope) - ciphertext_length(size, 65536)])
        assert len(envelope) == header.size + ciphertext_length(size, 65536), size
        dec = kh.kms_cli(home, "decrypt-file", str(sealed), str(opened))
        assert dec.returncode == 0, dec.stderr
        assert opened.read_bytes() == data[:size], size
        piped = kh.kms_cli(home, "decrypt-file", str(sealed), "-")
        assert piped.returncode == 0 and piped.stdout == data[:size], size
        assert oct(opened.stat().st_mode & 0o777) == oct(0o600)
        sealed.unlink()
        opened.unlink()


def test_an_envelope_whose_length_is_a_buffer_multiple(tmp_path, kh, home, key, disk):
    """Envelopes of exactly k * 4096 bytes and k * DIRECT_BLOCK bytes (no tail) and one byte
    more (a one-byte tail), through encrypt-file's own output."""
    plain = tmp_path / "p"
    plain.write_bytes(b"")
    assert kh.kms_cli(home, "encrypt-file", key, str(plain), str(disk / "h")).returncode == 0
    header_size = (disk / "h").stat().st_size - ciphertext_length(0, 4096)
    data = os.urandom(2 * BLOCK)
    for target in (4096, 8192, BLOCK, 2 * BLOCK):
        for extra in (0, 1):
            # the largest plaintext whose envelope (frames of 4096 + 28) is at most target + extra
            size = max(n for n in range(target - header_size - 60 * (target // 4096) - 100, target)
                       if header_size + ciphertext_length(n, 4096) <= target + extra)
            plain.write_bytes(data[:size])
            out = disk / "e"
            assert kh.kms_cli(home, "encrypt-file", key, str(plain), str(out), "--frame-size", "4096").returncode == 0
            assert out.stat().st_size == header_size + ciphertext_length(size, 4096)
            dec = kh.kms_cli(home, "decrypt-file", str(out), "-")
            assert dec.returncode == 0 and dec.stdout == data[:size]
            out.unlink()


def traced(tmp_path, kh, home, *args: str) -> list[str]:
    return kh.traced_kms(tmp_path, home, "fcntl,write,pwrite64,fsync,linkat,sync_file_range", *args)


@pytest.mark.skipif(STRACE is None, reason="strace is needed: setup.sh installs it")
def test_encrypt_file_writes_its_named_output_through_the_page_cache(tmp_path, kh, home, run_kms, key, disk):
    """encrypt-file stays buffered (O_DIRECT measured slower for it on a quiet disk), with
    the early writeback of filepipe.EarlyWriteback and the fsync before the link."""
    (tmp_path / "p").write_bytes(os.urandom(48 << 20))
    lines = traced(tmp_path, kh, home, "encrypt-file", key, str(tmp_path / "p"), str(disk / "result"))
    assert not [l for l in lines if "O_DIRECT" in l], "\n".join(lines)
    assert [l for l in lines if "sync_file_range" in l], "\n".join(lines[-30:])
    tmpfile = rf"\d+<{re.escape(str(disk))}/#\d+>\(deleted\)"
    synced = next(i for i, l in enumerate(lines) if re.search(rf"fsync\({tmpfile}\)", l))
    named = next(i for i, l in enumerate(lines) if re.search(r"linkat\(.*result", l))
    assert synced < named
    dec = kh.kms_cli(home, "decrypt-file", str(disk / "result"), "-")
    assert dec.returncode == 0 and dec.stdout == (tmp_path / "p").read_bytes()


@pytest.mark.skipif(STRACE is None, reason="strace is needed: setup.sh installs it")
@pytest.mark.parametrize("command", ["decrypt-file"])
def test_a_named_output_on_a_disk_is_written_with_o_direct(tmp_path, kh, home, run_kms, key, disk, command):
    """The unnamed output gets O_DIRECT before its first write; its data goes out in
    aligned writes of megabytes while O_DIRECT is set; only the tail after clearing it; no
    sync_file_range (nothing is left in the page cache to start early); fsync before link."""
    size = 3 * BLOCK + 12345
    (tmp_path / "p").write_bytes(os.urandom(size))
    assert run_kms("encrypt-file", key, str(tmp_path / "p"), str(disk / "e")).returncode == 0
    args = (command, key, str(tmp_path / "p")) if command == "encrypt-file" else (command, str(disk / "e"))
    lines = traced(tmp_path, kh, home, *args, str(disk / "result"))
    tmpfile = rf"\d+<{re.escape(str(disk))}/#\d+>\(deleted\)"
    set_direct = [i for i, l in enumerate(lines) if re.search(rf"fcntl\({tmpfile}, F_SETFL, \S*O_DIRECT", l)]
    assert set_direct, "\n".join(lines)
    writes = [(i, int(m.group(1))) for i, l in enumerate(lines) if (m := re.search(rf"write\({tmpfile}, .*, (\d+)\) = \1$", l))]
    assert writes and writes[0][0] > set_direct[0]
    cleared = [i for i, l in enumerate(lines) if re.search(rf"fcntl\({tmpfile}, F_SETFL, (?!.*O_DIRECT)", l)]
    direct = [n for i, n in writes if not cleared or i < cleared[0]]
    assert sum(direct) >= size - BLOCK and all(n % 4096 == 0 for n in direct), writes
    assert all(n >= 1 << 20 for n in direct[:-1]), writes  # megabytes, but for the tail's aligned part
    assert sum(n for _, n in writes) == (disk / "result").stat().st_size
    assert not [l for l in lines if "sync_file_range" in l]
    synced = next(i for i, l in enumerate(lines) if re.search(rf"fsync\({tmpfile}\)", l))
    named = next(i for i, l in enumerate(lines) if re.search(r"linkat\(.*result", l))
    assert writes[-1][0] < synced < named


@pytest.mark.skipif(STRACE is None, reason="strace is needed: setup.sh installs it")
def test_stdout_to_a_file_is_written_as_before(tmp_path, kh, home, key, disk):
    """Standard output is the caller's file (its flags, its position): never O_DIRECT."""
    (tmp_path / "p").write_bytes(os.urandom(CHUNK * 3))
    trace = tmp_path / "trace"
    with open(disk / "e", "wb") as out:
        done = subprocess.run([STRACE, "-f", "-qq", "-e", "trace=fcntl", "-o", str(trace), kh.KMS_BIN, "--home", str(home),
                               "encrypt-file", key, str(tmp_path / "p"), "-"], stdout=out, stderr=subprocess.PIPE,
                              env=kh.clean_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "O_DIRECT" not in trace.read_text()
    dec = kh.kms_cli(home, "decrypt-file", str(disk / "e"), "-")
    assert dec.returncode == 0 and dec.stdout == (tmp_path / "p").read_bytes()


# -- the fallback, in-process ---------------------------------------------------------------
def _stream(pieces: list[int], size: int, seed: int = 7) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A stream as the commands write it: an odd header by write_bytes, then buffers."""
    import random

    rng = random.Random(seed)
    steps = [("bytes", rng.randbytes(777))] + [("buffer", rng.randbytes(n)) for n in pieces]
    assert all(len(d) <= size for kind, d in steps if kind == "buffer")
    return b"".join(d for _, d in steps), steps


def _feed(w, steps) -> None:
    for kind, data in steps:
        if kind == "bytes":
            w.write_bytes(data)
        else:
            buf = w.buffer()
            buf[: len(data)] = data
            w.write(buf, len(data))


@pytest.mark.parametrize("pieces", [[], [0], [1], [4096 - 777], [CHUNK] * 5, [CHUNK] * 6, [CHUNK] * 13 + [5],
                                    [CHUNK - 1, CHUNK, 3] * 7])
def test_direct_writer_gives_the_stream_on_a_disk(disk, pieces):
    expected, steps = _stream(pieces, CHUNK)
    with open(disk / "f", "wb") as f:
        with filepipe.write_behind(f, CHUNK, direct=True) as w:
            assert isinstance(w, filepipe.DirectWriteBehind)
            _feed(w, steps)
        assert fcntl.fcntl(f.fileno(), fcntl.F_GETFL) & os.O_DIRECT == (0 if len(expected) % 4096 else os.O_DIRECT)
    assert (disk / "f").read_bytes() == expected


def test_a_file_system_refusing_o_direct_on_fcntl_gets_buffered_writes(disk, monkeypatch):
    real = fcntl.fcntl

    def refuse(fd, cmd, arg=0):
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, cmd, arg)

    monkeypatch.setattr(fcntl, "fcntl", refuse)
    expected, steps = _stream([CHUNK] * 9, CHUNK)
    with open(disk / "f", "wb") as f, filepipe.write_behind(f, CHUNK, direct=True) as w:
        assert isinstance(w, filepipe.WriteBehind)
        _feed(w, steps)
    assert (disk / "f").read_bytes() == expected


def test_a_file_system_refusing_o_direct_writes_gets_the_same_bytes_buffered(disk, monkeypatch):
    """EINVAL on the first O_DIRECT write (the flag taken, the I/O refused): O_DIRECT is
    cleared and the same bytes written buffered, from the same offset."""
    real = os.write
    refused = []

    def write(fd, data):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    expected, steps = _stream([CHUNK] * 14 + [99], CHUNK)
    with open(disk / "f", "wb") as f:
        with filepipe.write_behind(f, CHUNK, direct=True) as w:
            _feed(w, steps)
        assert not fcntl.fcntl(f.fileno(), fcntl.F_GETFL) & os.O_DIRECT
    assert refused and len(refused) == 1
    assert (disk / "f").read_bytes() == expected


def test_a_write_error_surfaces_and_the_rest_is_not_written(disk, monkeypatch):
    real = os.write
    calls = []

    def write(fd, data):
        calls.append(len(data))
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    _, steps = _stream([CHUNK] * 30, CHUNK)
    with open(disk / "f", "wb") as f, pytest.raises(OSError) as e:
        with filepipe.write_behind(f, CHUNK, direct=True) as w:
            _feed(w, steps)
    assert e.value.errno == errno.EIO
    assert len(calls) == 2  # nothing after the failed write


# -- a full disk ----------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB ext4 file system on a loop device (root, mkfs.ext4 and loop devices needed)."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("a loop-mounted ext4 image needs root and mkfs.ext4")
    img, mnt = tmp_path / "img", tmp_path / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
    done = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 image: {done.stderr.decode().strip()}")
    try:
        if not takes_direct(str(mnt)):
            pytest.skip("the loop-mounted ext4 does not take O_DIRECT")
        out = mnt / "out"
        out.mkdir()
        yield out
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.parametrize("command", ["encrypt-file", "decrypt-file"])
def test_a_full_disk_is_a_one_line_error_and_leaves_no_output(tmp_path, kh, home, run_kms, key, small_disk, command):
    (tmp_path / "p").write_bytes(os.urandom(100 << 20))
    assert run_kms("encrypt-file", key, str(tmp_path / "p"), str(tmp_path / "e")).returncode == 0
    free = shutil.disk_usage(small_disk).free
    args = (command, key, str(tmp_path / "p")) if command == "encrypt-file" else (command, str(tmp_path / "e"))
    done = kh.kms_cli(home, *args, str(small_disk / "result"))
    assert done.returncode != 0
    err = done.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err and "result" in err, err
    assert os.listdir(small_disk) == []
    assert shutil.disk_usage(small_disk).free >= free - (1 << 20)  # the unnamed file's blocks are freed
