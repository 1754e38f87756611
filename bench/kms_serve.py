"""kms serve over the AWS API beside the embedded facade: requests per second and p50/p99
latency of Encrypt, Decrypt and GenerateDataKey at 1 and 16 connections, the ratio
(AWS API ÷ embedded) being the cost of the network, SigV4, policy and JSON.

    .venv/bin/python bench/kms_serve.py [--seconds 2.0] [--rounds 2] [--connections 1,16] [--boto3]

One run starts a real `kms serve` (plain HTTP on 127.0.0.1) on a fresh key store and
opens the same store in-process as the embedded facade. Each cell alternates embedded
and API for `--rounds` slices of `--seconds` (the machine may be shared; interleaving
keeps both sides under the same load). The embedded side runs `connections` threads
calling `Kms` directly; the API side runs `connections` threads, each with its own
keep-alive HTTP connection (httpx), signing every request with kmsserve's SigV4 signer
(the one checked against botocore's), i.e. what a lean client or kmscore.remote pays.
`--boto3` adds boto3 itself at 1 connection (its own per-call cost included). The
"dispatch" rows run the server's sans-IO path in this process (kmsserve.wire.dispatch on
pre-signed requests: SigV4 check, access key, policy, the AWS table, the facade call,
JSON) without HTTP, to split the API's cost into the adapter's share and the HTTP stack's.

Every request signs one extra header unique to it (`x-keyhold-bench-nonce`): SigV4 has
no nonce, and the server's replay memory refuses a byte-identical request signed in the
same second (see tests/serve/test_aws_boto3.py::test_identical_calls_in_one_second_are_not_replays).

A sidecar on the remote facade beside a sidecar on the embedded facade (`kms proxy` with
`[kms] url` pointing at a `kms serve`, as issue 12 asks) is bench/sidecar_remote.py; it
uses this file's server start and `measure`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from kmscore import Kms
from kmsserve.auth import sigv4

KMS_BIN = str(Path(sys.executable).parent / "kms")
PAYLOAD = os.urandom(4096)
ALIAS = "bench/aes"
REGION = "eu-west-1"


# -- the server -------------------------------------------------------------------------------
def kms_cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KMS_", "AWS_"))}
    return subprocess.run([KMS_BIN, "--home", str(home), "--create-home", *args], capture_output=True,
                          env=env, stdin=subprocess.DEVNULL, timeout=120)


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    kms_cli(home, "init")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KMS_", "AWS_"))}
    proc = subprocess.Popen([KMS_BIN, "--home", str(home), "serve", "--listen", f"127.0.0.1:{port}", "--plain-http"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"kms serve exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("kms serve did not listen within 60 s")


def access_key(home: Path, tmp: Path) -> tuple[str, str]:
    policy = tmp / "bench-policy.toml"
    policy.write_text('[[allow]]\noperations = ["encrypt_data", "decrypt_data", "create_datakey"]\nkeys = ["bench/*"]\n')
    out = kms_cli(home, "access-key", "create", "--name", "bench", "--policy", str(policy), "--json")
    if out.returncode:
        raise SystemExit(out.stderr.decode())
    data = json.loads(out.stdout)
    return data["access_key_id"], data["secret"]


# -- the clients ----------------------------------------------------------------------------------
class AwsClient:
    """A lean AWS KMS JSON client: one keep-alive connection, kmsserve's SigV4 signer."""

    def __init__(self, url: str, key: tuple[str, str]) -> None:
        self.url, (self.key_id, self.secret) = url, key
        self.host = url.removeprefix("http://")
        self.http = httpx.Client(base_url=url, limits=httpx.Limits(max_connections=1))

    def call(self, operation: str, fields: dict) -> dict:
        body = json.dumps(fields).encode()
        headers = {"Host": self.host, "Content-Type": "application/x-amz-json-1.1",
                   "X-Amz-Target": f"TrentService.{operation}", "X-Keyhold-Bench-Nonce": uuid.uuid4().hex}
        headers.update(sigv4.sign("POST", "/", "", headers, body, access_key_id=self.key_id, secret=self.secret,
                                  region=REGION, service="kms"))
        out = self.http.post("/", content=body, headers=headers)
        if out.status_code != 200:
            raise RuntimeError(f"{operation}: {out.status_code} {out.text}")
        return out.json()

    def close(self) -> None:
        self.http.close()


def operations(kms: Kms, blob: bytes) -> list[tuple[str, Callable[[], object], Callable[[AwsClient], object]]]:
    b64_payload, b64_blob = base64.b64encode(PAYLOAD).decode(), base64.b64encode(blob).decode()
    return [
        ("Encrypt 4 KiB", lambda: kms.encrypt_data(ALIAS, PAYLOAD),
         lambda c: c.call("Encrypt", {"KeyId": "alias/" + ALIAS, "Plaintext": b64_payload})),
        ("Decrypt 4 KiB", lambda: kms.decrypt_data(blob),
         lambda c: c.call("Decrypt", {"CiphertextBlob": b64_blob})),
        ("GenerateDataKey", lambda: kms.create_datakey(ALIAS),
         lambda c: c.call("GenerateDataKey", {"KeyId": "alias/" + ALIAS, "KeySpec": "AES_256"})),
    ]


# -- measuring --------------------------------------------------------------------------------------
def measure(threads: int, seconds: float, make_worker: Callable[[], Callable[[], object]]) -> list[float]:
    """Run `threads` workers for `seconds`; every call's latency in seconds."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    stop = 0.0
    failures: list[BaseException] = []

    def set_stop() -> None:  # once every worker has its client: making 16 is not measured time
        nonlocal stop
        stop = time.perf_counter() + seconds

    start = threading.Barrier(threads + 1, action=set_stop)

    def run(i: int) -> None:
        mine = latencies[i]
        try:
            work = make_worker()
        except BaseException as e:  # no worker waits for one that will never come
            failures.append(e)
            start.abort()
            return
        try:
            start.wait()
            while True:
                t0 = time.perf_counter()
                if t0 >= stop:
                    return
                work()
                mine.append(time.perf_counter() - t0)
        except BaseException as e:  # reported after the run
            failures.append(e)

    pool = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass  # a worker failed to start: reported below
    for t in pool:
        t.join()
    if failures:
        first = next((e for e in failures if not isinstance(e, threading.BrokenBarrierError)), failures[0])
        raise SystemExit(f"a worker failed: {first}")
    return [x for mine in latencies for x in mine]


def summary(latencies: list[float], seconds: float) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms)."""
    if not latencies:
        return 0.0, 0.0, 0.0
    qs = statistics.quantiles(latencies, n=100, method="inclusive")
    return len(latencies) / seconds, qs[49] * 1e3, qs[98] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", default="1,16")
    ap.add_argument("--boto3", action="store_true", help="add boto3 itself at 1 connection")
    args = ap.parse_args()
    conns = [int(c) for c in args.connections.split(",")]
    with tempfile.TemporaryDirectory(prefix="kms-serve-bench-") as tmp:
        home = Path(tmp) / "home"
        proc, url = start_server(home)
        try:
            key = access_key(home, Path(tmp))
            with Kms(home) as kms:
                kms.create_key(ALIAS)
                blob = kms.encrypt_data(ALIAS, PAYLOAD)
                print(f"kms serve at {url}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
                print(f"{'operation':<18}{'conns':>6} | {'embedded/s':>11}{'p50 ms':>8}{'p99 ms':>8} |"
                      f" {'AWS API/s':>10}{'p50 ms':>8}{'p99 ms':>8} | {'ratio':>6}")
                for name, embedded, remote in operations(kms, blob):
                    for n in conns:
                        local, api = [], []
                        for _ in range(args.rounds):
                            local += measure(n, args.seconds, lambda: embedded)
                            clients: list[AwsClient] = []

                            def worker() -> Callable[[], object]:
                                c = AwsClient(url, key)
                                clients.append(c)
                                return lambda: remote(c)

                            api += measure(n, args.seconds, worker)
                            for c in clients:
                                c.close()
                        total = args.seconds * args.rounds
                        e, a = summary(local, total), summary(api, total)
                        print(f"{name:<18}{n:>6} | {e[0]:>11,.0f}{e[1]:>8.3f}{e[2]:>8.3f} |"
                              f" {a[0]:>10,.0f}{a[1]:>8.2f}{a[2]:>8.2f} | {a[0] / e[0]:>6.3f}", flush=True)
                dispatch_rows(kms, key, blob, args.seconds * args.rounds)
                if args.boto3:
                    boto3_row(url, key, args.seconds * args.rounds)
                print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def dispatch_rows(kms: Kms, key: tuple[str, str], blob: bytes, seconds: float) -> None:
    from kmsserve.apis.aws import API
    from kmsserve.app import ServerContext
    from kmsserve.auth.accesskeys import AccessKeys
    from kmsserve.wire import WireRequest, dispatch

    ctx = ServerContext(kms, AccessKeys(kms))
    b64_payload, b64_blob = base64.b64encode(PAYLOAD).decode(), base64.b64encode(blob).decode()

    def signed(operation: str, fields: dict) -> WireRequest:
        body = json.dumps(fields).encode()
        headers = {"host": "127.0.0.1", "content-type": "application/x-amz-json-1.1",
                   "x-amz-target": f"TrentService.{operation}", "x-keyhold-bench-nonce": uuid.uuid4().hex}
        headers.update({k.lower(): v for k, v in sigv4.sign("POST", "/", "", headers, body, access_key_id=key[0],
                                                            secret=key[1], region=REGION, service="kms").items()})
        return WireRequest("POST", "/", "", tuple(headers.items()), body)

    print(f"\n{'sans-IO dispatch':<18}{'conns':>6} | {'requests/s':>11}{'ms each':>8} | {'CPU µs':>8}")
    for name, operation, fields in [
        ("Encrypt 4 KiB", "Encrypt", {"KeyId": "alias/" + ALIAS, "Plaintext": b64_payload}),
        ("Decrypt 4 KiB", "Decrypt", {"CiphertextBlob": b64_blob}),
        ("GenerateDataKey", "GenerateDataKey", {"KeyId": "alias/" + ALIAS, "KeySpec": "AES_256"}),
    ]:
        n = 500
        requests = [signed(operation, fields) for _ in range(n)]
        t0, c0 = time.perf_counter(), time.thread_time()
        for r in requests:
            if dispatch(API, r, ctx).status != 200:
                raise SystemExit(f"dispatch of {operation} failed")
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        print(f"{name:<18}{1:>6} | {n / wall:>11,.0f}{wall / n * 1e3:>8.3f} | {cpu / n * 1e6:>8,.0f}", flush=True)


def boto3_row(url: str, key: tuple[str, str], seconds: float) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client("kms", endpoint_url=url, region_name=REGION, aws_access_key_id=key[0],
                          aws_secret_access_key=key[1], config=Config(retries={"max_attempts": 1}))
    client.meta.events.register("before-sign.kms", lambda request, **kw: request.headers.__setitem__(
        "x-keyhold-bench-nonce", uuid.uuid4().hex))
    print(f"\n{'boto3 (AWS API)':<18}{'conns':>6} | {'requests/s':>11}{'p50 ms':>8}{'p99 ms':>8}")
    for name, call in [
        ("Encrypt 4 KiB", lambda: client.encrypt(KeyId="alias/" + ALIAS, Plaintext=PAYLOAD)),
        ("GenerateDataKey", lambda: client.generate_data_key(KeyId="alias/" + ALIAS, KeySpec="AES_256")),
    ]:
        rate, p50, p99 = summary(measure(1, seconds, lambda: call), seconds)
        print(f"{name:<18}{1:>6} | {rate:>11,.0f}{p50:>8.2f}{p99:>8.2f}")


if __name__ == "__main__":
    main()
