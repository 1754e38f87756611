"""A real HTTP/1.1 upstream on 127.0.0.1 that records every request it receives.

    POST/PUT /store/NAME   keep the body (on disk: multi-GiB bodies are fine) and its type
    GET      /store/NAME   send it back (chunked), with the stored Content-Type
    GET      /reply        send `Upstream.reply` (body, content type, extra headers)
    anything else          echo the body back with the request's Content-Type
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

KEEP = 1 << 20  # bodies up to this size are kept in the record


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None  # None when larger than KEEP
    length: int
    sha256: str


@dataclass
class Upstream:
    port: int
    dir: Path
    received: list[Received] = field(default_factory=list)
    reply: tuple[bytes, str, dict] = (b'{"ok":true}', "application/json", {})

    cert: Path | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.cert else 'http'}://127.0.0.1:{self.port}"

    def clear(self) -> None:
        self.received.clear()

    def last(self) -> Received:
        return self.received[-1]


def _handler(up: Upstream):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):  # quiet
            pass

        def _chunks(self):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return
                    left = size
                    while left:
                        data = self.rfile.read(min(left, 1 << 20))
                        if not data:
                            raise ConnectionError("cut off")
                        left -= len(data)
                        yield data
                    self.rfile.readline()
            else:
                left = int(self.headers.get("Content-Length", 0) or 0)
                while left:
                    data = self.rfile.read(min(left, 1 << 20))
                    if not data:
                        raise ConnectionError("cut off")
                    left -= len(data)
                    yield data

        def _receive(self, sink=None) -> Received:
            h, n, kept = hashlib.sha256(), 0, bytearray()
            for data in self._chunks():
                h.update(data)
                n += len(data)
                if sink is not None:
                    sink.write(data)
                if n <= KEEP:
                    kept += data
            rec = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                           bytes(kept) if n <= KEEP else None, n, h.hexdigest())
            up.received.append(rec)
            return rec

        def _send(self, status, body: bytes, ctype: str | None, extra=None):
            self.send_response(status)
            if ctype:
                self.send_header("Content-Type", ctype)
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _any(self):
            name = self.path.split("?")[0]
            if name.startswith("/store/") and self.command in ("POST", "PUT"):
                target = up.dir / name[len("/store/"):].replace("/", "_")
                with open(target, "wb") as f:
                    rec = self._receive(f)
                (target.with_suffix(".type")).write_text(rec.headers.get("content-type", ""))
                meta = {k: v for k, v in rec.headers.items() if k.startswith("x-keyhold-")}
                (target.with_suffix(".meta")).write_text(repr(meta))
                return self._send(201, b'{"stored":true}', "application/json")
            rec = self._receive()
            if name.startswith("/store/"):
                target = up.dir / name[len("/store/"):].replace("/", "_")
                if not target.exists():
                    return self._send(404, b"{}", "application/json")
                self.send_response(200)
                ctype = target.with_suffix(".type").read_text()
                if ctype:
                    self.send_header("Content-Type", ctype)
                for k, v in eval(target.with_suffix(".meta").read_text()).items():  # our own file
                    self.send_header(k, v)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                with open(target, "rb") as f:
                    while data := f.read(1 << 20):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.write(b"0\r\n\r\n")
                return
            if name.startswith("/slow"):
                time.sleep(1.0)  # lets a test send SIGTERM while this request is in flight
            if name.startswith("/reply"):
                body, ctype, extra = up.reply
                return self._send(200, body, ctype, extra)
            echoed = {k: v for k, v in rec.headers.items() if k.startswith("x-keyhold-")}
            return self._send(200, rec.body or b"", rec.headers.get("content-type"), echoed)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

    return Handler


def self_signed(dir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 / localhost and its key, as PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyhold test upstream")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_pem, key_pem = dir / "upstream-cert.pem", dir / "upstream-key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert_pem, key_pem


def start_upstream(tls: bool = False) -> tuple[Upstream, ThreadingHTTPServer]:
    d = Path(tempfile.mkdtemp(prefix="keyhold-upstream-"))
    up = Upstream(0, d)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(up))
    if tls:
        import ssl

        cert, key = self_signed(d)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        up.cert = cert
    server.daemon_threads = True
    up.port = server.server_port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return up, server


def stop_upstream(up: Upstream, server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()
    shutil.rmtree(up.dir, ignore_errors=True)
