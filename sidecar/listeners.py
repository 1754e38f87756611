"""Listening sockets that the `kms proxy` parent binds and its worker processes serve.

The parent binds one SO_REUSEPORT socket per (listen address, worker slot), so:

- a busy or missing address is reported once, before any worker changes (a reload that
  cannot listen changes nothing);
- the kernel spreads new connections over the workers by connection hash, one accept
  queue each (a shared queue would let the first worker awake take a whole burst);
- a worker that dies loses only its own queue: the parent closes that slot's sockets and
  binds fresh ones for the replacement, and meanwhile the others take every connection.

Before binding, an ordinary bind probe makes sure no other process listens on the
address: SO_REUSEPORT alone would let two deployments of the same user silently share
one port.

In a worker, `serve_inherited` makes mitmproxy's server instances accept on the inherited
socket of their address instead of binding one themselves.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket

from sidecar.errors import ConfigError

BACKLOG = 1024


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def probe_free(listen: str, label: str | None = None) -> None:
    """Raise ConfigError when something else already listens on `listen` (the message
    names the proxy as the single engine's does: `proxy LABEL: cannot listen on ...`)."""
    host, port = split_listen(listen)
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            why = "address already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            raise ConfigError(f"proxy {label or listen}: cannot listen on {listen}: {why}") from None


def bind_slots(listen: str, count: int, *, probe: bool = True, label: str | None = None) -> list[socket.socket]:
    """`count` listening SO_REUSEPORT sockets on `listen` (`probe=False`: more sockets for
    an address this process already listens on)."""
    if probe:
        probe_free(listen, label)
    host, port = split_listen(listen)
    out: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(_family(host), socket.SOCK_STREAM)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            s.listen(BACKLOG)
    except OSError as e:
        for s in out:
            s.close()
        raise ConfigError(f"proxy {label or listen}: cannot listen on {listen}: {e.strerror or e}") from None
    return out


# -- worker side --------------------------------------------------------------------------
_INHERITED: dict[tuple[str, int], socket.socket] = {}
_installed = False


def serve_inherited(sockets: dict[str, socket.socket]) -> None:
    """From now on, a mitmproxy TCP server for one of these listen addresses accepts on the
    given socket (each start takes a duplicate, so a stopped server closes only its own)."""
    global _installed
    _INHERITED.clear()
    _INHERITED.update({split_listen(listen): s for listen, s in sockets.items()})
    if _installed:
        return
    from mitmproxy.proxy import mode_servers

    original = mode_servers.AsyncioServerInstance.listen

    async def listen(self, host, port):
        sock = _INHERITED.get((host or "", port))
        if sock is None or self.mode.transport_protocol not in ("tcp", "both"):
            return await original(self, host, port)
        # "both" (a reverse proxy to https://): TCP only. mitmproxy would add a UDP (QUIC)
        # listener, which several workers cannot share; HTTP/3 clients get no answer.
        dup = socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
        return [await asyncio.start_server(self.handle_stream, sock=dup, backlog=BACKLOG)]

    mode_servers.AsyncioServerInstance.listen = listen
    _installed = True
