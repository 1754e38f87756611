"""Envelope streaming throughput: `kms encrypt-file` / `kms decrypt-file` beside `age`
(X25519 recipient) and `cp` of the same file, in one run, with raw AES-256-GCM over the
same number of bytes (no I/O) as the compute ceiling. Prints MB/s, ratios and the peak
RSS of every command.

    .venv/bin/python bench/envelope_stream.py [--size 1G] [--repeat 3] [--dir DIR] [--no-flush]
                                              [--compare-with DIR ...]

--compare-with DIR runs the `kms` of another checkout too (e.g. `git archive main | tar
-x -C DIR`), as `encrypt-file@DIR` and `decrypt-file@DIR`, interleaved with the rest, so
old and new code are measured side by side in one run. Every output is removed before
its timed run (replacing a 1 GiB file would charge the freeing of the old one to the
tool that writes the new one).

Each timed run is the command plus an fsync of its output (so dirty pages left in the
page cache are paid for by the tool that made them); --no-flush times the command alone.
The median of --repeat runs is reported; runs of different tools are interleaved so
that background load hits them alike. Peak RSS comes from GNU time (/usr/bin/time) around each command.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KMS = str(Path(sys.executable).parent / "kms")
TIME = "/usr/bin/time"  # GNU time (Debian package `time`)
MB = 1_000_000


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def run(cmd: list[str], output: Path | None, flush: bool, env: dict) -> tuple[float, int]:
    """Wall seconds (command + fsync of its output) and peak RSS in KiB.

    The RSS comes from /usr/bin/time -v (its wait4 of the exec'd command): wait4 of a
    child forked by this (large) Python process would count the pages it shared before exec.
    """
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.perf_counter()
        proc = subprocess.run([TIME, "-f", "%M", "-o", report.name, *cmd], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.decode().strip()}")
        peak = int(report.read().split()[-1])
    if flush and output is not None:
        fd = os.open(output, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.perf_counter() - start, peak


def make_input(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 << 20)
            f.write(os.urandom(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def ceiling(size: int, frame: int = 65536) -> tuple[float, float]:
    """Seconds for raw AES-256-GCM seal and open of `size` bytes in frames, in memory."""
    aead = AESGCM(AESGCM.generate_key(256))
    block = os.urandom(64 << 20)
    src = memoryview(block)
    out = bytearray(frame + 16)
    dst = memoryview(out)
    nonce, aad = os.urandom(12), os.urandom(37)
    sealed = [aead.encrypt(nonce, src[i : i + frame], aad) for i in range(0, 16 * frame, frame)]
    t = time.perf_counter()
    done = 0
    while done < size:
        for i in range(0, min(len(block), size - done), frame):
            aead.encrypt_into(nonce, src[i : i + frame], aad, dst)
        done += len(block)
    seal = time.perf_counter() - t
    t = time.perf_counter()
    done = 0
    while done < size:
        for k in range(min(len(block), size - done) // frame):
            aead.decrypt_into(nonce, sealed[k % 16], aad, dst[:frame])
        done += len(block)
    return seal, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G", help="input size, e.g. 256M, 1G (default 1G)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per command; the median is shown")
    ap.add_argument("--dir", help="work directory (default: a new one under $TMPDIR)")
    ap.add_argument("--no-flush", action="store_true", help="do not fsync outputs (page-cache speed)")
    ap.add_argument("--compare-with", nargs="*", default=[], metavar="DIR", help="other checkouts to run alongside")
    args = ap.parse_args()
    size = parse_size(args.size)
    if not shutil.which("age") or not shutil.which("age-keygen"):
        raise SystemExit("age is not installed (Debian package `age`)")
    if not os.access(TIME, os.X_OK):
        raise SystemExit("GNU time is not installed (Debian package `time`)")
    work = Path(tempfile.mkdtemp(prefix="keyhold-bench-", dir=args.dir))
    flush = not args.no_flush
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_")}
    try:
        home = work / "home"
        plain, sealed_kms, sealed_age = work / "plain", work / "plain.khev", work / "plain.age"
        out = work / "out"
        subprocess.run([KMS, "init", "--home", str(home)], check=True, capture_output=True, env=env)
        subprocess.run([KMS, "--home", str(home), "create-key", "--alias", "bench/envelope"], check=True,
                       capture_output=True, env=env)
        subprocess.run(["age-keygen", "-o", str(work / "identity")], check=True, capture_output=True)
        recipient = next(l.split(": ")[1] for l in (work / "identity").read_text().splitlines() if "public key" in l)
        print(f"input: {size / MB:.0f} MB of random bytes in {work} ({'outputs fsynced' if flush else 'no fsync'}),"
              f" {args.repeat} run(s) each, median", flush=True)
        make_input(plain, size)
        kms = [KMS, "--home", str(home)]
        commands = {
            "cp": (["cp", str(plain), str(out)], out),
            "kms encrypt-file": (kms + ["encrypt-file", "bench/envelope", str(plain), str(sealed_kms)], sealed_kms),
            "age -r (X25519)": (["age", "-r", recipient, "-o", str(sealed_age), str(plain)], sealed_age),
            "kms decrypt-file": (kms + ["decrypt-file", str(sealed_kms), str(out)], out),
            "age -d": (["age", "-d", "-i", str(work / "identity"), "-o", str(out), str(sealed_age)], out),
            "kms startup (list-keys)": (kms + ["list-keys"], None),
        }
        for other in args.compare_with:
            tag = Path(other).name
            old_kms = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(other).resolve())!r}); "
                       "from kmscore.cli.main import main; sys.exit(main())", "--home", str(home)]
            sealed_other = work / f"plain.{tag}.khev"
            commands[f"encrypt-file@{tag}"] = (old_kms + ["encrypt-file", "bench/envelope", str(plain),
                                                         str(sealed_other)], sealed_other)
            commands[f"decrypt-file@{tag}"] = (old_kms + ["decrypt-file", str(sealed_other), str(out)], out)
        times: dict[str, list[float]] = {name: [] for name in commands}
        rss: dict[str, int] = {name: 0 for name in commands}
        for _ in range(args.repeat):
            for name, (cmd, output) in commands.items():
                if output is not None:
                    output.unlink(missing_ok=True)
                seconds, peak = run(cmd, output, flush, env)
                times[name].append(seconds)
                rss[name] = max(rss[name], peak)
                if "decrypt-file" in name and sha256(out) != sha256(plain):
                    raise SystemExit(f"{name} did not give back the input")
        seal, open_ = ceiling(size)
        median = {name: statistics.median(ts) for name, ts in times.items()}
        cp = median["cp"]
        print(f"\n{'':26} {'seconds':>8} {'MB/s':>8} {'time/cp':>8} {'peak RSS':>9}")
        for name, seconds in median.items():
            rate = f"{size / MB / seconds:8.0f}" if "startup" not in name else f"{'':>8}"
            print(f"{name:26} {seconds:8.2f} {rate} {seconds / cp:8.2f} {rss[name] / 1024:7.1f} MiB")
        for name, seconds in (("raw AES-GCM seal (no I/O)", seal), ("raw AES-GCM open (no I/O)", open_)):
            print(f"{name:26} {seconds:8.2f} {size / MB / seconds:8.0f} {seconds / cp:8.2f} {'(in process)':>13}")
        print()
        for other in args.compare_with:
            tag = Path(other).name
            for op in ("encrypt-file", "decrypt-file"):
                print(f"kms {op}: {median[f'{op}@{tag}'] / median[f'kms {op}']:.2f}x the speed of {op}@{tag} "
                      f"({median[f'{op}@{tag}'] / cp:.2f}x the time of cp)")
        for kms_op, age_op in (("kms encrypt-file", "age -r (X25519)"), ("kms decrypt-file", "age -d")):
            print(f"{kms_op}: {median[age_op] / median[kms_op]:.2f}x the speed of age, "
                  f"{median[kms_op] / cp:.2f}x the time of cp, "
                  f"{median[kms_op] - median['kms startup (list-keys)']:.2f} s without the CLI start-up")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
