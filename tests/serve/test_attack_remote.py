"""The remote facade against a hostile or broken server: a real RemoteKms over real
sockets to a small server on 127.0.0.1 that answers what each test says. Every answer
that is not keyhold's becomes a kmscore error (KmsUnreachable, for the front ends to
fail closed on), never another exception, an unbounded read or a hang.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from kmscore import errors as kms_errors
from kmscore.remote import MAX_RESPONSE, Credentials, RemoteKms


class HostileServer:
    """Accepts connections; for each request (headers and Content-Length body) calls
    `answer(conn)`, then closes the connection."""

    def __init__(self, answer: Callable[[socket.socket], None]) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(10)
                try:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(65536) or b"\r\n\r\n"
                    head, _, rest = data.partition(b"\r\n\r\n")
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    while len(rest) < length:
                        rest += conn.recv(65536) or b"x" * length
                    self.answer(conn)
                except OSError:
                    pass  # the client gave up: what some tests want

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture
def hostile() -> Iterator[Callable[[Callable[[socket.socket], None]], RemoteKms]]:
    servers: list[HostileServer] = []
    clients: list[RemoteKms] = []

    def make(answer, **options) -> RemoteKms:
        servers.append(HostileServer(answer))
        clients.append(RemoteKms(servers[-1].url, Credentials("AKIDHOSTILETEST00000", "s" * 40), **options))
        return clients[-1]

    yield make
    for c in clients:
        c.close()
    for s in servers:
        s.close()


def respond(body: bytes, status: int = 200, length: int | None = None) -> Callable[[socket.socket], None]:
    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                     b"connection: close\r\n\r\n" % (status, len(body) if length is None else length) + body)
    return answer


def test_a_huge_answer_is_not_read_into_memory(hostile):
    sent = []

    def flood(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                     % (64 * MAX_RESPONSE))
        chunk = b" " * 65536
        for _ in range(64 * MAX_RESPONSE // len(chunk)):
            conn.sendall(chunk)  # raises once the client has closed the connection
            sent.append(len(chunk))

    kms = hostile(flood)
    with pytest.raises(kms_errors.KmsUnreachable, match="over"):
        kms.gen_random(8)


def test_json_nested_past_the_stack_is_not_a_keyhold_answer(hostile):
    kms = hostile(respond(b"[" * 200_000, status=500))
    with pytest.raises(kms_errors.KmsUnreachable):
        kms.gen_random(8)
    kms = hostile(respond(b'{"result": ' + b"[" * 200_000))
    with pytest.raises(kms_errors.KmsError):
        kms.gen_random(8)


def test_a_trickling_server_is_given_up_on_after_the_timeout(hostile):
    body = json.dumps({"result": "AAAAAAAAAAA="}).encode()

    def trickle(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body))
        for i in range(len(body)):  # about 0.2 s a byte: each read is well inside the timeout
            conn.sendall(body[i:i + 1])
            if i < len(body) - 1:
                time.sleep(0.2)

    kms = hostile(trickle, timeout=1.0)
    with pytest.raises(kms_errors.KmsUnreachable, match="did not answer"):
        kms.gen_random(8)


@pytest.mark.parametrize("answer", [
    respond(b"<html>hello</html>"),
    respond(b'{"result": {"no": "bytes"}}'),
    respond(b'{"error": {"type": "SystemExit", "message": "bye"}}', 400),
    respond(b'{"error": {"type": "__class__", "message": "x"}}', 400),
    respond(b'{"error": {"type": "KmsUnreachable", "message": 7}}', 400),
    respond(b"", 302),
    respond(b"{}", 200, length=10),  # a body shorter than it said
])
def test_garbage_answers_become_kmscore_errors(hostile, answer):
    kms = hostile(answer)
    with pytest.raises(kms_errors.KmsError) as e:
        kms.gen_random(8)
    assert type(e.value).__module__ == "kmscore.errors"
