"""fsmount I/O benchmark: a plain directory, gocryptfs and `kms mount`, side by side.

    sudo .venv/bin/python bench/fsmount_io.py [--dir /var/tmp] [--size-mib 1024] [--files 5000]

All three live on the same disk (under --dir) and run in one go. Measured, per target:
sequential write of --size-mib with fsync, sequential read after dropping the page
cache (needs root), 4 KiB random reads and writes with fio (psync engine, one job,
--seconds each) on the file just written, and creating --files files of 4 KiB
(create+write+close) then stat()ing each. Tests are interleaved across targets and
repeated (--rounds, best counts). Prints MB/s or ops/s and the ratio to gocryptfs. Timings are wall-clock from Python (sequential, small files) or fio's own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fsmount.mount import is_mounted  # noqa: E402

CHUNK = 1 << 20


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def seq_write(path: Path, size: int) -> float:
    buf = os.urandom(CHUNK)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(size // CHUNK):
            os.write(fd, buf)
        os.fsync(fd)
    finally:
        os.close(fd)
    return size / (time.perf_counter() - start) / 1e6


def seq_read(path: Path) -> float:
    drop_caches()
    start = time.perf_counter()
    n = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while chunk := os.read(fd, CHUNK):
            n += len(chunk)
    finally:
        os.close(fd)
    return n / (time.perf_counter() - start) / 1e6


def fio(path: Path, mode: str, seconds: int) -> float | None:
    if not shutil.which("fio"):
        return None
    drop_caches()
    done = subprocess.run(
        ["fio", "--name=r", f"--filename={path}", f"--rw={mode}", "--bs=4k", "--ioengine=psync",
         "--numjobs=1", f"--runtime={seconds}", "--time_based", "--size=" + str(path.stat().st_size),
         "--output-format=json"],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        print(f"fio failed on {path}: {done.stderr.strip()}", file=sys.stderr)
        return None
    job = json.loads(done.stdout)["jobs"][0]
    return job["read" if mode == "randread" else "write"]["iops"]


def keep(results: dict[str, float | None], metric: str, value: float | None) -> None:
    """Keep the best value seen for a metric."""
    if value is not None and (results.get(metric) is None or value > results[metric]):
        results[metric] = value


def small_files(root: Path, count: int, name: str = "small") -> tuple[float, float]:
    d = root / name
    d.mkdir()
    data = os.urandom(4096)
    start = time.perf_counter()
    for i in range(count):
        with open(d / f"f{i}", "wb") as f:
            f.write(data)
    created = count / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(count):
        os.stat(d / f"f{i}")
    stated = count / (time.perf_counter() - start)
    return created, stated


def wait_mounted(point: Path, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + 30
    while not is_mounted(point):
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"mount failed: exit {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{point} did not mount")
        time.sleep(0.05)


def setup(base: Path, only: list[str], kms_options: list[str]) -> tuple[dict[str, Path], list]:
    targets: dict[str, Path] = {}
    cleanup: list = []
    if "plain" in only:
        plain = base / "plain"
        plain.mkdir()
        targets["plain"] = plain
    if "gocryptfs" in only and shutil.which("gocryptfs"):
        c, m, pw = base / "gocrypt.c", base / "gocrypt.m", base / "gocrypt.pass"
        c.mkdir()
        m.mkdir()
        pw.write_text("benchmark passphrase\n")
        subprocess.run(["gocryptfs", "-init", "-q", "-passfile", str(pw), str(c)], check=True)
        subprocess.run(["gocryptfs", "-q", "-passfile", str(pw), str(c), str(m)], check=True)
        wait_mounted(m)
        targets["gocryptfs"] = m
        cleanup.append(lambda m=m: subprocess.run(["fusermount3", "-u", str(m)]))
    if "kms" not in only:
        return targets, cleanup
    home, c, m = base / "kmshome", base / "kms.c", base / "kms.m"
    c.mkdir()
    m.mkdir()
    log = open(base / "kms-mount.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "fsmount.cli", "--home", str(home), str(c), str(m), *kms_options], stdout=log, stderr=log)
    wait_mounted(m, proc)
    targets["kms mount"] = m

    def stop_kms() -> None:
        subprocess.run(["fusermount3", "-u", str(m)])
        if proc.wait(timeout=60) != 0:
            print((base / "kms-mount.log").read_text()[-2000:], file=sys.stderr)

    cleanup.append(stop_kms)
    return targets, cleanup


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/var/tmp", help="where to create the test directories (one disk)")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--seconds", type=int, default=5, help="fio runtime per random test")
    ap.add_argument("--rounds", type=int, default=2, help="repeat every test; the best round counts")
    ap.add_argument("--only", default="plain,gocryptfs,kms", help="comma-separated targets")
    ap.add_argument("--kms-frame-size", help="frame size of the kms mount's new cipher directory (e.g. 4k)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="keyhold-bench-", dir=args.dir))
    kms_options = ["--frame-size", args.kms_frame_size] if args.kms_frame_size else []
    targets, cleanup = setup(base, args.only.split(","), kms_options)
    results: dict[str, dict[str, float | None]] = {name: {} for name in targets}
    names = list(targets)
    try:
        # interleaved: each test runs on every target back to back (in a rotating order),
        # and the best of --rounds counts, so a noisy neighbour hurts all targets alike
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[: rnd % len(names)]
            for test in ("seq", "randread", "randwrite", "small"):
                for name in order:
                    root, r = targets[name], results[name]
                    big = root / "big"
                    if test == "seq":
                        keep(r, "seq write MB/s", seq_write(big, args.size_mib * CHUNK))
                        keep(r, "seq read MB/s", seq_read(big))
                    elif test in ("randread", "randwrite"):
                        keep(r, f"4k rand {test[4:]} IOPS", fio(big, test, args.seconds))
                    else:
                        created, stated = small_files(root, args.files, f"small{rnd}")
                        keep(r, "create files/s", created)
                        keep(r, "stat files/s", stated)
            for name in names:
                print(f"round {rnd + 1} {name}: " + ", ".join(f"{k} {v:,.0f}" for k, v in results[name].items() if v is not None), file=sys.stderr)
    finally:
        for step in reversed(cleanup):
            step()
        shutil.rmtree(base, ignore_errors=True)
    report(results, args)
    return 0


def report(results: dict[str, dict[str, float | None]], args: argparse.Namespace) -> None:
    names = list(results)
    metrics = ["seq write MB/s", "seq read MB/s", "4k rand read IOPS", "4k rand write IOPS", "create files/s", "stat files/s"]
    print(f"\nfsmount I/O: {args.size_mib} MiB sequential, {args.files} x 4 KiB files, fio 4k psync {args.seconds}s,"
          f" best of {args.rounds} interleaved rounds"
          f" (page cache dropped: {'yes' if os.geteuid() == 0 else 'no, not root'})\n")
    head = f"| {'metric':<20} | " + " | ".join(f"{n:>12}" for n in names) + " | kms/gocryptfs |"
    print(head)
    print("|" + "|".join("-" * (len(c) + 0) for c in head.split("|")[1:-1]) + "|")
    for m in metrics:
        cells = [results[n].get(m) for n in names]
        ratio = ""
        g, k = results.get("gocryptfs", {}).get(m), results.get("kms mount", {}).get(m)
        if g and k:
            ratio = f"{k / g:.2f}"
        print(f"| {m:<20} | " + " | ".join(f"{c:>12,.0f}" if c is not None else f"{'n/a':>12}" for c in cells) + f" | {ratio:>13} |")


if __name__ == "__main__":
    sys.exit(main())
