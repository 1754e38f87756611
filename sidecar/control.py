"""The control channel between `kms proxy` and its worker processes.

An AF_UNIX SOCK_SEQPACKET socket pair: one JSON object per packet (the kernel keeps the
boundaries), with listening sockets passed alongside as SCM_RIGHTS file descriptors.
Requests carry a sequence number that the reply repeats, so a reply that arrives after
its request timed out (a worker that was stopped, then continued) is recognised as stale
and dropped instead of being taken for the answer to a later request.

What crosses it: the `[[proxy]]` entries, where the key store is and where its root key
comes from (a path or a variable name, never the key), listen addresses. No key material.
"""

from __future__ import annotations

import json
import socket
import time

MAX_MESSAGE = 4 << 20
MAX_FDS = 250


class ChannelClosed(Exception):
    """The other end went away (its process exited or was killed)."""


class ChannelTimeout(Exception):
    """No reply within the bound."""


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
    return a, b


def send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"control message of {len(data)} bytes is over {MAX_MESSAGE}")
    try:
        if fds:
            socket.send_fds(sock, [data], list(fds))
        else:
            sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError) as e:
        raise ChannelClosed(str(e)) from None


def receive(sock: socket.socket, timeout: float | None = None) -> tuple[dict, list[socket.socket]]:
    """One message and the sockets that came with it (owned by the caller)."""
    sock.settimeout(timeout)
    try:
        data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    except TimeoutError:
        raise ChannelTimeout("no reply") from None
    except (ConnectionResetError, OSError) as e:
        raise ChannelClosed(str(e)) from None
    finally:
        if sock.fileno() >= 0:
            sock.settimeout(None)
    received = [socket.socket(fileno=fd) for fd in fds]
    if not data:
        for s in received:
            s.close()
        raise ChannelClosed("end of channel")
    return json.loads(data), received


class Caller:
    """The parent's side: numbered requests, each waiting for its own reply."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._seq = 0

    def request(self, message: dict, fds: list[int] = (), timeout: float = 15.0) -> dict:
        self.post(message, fds)
        return self.wait(self._seq, timeout)

    def post(self, message: dict, fds: list[int] = ()) -> int:
        self._seq += 1
        send(self.sock, {**message, "seq": self._seq}, fds)
        return self._seq

    def wait(self, seq: int, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChannelTimeout(f"no reply to request {seq} within {timeout:g} s")
            reply, extra = receive(self.sock, left)
            for s in extra:
                s.close()
            if reply.get("seq") == seq:
                return reply
            # a late reply to an earlier request that already timed out: drop it
