"""Run the app: uvicorn (the encode project's ASGI server: h11, TLS from the ssl module,
graceful shutdown) on one listening socket, in a thread of its own.

The same `RunningServer` serves `kms serve` (the main thread waits for SIGTERM/SIGINT and
then stops it) and `kms up` (a Service beside the other front ends, sharing their Kms).
Everything that can fail for a reason the operator must fix — the address is taken, the
certificate does not load, plain HTTP off loopback — fails in `RunningServer.__init__`,
before anything listens, as a ServeError with one clear sentence.

Limits (a client must not be able to hold the server): the request line and headers
must arrive within HEADER_TIMEOUT of the connection (or of the previous response), a
body within BODY_TIMEOUT (kmsserve.app), headers are at most MAX_HEADER bytes, a body at
most kmsserve.app.MAX_BODY, and beyond MAX_CONNECTIONS connections a request gets 503.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from kmscore.remote import is_loopback
from kmsserve import tls
from kmsserve.apis import all_apis
from kmsserve.app import ServerContext, create_app
from kmsserve.auth.accesskeys import AccessKeys
from kmsserve.errors import ServeError

log = logging.getLogger("kmsserve")

HEADER_TIMEOUT = 10.0
MAX_HEADER = 16 * 1024
MAX_CONNECTIONS = 512
KEEP_ALIVE = 5
GRACEFUL_STOP = 10
START_WAIT = 30.0


def parse_listen(text: str, where: str = "--listen") -> tuple[str, int]:
    """`HOST:PORT` or `[v6]:PORT` -> (host, port); ServeError on anything else."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ServeError(f"{where}: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class ServeSettings:
    """Where and how to listen: `kms serve`'s options, or `[serve]`."""

    listen: str = "127.0.0.1:8443"
    cert: str | None = None
    key: str | None = None
    plain_http: bool = False
    request_timeout: float = HEADER_TIMEOUT
    """Seconds for a request's line and headers to arrive (from the connection or the
    previous response), and again for its body."""


class _GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request line and headers (uvicorn
    has none before the first request: a client that connects and sends nothing, or a
    byte at a time, would hold its connection for ever)."""

    _deadline: asyncio.TimerHandle | None = None
    header_timeout = HEADER_TIMEOUT

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            log.info("kms serve: closed a connection from %s that sent no whole request in %ss",
                     "%s:%d" % self.client if self.client else "?", self.header_timeout)
            self.transport.close()

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # a request's headers arrived
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """On stop: an idle keep-alive connection is dropped at once (a TLS close would
        wait for the client's close_notify, which an idle client never sends); one with a
        request in flight finishes it first."""
        if self.cycle is None or self.cycle.response_complete:
            self._disarm()
            self.transport.abort()
        else:
            super().shutdown()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets whose proto is
    # IPPROTO_TCP, and without it every response after a connection's first waited for
    # the client's delayed ACK (Nagle: headers and body are two writes), 40 ms each
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ServeError(f"cannot listen on {host}:{port}: the address is already in use") from None
        if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
            raise ServeError(f"cannot listen on {host}:{port}: no such address on this host") from None
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(False)
    return sock


class RunningServer:
    """One listening `kms serve`: checked and bound at construction, served by `start()`
    in a thread of its own, stopped (drained) by `stop()`."""

    def __init__(self, kms: Any, settings: ServeSettings) -> None:
        self.settings = settings
        host, port = parse_listen(settings.listen)
        self.certificate: tls.Certificate | None = None
        if not 0 < settings.request_timeout <= 3600:
            raise ServeError(f"the request timeout must be between 0 and 3600 seconds, not {settings.request_timeout}")
        if settings.plain_http and not is_loopback(host):
            raise ServeError(f"plain HTTP is only allowed on loopback, not on {host}: "
                             "drop --plain-http (TLS) or listen on 127.0.0.1")
        if settings.plain_http and (settings.cert or settings.key):
            raise ServeError("plain HTTP serves no certificate: drop --cert/--key or --plain-http")
        if not settings.plain_http and bool(settings.cert) != bool(settings.key):
            raise ServeError("a TLS certificate needs its key and a key its certificate: give both --cert and --key")
        self.access_keys = AccessKeys(kms)  # first: a Kms without a local store is refused here
        try:
            if not settings.plain_http:
                self.certificate = (tls.load(settings.cert, settings.key) if settings.cert and settings.key
                                    else tls.self_signed(Path(kms.home), host))
            self.context = ServerContext(kms, self.access_keys)
            self._socket = _bind(host, port)
        except BaseException:
            self.access_keys.close()
            raise
        self.host, self.port = host, self._socket.getsockname()[1]
        scheme = "http" if self.certificate is None else "https"
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{scheme}://{shown}:{self.port}"
        protocol = type("GuardedH11", (_GuardedH11,), {"header_timeout": settings.request_timeout})
        config = uvicorn.Config(
            create_app(all_apis(), self.context, body_timeout=settings.request_timeout), log_config=None,
            log_level="warning", access_log=False, lifespan="off", http=protocol, ws="none", interface="asgi3",
            timeout_keep_alive=KEEP_ALIVE, timeout_graceful_shutdown=GRACEFUL_STOP,
            limit_concurrency=MAX_CONNECTIONS, h11_max_incomplete_event_size=MAX_HEADER,
            server_header=False, date_header=True,
            ssl_certfile=str(self.certificate.cert_file) if self.certificate else None,
            ssl_keyfile=str(self.certificate.key_file) if self.certificate else None,
            ssl_context_factory=_tls12 if self.certificate else None,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def fingerprint(self) -> str | None:
        return self.certificate.fingerprint if self.certificate else None

    def describe(self) -> str:
        if self.certificate is None:
            return f"{self.url} (plain HTTP, loopback only)"
        kind = "self-signed certificate" if self.certificate.self_signed else f"certificate {self.certificate.cert_file}"
        return f"{self.url} ({kind}, SHA-256 fingerprint {self.certificate.fingerprint})"

    def start(self) -> None:
        """Serve in a thread; return once it accepts connections (ServeError if it died)."""
        self._thread = threading.Thread(target=self._serve, name="kms-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_WAIT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServeError(f"kms serve did not start: {type(self._error).__name__ if self._error else 'timeout'}")
            time.sleep(0.01)
        log.debug("kms serve: listening on %s", self.describe())  # kms serve prints it, kms up's banner shows it

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as e:  # noqa: BLE001 - reported by start()/stop(), never a traceback at the user
            self._error = e
            log.error("kms serve stopped: %s: %s", type(e).__name__, e)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop accepting, let requests in flight finish (GRACEFUL_STOP at most), close."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(GRACEFUL_STOP + 5)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(5)
        try:
            self._socket.close()
        finally:
            self.access_keys.close()


def _tls12(config, default):
    import ssl

    ctx = default()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _print(line: str) -> None:
    print(line, flush=True)  # stdout may be a file (systemd, a test): the line must be there at once


def run(kms: Any, settings: ServeSettings, *, announce=_print) -> None:
    """`kms serve`: serve until SIGTERM or SIGINT, then drain and return."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server = RunningServer(kms, settings)
        try:
            server.start()
            announce(f"kms serve: listening on {server.describe()}")
            while not stop.wait(0.2):
                if not server.alive():
                    raise ServeError("kms serve stopped unexpectedly (see the log)")
            announce("kms serve: stopping")
        finally:
            server.stop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
