"""The server itself (issue 12 item 1, and the limits): TLS with a given or a self-signed
certificate and its printed fingerprint, plain HTTP only on loopback, one error line (no
traceback) for a taken port or a bad certificate, SIGTERM/SIGINT stop cleanly, 16
concurrent clients, and clients that send too much, too slowly or garbage (raw sockets)
neither crash the server nor hold it."""

from __future__ import annotations

import concurrent.futures
import hashlib
import signal
import socket
import ssl
import subprocess
import time

import httpx
import pytest

from tests.serve.conftest import KMS_BIN, clean_env, free_port, kms, start_server
from tests.serve.servecore import signed_request, start_server_with, write_certificate


def run_kms(home, *args, timeout=60):
    return subprocess.run([KMS_BIN, "--home", str(home), *args], capture_output=True, env=clean_env(),
                          timeout=timeout, stdin=subprocess.DEVNULL)


def served_fingerprint(port: int) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def test_self_signed_certificate_made_once_pinned_and_verifiable(tmp_path):
    home = tmp_path / "home"
    assert kms(home, "init").returncode == 0
    printed = run_kms(home, "serve", "--print-fingerprint")
    assert printed.returncode == 0, printed.stderr
    fingerprint = printed.stdout.decode().strip()
    cert, key = home / "serve" / "tls-cert.pem", home / "serve" / "tls-key.pem"
    assert key.stat().st_mode & 0o077 == 0
    port = free_port()
    with start_server_with(home, "--listen", f"127.0.0.1:{port}") as s:
        assert fingerprint in s.log.read_text()
        assert served_fingerprint(port) == fingerprint
        # the certificate names 127.0.0.1 and localhost: a client that trusts it verifies it fully
        import boto3
        from botocore.config import Config

        key_ = s.access_key(name="tls")
        for host in ("127.0.0.1", "localhost"):
            c = boto3.client("kms", endpoint_url=f"https://{host}:{port}", region_name="eu-west-1", verify=str(cert),
                             aws_access_key_id=key_.access_key_id, aws_secret_access_key=key_.secret,
                             config=Config(retries={"max_attempts": 1}))
            assert len(c.generate_random(NumberOfBytes=16)["Plaintext"]) == 16
        # an unpinned, unverified client is refused by its own TLS check
        with pytest.raises(httpx.ConnectError):
            httpx.post(f"https://127.0.0.1:{port}/", content=b"{}")
    # kept across restarts: the pinned fingerprint stays valid
    assert run_kms(home, "serve", "--print-fingerprint").stdout.decode().strip() == fingerprint


def _own_certificate(folder):
    """An operator's certificate for localhost: (cert file, key file, fingerprint as served)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert_file, key_file, cert = write_certificate(folder, x509.DNSName("localhost"))
    return cert_file, key_file, ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def test_a_given_certificate_is_served(tmp_path):
    cert, key, fingerprint = _own_certificate(tmp_path)
    home = tmp_path / "home"
    port = free_port()
    with start_server_with(home, "--listen", f"127.0.0.1:{port}", "--cert", str(cert), "--key", str(key)) as s:
        assert served_fingerprint(port) == fingerprint and fingerprint in s.log.read_text()
        assert not (home / "serve").exists()  # no self-signed one made
    printed = run_kms(home, "serve", "--cert", str(cert), "--key", str(key), "--print-fingerprint")
    assert printed.stdout.decode().strip() == fingerprint


@pytest.mark.parametrize("case", ["port in use", "bad cert", "key of another cert", "cert without key",
                                  "plain http off loopback", "missing cert", "bad listen"])
def test_start_failures_are_one_clear_line(tmp_path, case):
    home = tmp_path / "home"
    assert kms(home, "init").returncode == 0
    (tmp_path / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    cert, key, _ = _own_certificate(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key, _ = _own_certificate(tmp_path / "other")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    args, expected = {
        "port in use": (["--listen", f"127.0.0.1:{port}", "--plain-http"], f"cannot listen on 127.0.0.1:{port}: the address is already in use"),
        "bad cert": (["--cert", str(tmp_path / "junk.pem"), "--key", str(key)], "cannot use the TLS certificate"),
        "key of another cert": (["--cert", str(cert), "--key", str(other_key)], "cannot use the TLS certificate"),
        "cert without key": (["--cert", str(cert)], "give both --cert and --key"),
        "plain http off loopback": (["--listen", "0.0.0.0:1", "--plain-http"], "plain HTTP is only allowed on loopback"),
        "missing cert": (["--cert", str(tmp_path / "nope.pem"), "--key", str(key)], "cannot read the TLS certificate"),
        "bad listen": (["--listen", "localhost"], "expected HOST:PORT"),
    }[case]
    try:
        out = run_kms(home, "serve", *args)
    finally:
        busy.close()
    err = out.stderr.decode()
    assert out.returncode == 1, err
    assert err.startswith("kms: error: ") and expected in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "PRIVATE KEY" not in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_it_cleanly(tmp_path, sig):
    with start_server(tmp_path / "home") as s:
        client = s.boto3(s.access_key())
        assert client.generate_random(NumberOfBytes=4)
        s.proc.send_signal(sig)
        assert s.proc.wait(timeout=30) == 0
        assert "kms serve: stopping" in s.log.read_text() and "Traceback" not in s.log.read_text()
        port = int(s.url.rpartition(":")[2])
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("limits") / "home", "--request-timeout", "1") as s:
        yield s


def test_16_concurrent_clients(srv):
    keys = [srv.access_key(name="many")]

    def client_run(i: int) -> int:
        client = srv.boto3(keys[0])  # each client its own connection pool
        return sum(len(client.generate_random(NumberOfBytes=8 + i)["Plaintext"]) for _ in range(10))

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert list(pool.map(client_run, range(16))) == [10 * (8 + i) for i in range(16)]


def port_of(srv) -> int:
    return int(srv.url.rpartition(":")[2])


def raw(srv, data: bytes, *, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port_of(srv)), timeout=30) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return b""
        if not read:
            return b""
        out = b""
        try:  # no half-close: asyncio closes a connection whose client sent EOF
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:  # the server closed on a request it refused whole
            pass
        return out


def healthy(srv) -> None:
    key = srv.access_key(name="after")
    assert len(srv.boto3(key).generate_random(NumberOfBytes=4)["Plaintext"]) == 4


def request(body: bytes, length: int | None = None, target: str = "GenerateRandom") -> bytes:
    return (f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Amz-Target: TrentService.{target}\r\n"
            f"Content-Type: application/x-amz-json-1.1\r\nContent-Length: {len(body) if length is None else length}\r\n"
            "Connection: close\r\n\r\n").encode() + body


@pytest.mark.parametrize("data, status", [
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", b""),  # h11 just closes
    (b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: TrentService.GenerateRandom\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n", b""),
    (request(b"{}", 10_000_000), b"413"),
    (request(b"x" * 300_000), b"413"),
    (request(b"\xff\xfe not json"), b"400"),
    (request(b"[1, 2]"), b"400"),
    (b"POST /\xff HTTP/1.1\r\nHost: x\r\n\r\n", b"4"),
    (b"GET /v1.0/p/kms/nope HTTP/1.1\r\nHost: x\r\n\r\n", b""),
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64, b""),  # a TLS hello on plain HTTP
])
def test_malformed_requests_get_an_error_and_harm_nothing(srv, data, status):
    out = raw(srv, data)
    if status:
        assert out.startswith(b"HTTP/1.1 " + status), out[:200]
    assert b"Traceback" not in out
    healthy(srv)


def test_an_oversized_body_gets_the_apis_error(srv):
    out = raw(srv, request(b"{}", 10_000_000))
    assert out.startswith(b"HTTP/1.1 413") and b'"__type": "SerializationException"' in out


def test_slow_clients_are_cut_off_and_do_not_hold_the_server(srv):
    """Connections that send nothing, half a request line, or half a body: the server
    closes each once the request timeout (1 s here) has passed, and keeps serving."""
    socks = []
    try:
        for data in (b"", b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Amz-Tar", request(b"{}", 100)[:-2] + b'{"Numb'):
            s = socket.create_connection(("127.0.0.1", port_of(srv)), timeout=30)
            s.sendall(data)
            socks.append(s)
        healthy(srv)  # while they hang
        for s in socks:
            got = b""
            while chunk := s.recv(65536):  # the server closes: recv returns b"" (bounded by the 30 s socket timeout)
                got += chunk
            assert got == b"" or got.startswith(b"HTTP/1.1 413"), got[:200]
    finally:
        for s in socks:
            s.close()
    healthy(srv)


def test_a_signed_request_over_a_slow_body_is_not_served(srv):
    key = srv.access_key(name="slowbody")
    url, headers, body = signed_request(srv.url, key, "GenerateRandom", b'{"NumberOfBytes": 8}')
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "content-length")
    with socket.create_connection(("127.0.0.1", port_of(srv)), timeout=30) as s:
        s.sendall(f"POST / HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.1 413") and b"did not arrive within" in got


def test_accepted_connections_have_tcp_nodelay(tmp_path):
    """Responses are two writes (headers, body): without TCP_NODELAY every response after
    a connection's first waited for the client's delayed ACK. asyncio sets it only on
    sockets that say they are TCP, so the listening socket keyhold binds must."""
    from kmscore import Kms
    from kmsserve.server import RunningServer, ServeSettings

    home = tmp_path / "home"
    assert kms(home, "init").returncode == 0
    with Kms(home) as k:
        server = RunningServer(k, ServeSettings(listen=f"127.0.0.1:{free_port()}", plain_http=True))
        server.start()
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
                client.sendall(b"POST / HTTP/1.1\r\n")
                deadline = time.monotonic() + 10
                while not server._server.server_state.connections:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                (conn,) = server._server.server_state.connections
                sock = conn.transport.get_extra_info("socket")
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            server.stop()


def test_sigterm_lets_a_request_in_flight_finish(tmp_path):
    """Stop: new connections are refused at once, a request whose body is still arriving
    is answered, then the process exits 0."""
    with start_server(tmp_path / "home") as s:
        key = s.access_key()
        url, headers, body = signed_request(s.url, key, "GenerateRandom", b'{"NumberOfBytes": 8}')
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        port = port_of(s)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            c.sendall(f"POST / HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
            s.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 20
            while True:  # the listener closes first
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", port)) != 0:
                        break
                assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
                time.sleep(0.05)
            c.sendall(body[5:])
            got = b""
            while chunk := c.recv(65536):
                got += chunk
        assert got.startswith(b"HTTP/1.1 200") and b'"Plaintext"' in got, got[:300]
        assert s.proc.wait(timeout=30) == 0
