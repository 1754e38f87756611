"""A rude upstream on 127.0.0.1: raw sockets, so it can misbehave as HTTP libraries won't.

    /die/N     headers announce a large body; N bytes of it follow; then a FIN
    /rst/N     the same, then a TCP RST
    /chunked/N a chunked body cut off after N bytes (no terminator); then a FIN
    /switch    101 Switching Protocols, unasked, then raw bytes
    /head      the headers a HEAD gets for a stored envelope (its size, ETag, Accept-Ranges)
    /partial   a 206 with ten bytes
    /dup-cl    two different Content-Length headers
    /te-cl     both Transfer-Encoding: chunked and Content-Length
    anything   200 with a small JSON body
"""

from __future__ import annotations

import socket
import struct
import threading

HUGE = 50 * 1024 * 1024


def _read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        got = conn.recv(65536)
        if not got:
            return b""
        data += got
    return data


def _respond(conn: socket.socket, path: str, ctype: bytes) -> None:
    kind, _, n = path.removeprefix("/dec").strip("/").partition("/")
    n = int(n) if n.isdigit() else 1000
    if kind in ("die", "rst"):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: %d\r\n\r\n" % HUGE)
        conn.sendall(b"x" * n)
        if kind == "rst":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif kind == "chunked":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.sendall(b"%x\r\n" % HUGE + b"x" * n)
    elif kind == "switch":  # switching protocols although nobody asked
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: anything\r\nConnection: Upgrade\r\n\r\n"
                     b"raw bytes after the switch")
    elif kind == "head":  # an answer to HEAD: the headers of a stored envelope, no body
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: 5000\r\n"
                     b"ETag: \"cipher\"\r\nAccept-Ranges: bytes\r\nX-Keyhold-Content-Type: text/plain\r\n\r\n")
    elif kind == "partial":
        conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Type: " + ctype
                     + b"\r\nContent-Range: bytes 0-9/100\r\nContent-Length: 10\r\n\r\n0123456789")
    elif kind == "dup-cl":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nhello")
    elif kind == "te-cl":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    else:
        conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}')


class RudeUpstream:
    def __init__(self, ctype: bytes = b"application/octet-stream") -> None:
        self.ctype = ctype
        self.seen = bytearray()  # every byte any client sent, up to the end of its request head
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            try:
                head = _read_head(conn)
                self.seen += head
                if head:
                    path = head.split()[1].decode()
                    _respond(conn, path.split("?")[0], self.ctype)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
