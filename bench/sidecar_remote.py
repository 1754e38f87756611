"""A sidecar on the remote facade beside a sidecar on the embedded facade (issue 12).

    .venv/bin/python bench/sidecar_remote.py [--seconds 2.0] [--rounds 2] [--connections 1,16]

One run starts, on 127.0.0.1:

    kms serve        a real `kms serve --plain-http` on a fresh key store (home S)
    upstream         bench/sidecar_http.py's minimal HTTP/1.1 upstream (its own process)
    kms proxy (remote)    `kms proxy --config remote.toml`: `[kms] url` = the server,
                          `access_key_file` (0600) from `kms access-key create --json`
    kms proxy (embedded)  `kms proxy --config embedded.toml`: `[kms] home` = S itself

Both proxies have the same `[[proxy]]`: one route that encrypts request bodies
(`/enc/*`, whole-body envelope, key bench/enc) and one that decrypts them (`/dec/*`, key
bench/dec; the body is one envelope made under that key before the run, so both sides
can open it). The same client drives both, alternating embedded and remote for
`--rounds` slices of `--seconds` per cell (the machine may be shared; interleaving keeps
both sides under the same load): `connections` threads, each with its own keep-alive
httpx connection, POSTing 4 KiB.

It prints requests/s, p50/p99 and the ratio remote ÷ embedded per route and connection
count, with the CPU time each proxy process (and, for the remote side, the server) spent
per request (utime + stime from /proc: the figure background load skews least); then
what one facade call costs in-process against over the wire (`RemoteKms`, one
connection, an access key of its own): the round trip each remote call adds; then the
KMS calls per proxied request of each side and route, from the store's audit records
once every process has stopped (the server records each call under the access key's
name, the embedded proxy under its own; one key per route tells the routes apart).

Timings are printed, never asserted. bench/kms_serve.py measures the AWS API itself.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kms_serve import KMS_BIN, kms_cli, measure, start_server, summary  # noqa: E402
from sidecar_http import cpu_seconds  # noqa: E402

from kmscore import Kms  # noqa: E402

ENC_KEY, DEC_KEY = "bench/enc", "bench/dec"
"""One key per route, so the audit records tell the routes' KMS calls apart."""
PAYLOAD = os.urandom(4096)
FRAME_SIZE = 65536
ENVELOPE_TYPE = "application/vnd.keyhold.envelope"
BENCH_CALLER = "bench/sidecar_remote.py"
"""The audit caller of this script's own calls, left out of the per-request counts."""
POLICY = """
[[allow]]
operations = ["list_keys"]
keys = ["*"]

[[allow]]
operations = ["describe_key", "key_usable", "create_datakey", "decrypt_datakey"]
keys = ["bench/*"]
"""
PROXY = """
[[proxy]]
name = "bench"
listen = "127.0.0.1:{port}"
upstream = "http://127.0.0.1:{upstream}"

[[proxy.route]]
name = "enc"
match = {{ path = "/enc/*", methods = ["POST"] }}
request = {{ action = "encrypt", key = "{enc}" }}

[[proxy.route]]
name = "dec"
match = {{ path = "/dec/*", methods = ["POST"] }}
request = {{ action = "decrypt", key = "{dec}" }}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc: subprocess.Popen, port: int, what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"{what} did not listen within {timeout:g} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("KMS_", "AWS_"))}


def access_key_file(home: Path, folder: Path, name: str) -> Path:
    """`kms access-key create --json`'s output in a 0600 file, as OPERATIONS.md says."""
    policy = folder / "sidecar-policy.toml"
    policy.write_text(POLICY)
    out = kms_cli(home, "access-key", "create", "--name", name, "--policy", str(policy), "--json")
    if out.returncode:
        raise SystemExit(out.stderr.decode())
    path = folder / f"{name}.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(out.stdout)
    return path


def start_proxy(config: Path) -> subprocess.Popen:
    """`kms proxy --config` (it has no --workers: one process, one event loop)."""
    with config.with_suffix(".log").open("wb") as log:
        return subprocess.Popen([KMS_BIN, "proxy", "--config", str(config), "--quiet"], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, env=clean_env())


def drive(url: str, path: str, body: bytes, content_type: str, connections: int, seconds: float) -> list[float]:
    """POST `body` for `seconds` over `connections` keep-alive connections (kms_serve.measure);
    every request's latency. A non-200 answer stops the bench."""
    clients: list[httpx.Client] = []
    headers = {"Content-Type": content_type}

    def worker() -> Callable[[], object]:
        http = httpx.Client(base_url=url, limits=httpx.Limits(max_connections=1), timeout=30)
        clients.append(http)

        def post() -> None:
            r = http.post(path, content=body, headers=headers)
            if r.status_code != 200:
                raise RuntimeError(f"{url}{path}: {r.status_code} {r.text[:200]}")

        return post

    try:
        return measure(connections, seconds, worker)
    finally:
        for c in clients:
            c.close()


def kms_calls(home: Path) -> Counter:
    """Audit records of the store: calls by (caller, key alias, operation)."""
    out: Counter = Counter()
    with Kms(home, caller=BENCH_CALLER) as kms:
        names = {kms.describe_key(a).key_id: a for a in (ENC_KEY, DEC_KEY)}
        for r in kms.audit_records(None):
            out[r["caller"], names.get(r["key_id"], r["key_id"]), r["operation"]] += r["count"]
    return out


def round_trip(url: str, key_file: Path, home: Path, n: int) -> None:
    """create_datakey and key_usable in-process vs over the wire, one connection each (with
    an access key of its own, so its calls stay out of the per-request counts)."""
    from kmscore.remote import Credentials, RemoteKms

    print(f"\n{'one facade call':<22} | {'embedded p50 µs':>15} | {'remote p50 µs':>13} | {'added µs':>9}")
    remote = RemoteKms(url, Credentials.load(key_file))
    try:
        with Kms(home, caller=BENCH_CALLER) as kms:
            key_id = kms.describe_key(ENC_KEY).key_id
            for name, local, wire in [
                ("create_datakey", lambda: kms.create_datakey(ENC_KEY), lambda: remote.create_datakey(ENC_KEY)),
                ("key_usable", lambda: kms.key_usable(key_id), lambda: remote.key_usable(key_id)),
            ]:
                wire()  # the connection is open before the clock starts
                a, b = [], []
                for _ in range(n):  # alternating, like the rest of the bench
                    t0 = time.perf_counter()
                    local()
                    t1 = time.perf_counter()
                    wire()
                    a.append(t1 - t0)
                    b.append(time.perf_counter() - t1)
                pa, pb = sorted(a)[len(a) // 2] * 1e6, sorted(b)[len(b) // 2] * 1e6
                print(f"{name:<22} | {pa:>15,.0f} | {pb:>13,.0f} | {pb - pa:>9,.0f}", flush=True)
    finally:
        remote.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", default="1,16")
    ap.add_argument("--calls", type=int, default=300, help="calls per side for the one-call round trip")
    args = ap.parse_args()
    conns = [int(c) for c in args.connections.split(",")]
    bench_dir = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="kms-sidecar-remote-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "store"
        procs: list[subprocess.Popen] = []
        try:
            server, url = start_server(home)
            procs.append(server)
            (tmp / "remote").mkdir()
            key_file = access_key_file(home, tmp / "remote", "bench-sidecar")
            wire_key_file = access_key_file(home, tmp, "bench-round-trip")
            with Kms(home, caller=BENCH_CALLER) as kms:
                kms.create_key(ENC_KEY)
                kms.create_key(DEC_KEY)
                envelope_body = seal_all(kms, PAYLOAD)
            up_port = free_port()
            upstream = subprocess.Popen([sys.executable, str(bench_dir / "sidecar_http.py"), "--serve", "upstream",
                                         "--ports", str(up_port)], stdin=subprocess.DEVNULL, env=clean_env())
            procs.append(upstream)
            wait_listening(upstream, up_port, "the upstream", tmp / "none")
            ports = {"embedded": free_port(), "remote": free_port()}
            kms_sections = {
                "embedded": f'[kms]\nhome = "{home}"\n',
                "remote": f'[kms]\nurl = "{url}"\naccess_key_file = "{key_file}"\nhome = "{tmp / "remote" / "logs"}"\n',
            }
            urls, configs = {}, {}
            for side, port in ports.items():  # both start at once, then both must listen
                configs[side] = tmp / "remote" / f"{side}.toml" if side == "remote" else tmp / f"{side}.toml"
                configs[side].write_text(kms_sections[side] + PROXY.format(port=port, upstream=up_port, enc=ENC_KEY,
                                                                           dec=DEC_KEY))
                procs.append(start_proxy(configs[side]))
                urls[side] = f"http://127.0.0.1:{port}"
            for (side, port), proc in zip(ports.items(), procs[-2:]):
                wait_listening(proc, port, f"kms proxy ({side})", configs[side].with_suffix(".log"))
            cases = [("encrypt 4 KiB", ENC_KEY, "/enc/x", PAYLOAD, "application/octet-stream"),
                     ("decrypt 4 KiB", DEC_KEY, "/dec/x", envelope_body, ENVELOPE_TYPE)]
            before = kms_calls(home)
            requests: Counter = Counter()
            print(f"kms serve at {url}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
            pids = {"embedded": procs[-2].pid, "remote": procs[-1].pid}
            print(f"{'sidecar route':<15}{'conns':>6} | {'embedded/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'CPU µs':>8} |"
                  f" {'remote/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'CPU µs':>8}{'+serve':>8} | {'ratio':>6}")
            for name, key, path, body, ctype in cases:
                for side in urls:  # warm-up, and a check that both answer
                    requests[side, key] += len(drive(urls[side], path, body, ctype, 1, 0.05))
                for n in conns:
                    lat: dict[str, list[float]] = {"embedded": [], "remote": []}
                    cpu: Counter = Counter()  # CPU seconds of the proxies and the server while driven
                    for _ in range(args.rounds):
                        for side in urls:
                            before_cpu = cpu_seconds(pids[side]), cpu_seconds(server.pid)
                            lat[side] += drive(urls[side], path, body, ctype, n, args.seconds)
                            cpu[side] += cpu_seconds(pids[side]) - before_cpu[0]
                            cpu[side, "serve"] += cpu_seconds(server.pid) - before_cpu[1]
                    total = args.seconds * args.rounds
                    e, r = summary(lat["embedded"], total), summary(lat["remote"], total)
                    ce, cr, cs = (cpu[k] / max(1, len(lat[side])) * 1e6 for k, side in
                                  (("embedded", "embedded"), ("remote", "remote"), (("remote", "serve"), "remote")))
                    print(f"{name:<15}{n:>6} | {e[0]:>10,.0f}{e[1]:>8.2f}{e[2]:>8.2f}{ce:>8,.0f} |"
                          f" {r[0]:>9,.0f}{r[1]:>8.2f}{r[2]:>8.2f}{cr:>8,.0f}{cs:>8,.0f} |"
                          f" {r[0] / e[0] if e[0] else 0:>6.3f}", flush=True)
                    requests.update({(side, key): len(v) for side, v in lat.items()})
            round_trip(url, wire_key_file, home, args.calls)
            for p in reversed(procs):  # every process flushes its audit on SIGTERM
                stop(p)
            after = kms_calls(home)
            report_calls(after - before, requests)
            print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
        finally:
            for p in reversed(procs):
                stop(p)


def seal_all(kms: Kms, body: bytes) -> bytes:
    """An envelope as the sidecar's encrypt rule makes it (sidecar.bodies, read only)."""
    from sidecar.bodies import seal_all as seal

    return seal(kms, DEC_KEY, body, FRAME_SIZE, {"content-type": "application/octet-stream"})


def report_calls(added: Counter, requests: Counter) -> None:
    """KMS calls per proxied request, by route, from the audit records the run added
    (the proxies' start-up calls included; the bench's own and the round-trip rows' not)."""
    print("\nKMS calls per proxied request (audit records added during the run ÷ requests)")
    for (side, key), n in sorted(requests.items()):
        calls = sorted((op, c) for (caller, k, op), c in added.items()
                       if k == key and ("bench-sidecar" in caller) == (side == "remote") and not caller.startswith(BENCH_CALLER)
                       and "bench-round-trip" not in caller)
        shown = ", ".join(f"{op} {c / max(1, n):.3f}" for op, c in calls) or "none"
        print(f"  {side:<8} {'encrypt' if key == ENC_KEY else 'decrypt'} route, {n:,} requests: {shown}")


if __name__ == "__main__":
    main()
