"""Sidecar HTTP benchmark: 4 KiB JSON POSTs through each setup, side by side in one run.

    .venv/bin/python bench/sidecar_http.py [--duration 5] [--connections 16]

Load generator: `wrk` (Debian package; C, event-driven, its own process), with a Lua
script for the POST body. Every setup gets the same upstream (a minimal asyncio HTTP/1.1
server in its own process) and runs in its own process:

    direct        wrk -> upstream
    mitmdump      wrk -> mitmdump with no script (DumpMaster, its default addons), reverse mode
    mitmproxy     wrk -> lean mitmproxy Master, reverse mode, no addon of ours -> upstream
    encrypt       wrk -> sidecar, whole-body envelope encryption of the request -> upstream
    fields        wrk -> sidecar, 2 JSON fields of the request encrypted as tokens -> upstream
    sign          wrk -> sidecar, RFC 9421 HMAC-SHA256 signature over Content-Digest -> upstream
    encrypt-wN    the same as encrypt, in a pool of N worker processes (`workers = N`;
    fields-wN     --workers N, default 2), one listening address

Prints requests/s and p50/p99 latency at N connections and at 1 connection, and the
ratios to plain mitmproxy. Timings are printed, never asserted.

    --compare-with DIR   also run the sidecar setups from another checkout (e.g. main,
                         `git archive main | tar -x -C DIR`) in the same run, named
                         `encrypt@DIR`, `encrypt-w2@DIR` etc., so old and new are
                         measured side by side
    --only SETUP,...     run only these setups (e.g. `encrypt,encrypt-w2,fields,fields-w2`;
                         `@DIR` names too), so that a few can get more rounds and longer
                         runs; the default runs them all
    --no-single          skip the runs at 1 connection
    --hostile / --no-hostile
                         after the throughput runs (default on): the proxy's peak RSS
                         (VmHWM) per route kind under hostile bodies, each in a fresh
                         `kms-proxy`-like process: a 2 GiB chunked body to a fields, sign
                         and verify route, a gzip bomb (1 GiB of zeros, ~1 MB) to a fields
                         route, and a 2 GiB streamed decrypt of an envelope response
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BODY = {
    "user": {"name": "Ada Lovelace", "ssn": "078-05-1120", "email": "ada@example.com"},
    "cards": [{"number": "4111111111111111", "exp": "12/30"}, {"number": "5500005555555559", "exp": "01/29"}],
}
BODY["pad"] = "x" * (4096 - len(json.dumps(BODY)) - len(', "pad": ""'))
assert len(json.dumps(BODY)) == 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the upstream ----------------------------------------------------------------------
async def _serve_upstream(port: int) -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if m:
                    await reader.readexactly(int(m.group(1)))
                elif re.search(rb"(?i)\r\ntransfer-encoding:\s*chunked", head):
                    while True:
                        size = int((await reader.readline()).split(b";")[0], 16)
                        await reader.readexactly(size + 2)
                        if size == 0:
                            break
                writer.write(reply)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# -- the proxies -----------------------------------------------------------------------
def _serve_dump(upstream: str, port: int) -> None:
    """`mitmdump` with no script, in-process: a DumpMaster with its ~34 default addons."""
    from mitmproxy import options
    from mitmproxy.tools.dump import DumpMaster

    async def run():
        opts = options.Options(mode=[f"reverse:{upstream}@127.0.0.1:{port}"])
        m = DumpMaster(opts, with_termlog=False, with_dumper=False)
        opts.update(connection_strategy="lazy")
        asyncio.get_running_loop().call_later(0.5, lambda: print("ready", flush=True))
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, m.shutdown)
        await m.run()

    asyncio.run(run())


def _serve_proxy(kind: str, home: str, upstream: str, ports: dict[str, int], workers: int = 1) -> None:
    from kmscore import Kms
    from sidecar.config import ProxyEntry
    from sidecar.engine import Engine

    kms = Kms(home, caller="bench")
    for alias, spec in (("bench/data", "AES_256"), ("bench/mac", "HMAC_256")):
        try:
            kms.describe_key(alias)
        except Exception:  # noqa: BLE001
            kms.create_key(alias, spec)
    actions = {
        "mitmproxy": None,
        "encrypt": {"action": "encrypt", "key": "bench/data"},
        "fields": {"action": "encrypt", "key": "bench/data", "fields": ["user.ssn", "cards[*].number"]},
        "sign": {"action": "sign", "key": "bench/mac"},
    }
    entries = [
        ProxyEntry.model_validate({
            "name": name, "listen": f"127.0.0.1:{ports[name]}", "upstream": upstream,
            "workers": workers if kind == "pool" else 1,
            "route": [{"request": actions[name.split("-w")[0]]}] if actions[name.split("-w")[0]] else [],
        })
        for name in ports
    ]
    if kind == "pool":
        from sidecar.pool import WorkerPool

        engine = WorkerPool(entries, kms)
    else:
        engine = Engine(entries, kms, plain=(kind == "plain"))
    engine.start()
    print("ready", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.2)
    engine.stop(drain=1)


# -- which setups -----------------------------------------------------------------------
def setups(up_port: int, workers: int, other: str | None, only: list[str] | None) -> dict[str, dict[str, int]]:
    """{process kind: {setup name: port}}: each kind is one serving process (`--serve
    KIND`), `-other` kinds run the other checkout's code; `only` keeps the named setups
    (ValueError for a name that is not one)."""
    kinds = {"direct": ["direct"], "mitmdump": ["mitmdump"], "plain": ["mitmproxy"],
             "sidecar": ["encrypt", "fields", "sign"]}
    if workers > 1:
        kinds["pool"] = [f"encrypt-w{workers}", f"fields-w{workers}"]
    if other:
        kinds["sidecar-other"] = [f"{n}@{other}" for n in kinds["sidecar"]]
        if "pool" in kinds:
            kinds["pool-other"] = [f"{n}@{other}" for n in kinds["pool"]]
    known = {n for names in kinds.values() for n in names}
    unknown = sorted(set(only or ()) - known)
    if unknown:
        raise ValueError(f"no setup named {', '.join(unknown)}; setups: {', '.join(sorted(known))}")
    out = {}
    for kind, names in kinds.items():
        kept = [n for n in names if only is None or n in only]
        if kept:
            out[kind] = {n: up_port if kind == "direct" else free_port() for n in kept}
    return out


# -- wrk -------------------------------------------------------------------------------
def run_wrk(url: str, connections: int, duration: float, script: str) -> dict:
    threads = min(2, connections)
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s", "--latency", "-s", script, url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    lat = {p: _ms(v) for p, v in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)", out, re.M)}
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "requests": total, "p50": lat.get("50"), "p99": lat.get("99"), "non2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(0) if errors else ""}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads) and of its live children (a pool's
    workers), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        total += sum(cpu_seconds(int(c)) for c in children)
    return total


def _ms(v: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", v)
    n, unit = float(m.group(1)), m.group(2)
    return n / 1000 if unit == "us" else n * 1000 if unit == "s" else n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compare-with", metavar="DIR", help="another checkout whose sidecar runs alongside")
    ap.add_argument("--hostile", action=argparse.BooleanOptionalAction, default=True,
                    help="measure peak RSS under hostile bodies (default: on)")
    ap.add_argument("--hostile-only", action="store_true", help="skip the throughput runs")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the pool setups (0: none)")
    ap.add_argument("--only", metavar="SETUP,...", help="run only these setups (default: all)")
    ap.add_argument("--single", action=argparse.BooleanOptionalAction, default=True,
                    help="also run at 1 connection (default: on)")
    ap.add_argument("--serve", choices=["upstream", "mitmdump", "plain", "sidecar", "pool", "hostile"], help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    ap.add_argument("--upstream", help=argparse.SUPPRESS)
    ap.add_argument("--ports", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve == "upstream":
        asyncio.run(_serve_upstream(int(args.ports)))
        return 0
    if args.serve == "mitmdump":
        _serve_dump(args.upstream, json.loads(args.ports)["mitmdump"])
        return 0
    if args.serve == "hostile":
        from hostile_bodies import serve_hostile

        serve_hostile(args.home, args.upstream, json.loads(args.ports))
        return 0
    if args.serve:
        _serve_proxy(args.serve, args.home, args.upstream, json.loads(args.ports), args.workers)
        return 0
    if args.hostile_only:
        from hostile_bodies import run_hostile

        tmp = Path(tempfile.mkdtemp(prefix="keyhold-bench-"))
        try:
            run_hostile(tmp / "kms-hostile")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return 0
    if not shutil.which("wrk"):
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="keyhold-bench-"))
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(json.dumps(BODY))}\n"
    )
    up_port = free_port()
    other = Path(args.compare_with).resolve() if args.compare_with else None
    try:
        ports = setups(up_port, args.workers, other.name if other else None, args.only.split(",") if args.only else None)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    me = [sys.executable, os.path.abspath(__file__)]
    procs = [subprocess.Popen([*me, "--serve", "upstream", "--ports", str(up_port)])]
    upstream = f"http://127.0.0.1:{up_port}"
    pids = {"direct": procs[0].pid}
    try:
        for kind in ports:
            if kind == "direct":
                continue
            cmd, env = [*me, "--serve", kind], None
            if kind.endswith("-other"):  # the other checkout's own code, its own KMS home
                cmd = [sys.executable, str(other / "bench" / "sidecar_http.py"), "--serve", kind.split("-")[0]]
                env = {**os.environ, "PYTHONPATH": str(other)}
            port_map = {n.split("@")[0]: p for n, p in ports[kind].items()}
            p = subprocess.Popen([*cmd, "--home", str(tmp / f"kms-{kind}"), "--upstream", upstream,
                                  "--ports", json.dumps(port_map),
                                  *(["--workers", str(args.workers)] if kind.startswith("pool") else [])],
                                 stdout=subprocess.PIPE, text=True, env=env)
            procs.append(p)
            assert p.stdout.readline().strip() == "ready", f"{kind} proxy did not start"
            pids.update({n: p.pid for n in ports[kind]})
        targets = {name: port for by_name in ports.values() for name, port in by_name.items()}
        runs: dict[str, dict[int, list[dict]]] = {}
        for name, port in targets.items():  # warm-up (and a check that every setup answers)
            run_wrk(f"http://127.0.0.1:{port}/api/users", 4, 1, str(script))
        for _ in range(args.rounds):  # interleaved rounds: background load hits every setup alike
            for conns in (args.connections, 1) if args.single else (args.connections,):
                for name, port in targets.items():
                    url = f"http://127.0.0.1:{port}/api/users"
                    cpu = cpu_seconds(pids[name])
                    r = run_wrk(url, conns, args.duration, str(script))
                    r["cpu_us"] = (cpu_seconds(pids[name]) - cpu) / max(1, r["requests"]) * 1e6
                    runs.setdefault(name, {}).setdefault(conns, []).append(r)
        results = {n: {c: _median(rs) for c, rs in by_conns.items()} for n, by_conns in runs.items()}
        report(results, args.connections, args.duration, args.rounds)
        report_pools(runs, args.connections, args.workers)
        for p in reversed(procs):  # the hostile part runs alone, in processes of its own
            p.send_signal(signal.SIGTERM)
        if args.hostile:
            from hostile_bodies import run_hostile

            run_hostile(tmp / "kms-hostile")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _median(rs: list[dict]) -> dict:
    def med(k):
        vals = sorted(r[k] for r in rs)
        return vals[len(vals) // 2]
    return {"rps": med("rps"), "p50": med("p50"), "p99": med("p99"), "cpu_us": med("cpu_us"), "non2xx": sum(r["non2xx"] for r in rs),
            "socket_errors": "; ".join(r["socket_errors"] for r in rs if r["socket_errors"])}


def report(results: dict, conns: int, duration: float, rounds: int) -> None:
    print(f"\n4 KiB JSON POST, wrk, median of {rounds} interleaved {duration:g} s runs, "
          f"{os.cpu_count()} CPUs shared by all processes (wrk, upstream, proxy)\n")
    base = results.get("mitmproxy")  # the anchor of the ratios (absent with --only)

    def ratio(a: float, b: float) -> str:
        return f"{a / b:>6.2f}" if b else f"{'-':>6}"

    hdr = (f"{'setup':<14} | {'rps @' + str(conns):>9} {'p50 ms':>7} {'p99 ms':>7} {'x mitm':>6} | {'rps @1':>7} {'p50 ms':>7}"
           f" {'p99 ms':>7} {'+p50 ms':>8} | {'CPU us/req':>10} {'x mitm':>6} | errors")
    print(hdr)
    print("-" * len(hdr))
    for name, r in results.items():
        a, b = r[conns], r.get(1)
        line = f"{name:<14} | {a['rps']:>9.0f} {a['p50']:>7.2f} {a['p99']:>7.2f} "
        line += ratio(a["rps"], base[conns]["rps"]) if base else f"{'-':>6}"
        if b is not None:
            extra = f"{b['p50'] - base[1]['p50']:>+8.3f}" if base else f"{'-':>8}"
            line += f" | {b['rps']:>7.0f} {b['p50']:>7.2f} {b['p99']:>7.2f} {extra} | "
        else:
            line += f" | {'':>7} {'':>7} {'':>7} {'':>8} | "
        line += f"{a['cpu_us']:>10.0f} " + (ratio(base[conns]["cpu_us"], a["cpu_us"]) if base else f"{'-':>6}")
        errs = a["non2xx"] + (b["non2xx"] if b else 0)
        print(f"{line} | {errs or ''} {a['socket_errors']}")
    print("\nx mitm: throughput relative to the same lean mitmproxy Master with no addon;"
          " +p50: added median latency at one connection relative to it.")
    print(f"CPU us/req: CPU time of the serving process per request at {conns} connections (utime+stime, all"
          " threads); x mitm = its inverse ratio, an efficiency measure that background load does not skew.")
    if "mitmdump" not in results:
        return
    dump, dump_cpu = results["mitmdump"][conns]["rps"], results["mitmdump"][conns]["cpu_us"]
    print("relative to mitmdump (no script), throughput: " + ", ".join(
        f"{n} {r[conns]['rps'] / dump:.2f}" for n, r in results.items() if n not in ("direct", "mitmdump")))
    print("relative to mitmdump (no script), CPU per request: " + ", ".join(
        f"{n} {dump_cpu / r[conns]['cpu_us']:.2f}" for n, r in results.items() if n not in ("direct", "mitmdump")))


def report_pools(runs: dict, conns: int, workers: int) -> None:
    """N workers / 1 worker, round by round (the two ran minutes apart at most, under the
    same background load), and the median of those ratios."""
    suffix = f"-w{workers}"
    lines = []
    for name, by_conns in runs.items():
        setup, at, tag = name.partition("@")
        if not setup.endswith(suffix) or setup[: -len(suffix)] + at + tag not in runs:
            continue
        one = runs[setup[: -len(suffix)] + at + tag][conns]
        pool = by_conns[conns]
        ratios = sorted(p["rps"] / o["rps"] for p, o in zip(pool, one))
        cpu = sorted(p["cpu_us"] / o["cpu_us"] for p, o in zip(pool, one))
        lines.append(f"{name:<14} {ratios[len(ratios) // 2]:>6.2f}x  rounds: {' '.join(f'{r:.2f}' for r in ratios)}"
                     f"   CPU/req vs 1 worker: {cpu[len(cpu) // 2]:.3f} (median)")
    if lines:
        print(f"\n{workers} workers / 1 worker, throughput at {conns} connections, per round (sorted), median:")
        print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
