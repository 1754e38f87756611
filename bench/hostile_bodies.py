"""The proxy's peak RSS under hostile bodies, per route kind (part of bench/sidecar_http.py).

Each case runs against a fresh `kms-proxy` process (the real console script, default
limits: 16 MiB buffered bodies), so its VmHWM (/proc/PID/status, the most resident
memory it ever used) belongs to that case alone:

    fields   2 GiB chunked   a JSON body that never ends, to a fields route
    sign     2 GiB chunked   the same to a sign route (the whole body is signed)
    verify   2 GiB chunked   the same to a verify route (no valid signature needed)
    fields   gzip bomb       1 GiB of zeros, gzip-compressed (~1 MB), to a fields route
    decrypt  2 GiB stream    an envelope response of 2 GiB, streamed and decrypted

Printed, never asserted (tests/sidecar/test_hostile_bodies.py asserts the bound).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MiB, GiB = 1 << 20, 1 << 30
ROUTES = '''
[[proxy.route]]
match = { path = "/fields/*" }
request = { action = "encrypt", key = "bench/data", fields = ["user.ssn"] }

[[proxy.route]]
match = { path = "/sign/*" }
request = { action = "sign", key = "bench/mac" }

[[proxy.route]]
match = { path = "/verify/*" }
request = { action = "verify", key = "bench/mac" }

[[proxy.route]]
match = { path = "/envelope/*", methods = ["GET"] }
response = { action = "decrypt", key = "bench/data" }
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _upstream(kms) -> ThreadingHTTPServer:
    """GET /envelope/N: an envelope of N MiB made on the fly; anything else: drained, 200."""
    from kmscore.envelope import StreamEncryptor, new_envelope

    block = os.urandom(MiB)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            n = int(self.path.rsplit("/", 1)[1])
            header, cipher = new_envelope(kms, "bench/data", 65536, metadata={"content-type": "video/mp4"})
            enc = StreamEncryptor(cipher)
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.keyhold.envelope")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                data = header.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                for _ in range(n):
                    data = enc.update(block)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                data = enc.finalize()
                self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
            except OSError:
                pass

        def do_POST(self):
            try:
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        break
                    self.rfile.read(size + 2)
            except (OSError, ValueError):
                return
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _vmhwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _answer(sock: socket.socket) -> str:
    buf = b""
    while b"\r\n" not in buf:
        more = sock.recv(4096)
        if not more:
            return "connection closed, no answer"
        buf += more
    return buf.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 1)[1]


def chunked(address, path: str, total: int = 2 * GiB) -> tuple[str, int]:
    """Send up to `total` bytes of a chunked JSON body; stop at the proxy's answer."""
    block = b"a" * MiB
    with socket.create_connection(address) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        sent = 0
        sock.sendall(b"10\r\n" + b'{"user":{"ssn":"' + b"\r\n")
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
            except OSError:
                break
            sent += len(block)
        return _answer(sock), sent


def gzip_bomb(address, path: str) -> tuple[str, int]:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"\0" * MiB
    body = b"".join(c.compress(zeros) for _ in range(1024)) + c.flush()
    with socket.create_connection(address) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        return _answer(sock), len(body)


def streamed_decrypt(address, path: str) -> tuple[str, int]:
    import httpx

    got = 0
    with httpx.Client(timeout=300) as c, c.stream("GET", f"http://{address[0]}:{address[1]}{path}") as r:
        for chunk in r.iter_raw(MiB):
            got += len(chunk)
        return f"{r.status_code} {r.headers.get('content-type')}", got


CASES = [
    ("fields", "2 GiB chunked", lambda a: chunked(a, "/fields/x")),
    ("sign", "2 GiB chunked", lambda a: chunked(a, "/sign/x")),
    ("verify", "2 GiB chunked", lambda a: chunked(a, "/verify/x")),
    ("fields", "gzip bomb (1 GiB of zeros)", lambda a: gzip_bomb(a, "/fields/bomb")),
    ("decrypt", "2 GiB streamed envelope", lambda a: streamed_decrypt(a, "/envelope/2048")),
]


def run_hostile(home: Path) -> list[dict]:
    from kmscore import Kms

    home.mkdir(parents=True, exist_ok=True)
    kms = Kms(home, caller="bench")
    for alias, spec in (("bench/data", "AES_256"), ("bench/mac", "HMAC_256")):
        try:
            kms.describe_key(alias)
        except Exception:  # noqa: BLE001
            kms.create_key(alias, spec)
    up = _upstream(kms)
    proxy_bin = str(Path(sys.executable).parent / "kms-proxy")
    rows = []
    try:
        for kind, what, case in CASES:
            port = _free_port()
            cfg = home / "hostile.toml"
            cfg.write_text(f'[[proxy]]\nlisten = "127.0.0.1:{port}"\nupstream = "http://127.0.0.1:{up.server_port}"\n'
                           + ROUTES)
            proc = subprocess.Popen([proxy_bin, "--config", str(cfg)], env={**os.environ, "KMS_HOME": str(home)},
                                    stderr=subprocess.PIPE, text=True)
            try:
                while "listening on" not in (line := proc.stderr.readline()):
                    if not line:
                        raise RuntimeError("kms-proxy did not start")
                threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
                start = _vmhwm(proc.pid)
                t = time.monotonic()
                answer, nbytes = case(("127.0.0.1", port))
                took = time.monotonic() - t
                rows.append({"kind": kind, "body": what, "answer": answer, "bytes": nbytes, "seconds": took,
                             "idle_mib": start / MiB, "peak_mib": _vmhwm(proc.pid) / MiB})
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    finally:
        up.shutdown()
        kms.close()
    report(rows)
    return rows


def report(rows: list[dict]) -> None:
    print("\nproxy peak RSS under hostile bodies (each case in a fresh kms-proxy, default 16 MiB limit)\n")
    hdr = f"{'route':<8} | {'hostile body':<27} | {'answer':<34} | {'client bytes':>12} | {'idle MiB':>8} | {'peak MiB':>8}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['kind']:<8} | {r['body']:<27} | {r['answer'][:34]:<34} | {r['bytes'] / MiB:>8.1f} MiB |"
              f" {r['idle_mib']:>8.1f} | {r['peak_mib']:>8.1f}")
    print("client bytes: what the client sent before the answer (or, for decrypt, received).")
