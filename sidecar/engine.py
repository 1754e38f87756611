"""The proxy engine: one lean mitmproxy `Master` in its own thread, serving every entry.

Only the addons the sidecar needs are loaded (a DumpMaster loads ~34 and every hook runs
through all of them). Each `[[proxy]]` entry is one mitmproxy mode (`reverse:URL@host:port`
or `regular@host:port`); flows find their entry by the mode they arrived on, so one
Master serves them all and a reload that changes one listen address restarts only that
listener. `connection_strategy=lazy` makes a dead upstream a 502 (and an `error` hook)
rather than a closed client connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from mitmproxy import options
from mitmproxy.addons import next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master

from sidecar import wire_errors
from sidecar.addons import Metrics, Routing, Runtime, Signing, Transform
from sidecar.addons.failclosed import Chain, FailClosed
from sidecar.addons.guard import Framing, Guard
from sidecar.config import ProxyEntry
from sidecar.errors import ConfigError
from sidecar.rules import RouteTable, compile_entry

log = logging.getLogger("keyhold.sidecar")
_running = threading.Lock()
"""mitmproxy keeps its master and options in module globals (`mitmproxy.ctx`), so one
process runs one Engine; more proxies are more entries of the same Engine."""


def ignore_sigpipe() -> None:
    """Never let a peer's closed socket kill the process.

    `kms` restores the default SIGPIPE action (so that `kms list-keys | head` ends
    quietly); in a server that default means: a client that reads part of a response and
    closes (`curl URL | head -c 1000`) kills the proxy, and `kms up` with it. From the
    main thread, SIGPIPE is ignored process-wide (child processes get the default back:
    subprocess restores it). From any other thread only `sigpipe_blocked` is possible. A
    write to a closed socket then fails with EPIPE, which mitmproxy handles as a
    disconnect.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)


@contextlib.contextmanager
def sigpipe_blocked():
    """SIGPIPE blocked in this thread while the block runs, so the threads it starts
    (which inherit the mask) never get one, whichever thread started the engine. The
    caller's mask is put back after: a process it later spawns must not inherit it."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def mode_spec(entry: ProxyEntry) -> str:
    where = f"{entry.listen_host}:{entry.listen_port}"
    if entry.mode == "reverse":
        return f"reverse:{entry.upstream}@{where}"
    return f"regular@{where}"


def _abort(ps: proxyserver.Proxyserver, flow) -> None:
    """Close a flow's client and server connections from inside a hook or stream callable."""
    handler = ps.connections.get(flow.client_conn.id)
    if handler is None:
        return
    for conn in (flow.server_conn, flow.client_conn):
        io = handler.transports.get(conn)
        if io is not None:
            if io.writer is not None:
                io.writer.close()  # nothing more is written, not even a chunked terminator
            handler.close_connection(conn)


def _send_raw(ps: proxyserver.Proxyserver, flow, data: bytes) -> None:
    """Write `data` to a flow's client as it is, then close the flow (an HTTP/2 GOAWAY to
    a client that is not speaking HTTP/1, where no HTTP/1 error response would be read)."""
    handler = ps.connections.get(flow.client_conn.id)
    io = handler.transports.get(flow.client_conn) if handler is not None else None
    if io is not None and io.writer is not None:
        io.writer.write(data)
    flow.kill()


class Engine:
    """Start, reconfigure and stop the proxies of one process. Thread-safe entry points."""

    def __init__(
        self, entries: Sequence[ProxyEntry], kms, *, clock=time.time, confdir: str | None = None, plain: bool = False,
        sockets: dict[str, socket.socket] | None = None, side_services: bool = True, replay=None,
    ) -> None:
        """`sockets` (listen address -> listening socket): serve on these instead of binding
        (a worker of `sidecar.pool`); `side_services=False`: no metrics endpoint of its own
        (the pool's parent serves the sum); `replay`: a replay guard shared with others."""
        self.plain = plain  # benchmarks: the same lean Master without the sidecar's addons
        self.kms = kms
        self.sockets = sockets
        self.side_services = side_services
        from kmscore.dkcache import DataKeyCache

        # unwrapped DEKs of envelopes being decrypted, revocable within the deployment's
        # `[kms] revocation_bound`: a RemoteKms carries it; an embedded Kms is opened with
        # it as its refresh interval (kmscore.deploy.open_kms)
        bound = getattr(kms, "revocation_bound", None) or getattr(kms, "refresh_interval", 5.0)
        self.runtime = Runtime(kms=kms, tables=self._compile(entries), clock=clock,
                               dkcache=DataKeyCache(kms, revocation_bound=bound))
        if replay is not None:
            self.runtime.replay = replay
        self.metrics = Metrics()
        self.entries = list(entries)
        self.confdir = confdir or str(Path(getattr(kms, "home", Path.home())) / "sidecar")
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._master: Master | None = None
        self._ready = threading.Event()
        self._metrics_servers: dict[str, object] = {}
        self._log_handler: logging.Handler | None = None

    def _compile(self, entries: Sequence[ProxyEntry]) -> dict[str, RouteTable]:
        return {mode_spec(e): compile_entry(e, self.kms) for e in entries}

    # -- lifecycle -------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> None:
        if not _running.acquire(blocking=False):
            raise ConfigError("a sidecar engine already runs in this process: add entries to it with apply()")
        ignore_sigpipe()
        self._thread = threading.Thread(target=self._run, name="keyhold-sidecar", daemon=True)
        with sigpipe_blocked():  # the engine's thread and those it starts inherit the mask
            self._thread.start()
        if not self._ready.wait(timeout):
            raise ConfigError("the proxy did not start in time")
        self._check_listening(self.entries, timeout)
        with sigpipe_blocked():  # the metrics server's threads write to sockets too
            self._apply_side_services(self.entries)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        opts = options.Options()
        master = Master(opts, event_loop=self._loop)
        ps = proxyserver.Proxyserver()
        master.addons.add(ps, next_layer.NextLayer(), tlsconfig.TlsConfig())
        self.runtime.abort = lambda flow: _abort(ps, flow)
        if not self.plain:
            wire_errors.install()  # JSON errors with X-Keyhold-Error, not mitmproxy's HTML page
            chain = (
                Routing(self.runtime), Guard(self.runtime, lambda flow, data: _send_raw(ps, flow, data)),
                Transform(self.runtime), Signing(self.runtime), Framing(self.runtime), self.metrics,
            )
            # mitmproxy logs an exception in a hook and goes on with the flow: refuse it instead
            # one addon for mitmproxy: its per-addon dispatch of every event is the costly part
            master.addons.add(Chain([FailClosed(addon, self.runtime.abort) for addon in chain]))
        first = self.entries[0] if self.entries else None
        if self.sockets is not None:
            from sidecar.listeners import serve_inherited

            serve_inherited(self.sockets)
        Path(self.confdir).mkdir(parents=True, exist_ok=True, mode=0o700)
        opts.update(
            mode=list(self.runtime.tables),
            connection_strategy="lazy",
            keep_host_header=True,
            confdir=self.confdir,
            ssl_insecure=bool(first and not first.verify_upstream),
            ssl_verify_upstream_trusted_ca=first.upstream_ca if first else None,
            http2=True,
            rawtcp=False,  # bytes that are not HTTP get a 400, never a raw relay past the rules
        )
        self._master = master
        self._loop.call_soon(self._ready.set)
        await master.run()

    def _call(self, fn, timeout: float = 15.0):
        """Run `fn` on the engine's loop and wait for its result."""
        async def wrapper():
            return fn()
        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout)

    def _servers(self) -> dict[str, object]:
        ps = self._master.addons.get("proxyserver")
        return self._call(lambda: {s.mode.full_spec: s for s in ps.servers})

    def _check_listening(self, entries: Sequence[ProxyEntry], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        wanted = {mode_spec(e): e for e in entries}
        while True:
            servers = self._servers()
            pending = []
            for spec, entry in wanted.items():
                s = servers.get(spec)
                if s is not None and s.last_exception is not None:
                    raise ConfigError(f"proxy {entry.label}: cannot listen on {entry.listen}: {s.last_exception}")
                if s is None or not s.is_running:
                    pending.append(entry)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ConfigError(f"proxy {pending[0].label}: not listening on {pending[0].listen} after {timeout:.0f} s")
            time.sleep(0.02)

    def apply(self, entries: Sequence[ProxyEntry]) -> list[str]:
        """Swap in new entries: routes at once, listeners that changed are restarted."""
        return self.commit(self.prepare(entries))

    def prepare(self, entries: Sequence[ProxyEntry]) -> tuple[list[ProxyEntry], dict[str, RouteTable]]:
        """Everything of a reload that can fail on its own, with nothing changed yet (the
        first phase of a pool-wide reload): the entries' route tables."""
        return list(entries), self._compile(entries)

    def commit(self, prepared: tuple[list[ProxyEntry], dict[str, RouteTable]]) -> list[str]:
        """Swap in prepared entries; a listener that cannot start puts the old ones back."""
        entries, new_tables = prepared
        old = set(self.runtime.tables)
        new = set(new_tables)
        changes = [f"stopped {s}" for s in sorted(old - new)] + [f"started {s}" for s in sorted(new - old)]
        changes += [f"routes of {s} reloaded" for s in sorted(old & new) if self.runtime.tables[s].entry != new_tables[s].entry]
        before = self.runtime.tables
        self.runtime.tables = {**before, **new_tables}
        if old != new:
            try:
                self._call(lambda: self._master.options.update(mode=list(new_tables)))
                self._check_listening(entries, 15.0)
            except Exception:
                # all or nothing: put the old listeners and routes back
                self._call(lambda: self._master.options.update(mode=list(before)))
                self.runtime.tables = before
                raise
        self.runtime.tables = new_tables
        self.entries = list(entries)
        with sigpipe_blocked():
            self._apply_side_services(entries)
        return changes

    def stop(self, drain: float = 30.0) -> None:
        """Stop listening, let in-flight requests finish (up to `drain` s), then shut down."""
        if self._master is None:
            return
        try:
            self._call(lambda: self._master.options.update(mode=[]))
        except Exception:  # noqa: BLE001 - stopping anyway
            pass
        deadline = time.monotonic() + drain
        while self.metrics.active > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        self._master.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for server in self._metrics_servers.values():
            server.shutdown()
        self._metrics_servers.clear()
        if self._log_handler is not None:
            logging.getLogger("keyhold.sidecar.access").removeHandler(self._log_handler)
            self._log_handler.close()
        self._master = None
        _running.release()

    # -- metrics endpoint, access log -------------------------------------------------------
    def _apply_side_services(self, entries: Sequence[ProxyEntry]) -> None:
        from kmscore.health import HealthServer  # /metrics, /healthz, /readyz; 404 elsewhere

        wanted = {e.metrics for e in entries if e.metrics} if self.side_services else set()
        for addr in list(self._metrics_servers):
            if addr not in wanted:
                self._metrics_servers.pop(addr).shutdown()
        for addr in wanted - set(self._metrics_servers):
            host, _, port = addr.rpartition(":")
            try:
                server = HealthServer(host, int(port), [self.metrics.registry])
            except OSError as e:
                raise ConfigError(f"cannot serve metrics on {addr}: {e.strerror}") from None
            self._metrics_servers[addr] = server
        target = next((e.access_log for e in entries if e.access_log), None)
        access = logging.getLogger("keyhold.sidecar.access")
        if self._log_handler is not None:
            access.removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
        if target:
            handler = logging.StreamHandler(sys.stderr) if target == "-" else logging.FileHandler(target)
            handler.setFormatter(logging.Formatter("%(message)s"))
            access.addHandler(handler)
            access.setLevel(logging.INFO)
            access.propagate = False
            self._log_handler = handler
