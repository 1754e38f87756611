"""The sidecar on every core: `workers = N` engine processes behind one listening address.

The parent (`kms proxy`, or `kms up`) runs no proxy itself. It binds the listening
sockets (`sidecar.listeners`: one SO_REUSEPORT socket per address and worker slot),
starts one `sidecar.worker` process per slot, serves the `/metrics` of them all (the
prometheus_client multiprocess mode sums the workers' files), and orders them over
`sidecar.control`:

- **reload, all or none**: every worker first *prepares* the new entries (compiles its
  route tables, takes the sockets of new addresses; nothing changes yet); only when every
  worker said yes does any of them *commit*. A worker that says no, or says nothing
  within the bound, aborts the reload for all of them: the running config stays
  everywhere. A worker that fails the commit itself is killed and restarted with the new
  config, so after a commit every worker runs it.
- **a worker that dies** (a signal, a crash) is restarted in its slot by `poll()`: its
  sockets are closed (the kernel then hands its share of new connections to the
  others) and fresh ones are bound for the replacement. A slot that keeps dying is
  restarted with a growing delay (up to 30 s), never given up; meanwhile its share goes
  to the live workers, and with no live worker the address refuses connections. Nothing
  is ever served outside the rules: a worker is either running the config or absent.
- **stop**: the parent closes its copies of the sockets, tells every worker to drain and
  stop, and kills whichever has not exited in time. A worker whose parent is gone (kill
  -9) sees its control channel close and stops by itself.

Replay protection of verified signatures is shared (`sidecar.sharedreplay`), so a
replayed signature is refused whichever worker it reaches. Memory bounds
(`max_buffered_body`) hold per worker.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sidecar import control
from sidecar.config import ProxyEntry
from sidecar.errors import ConfigError
from sidecar.listeners import bind_slots

log = logging.getLogger("keyhold.sidecar")
START_TIMEOUT = 60.0
MAX_RESTART_DELAY = 30.0
HEALTHY_AFTER = 60.0
EXIT_GRACE = 10.0
"""After its last reply a worker closes its key store (merging its audit journal) and
exits; one that takes longer is killed (its journal is merged by the next process)."""


def pool_size(entries: Sequence[ProxyEntry]) -> int:
    return max((e.worker_count for e in entries), default=1)


@dataclass
class _Worker:
    slot: int
    proc: subprocess.Popen
    caller: control.Caller
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        self.caller.sock.close()


@dataclass
class _Slot:
    restarts: int = 0
    next_start: float = 0.0


class WorkerPool:
    """The `Service` (`apply`, `poll`, `stop`) of a multi-worker sidecar."""

    def __init__(self, entries: Sequence[ProxyEntry], kms, *, confdir: str | None = None,
                 reply_timeout: float = 15.0, drain: float = 30.0) -> None:
        self.entries = list(entries)
        self.kms = kms
        self.size = pool_size(self.entries)
        self.confdir = confdir or str(Path(getattr(kms, "home", Path.home())) / "sidecar")
        self.reply_timeout = reply_timeout
        """How long a worker may take to answer prepare / commit before the reload is
        aborted (or, for a commit, the worker restarted)."""
        self.drain = drain
        self.kms_spec = kms_spec(kms)
        self.workers: dict[int, _Worker] = {}
        self.slots = {i: _Slot() for i in range(self.size)}
        self.sockets: dict[tuple[str, int], socket.socket] = {}  # (listen, slot) -> listening socket
        self._rundir: Path | None = None
        self._metrics_servers: dict[str, object] = {}
        self._stopping = False

    # -- which worker serves what --------------------------------------------------------
    def entries_for(self, slot: int, entries: Sequence[ProxyEntry] | None = None) -> list[ProxyEntry]:
        """An entry with `workers = k` is served by slots 0 .. k-1."""
        return [e for e in (self.entries if entries is None else entries) if slot < min(e.worker_count, self.size)]

    def _wanted(self, entries: Sequence[ProxyEntry]) -> set[tuple[str, int]]:
        return {(e.listen, slot) for slot in range(self.size) for e in self.entries_for(slot, entries)}

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers.values()]

    @property
    def metrics_dir(self) -> Path:
        assert self._rundir is not None
        return self._rundir / "metrics"

    # -- start ---------------------------------------------------------------------------
    def start(self) -> None:
        self._rundir = Path(tempfile.mkdtemp(prefix="keyhold-sidecar-"))  # 0700
        self.metrics_dir.mkdir(mode=0o700)
        try:
            _ensure_ca(self.confdir)
            self._bind(self._wanted(self.entries))
            posted = {slot: self._spawn(slot) for slot in range(self.size)}
            for slot, (worker, seq) in posted.items():
                self._await_start(worker, seq)
            self._apply_metrics(self.entries)
        except BaseException:
            self.stop(drain=0)
            raise

    def _bind(self, wanted: set[tuple[str, int]], entries: Sequence[ProxyEntry] | None = None) -> list[tuple[str, int]]:
        """Bind the sockets of `wanted` that are not bound yet; all or none."""
        labels = {e.listen: e.label for e in (self.entries if entries is None else entries)}
        missing = sorted(wanted - set(self.sockets))
        by_listen: dict[str, list[int]] = {}
        for listen, slot in missing:
            by_listen.setdefault(listen, []).append(slot)
        bound: list[tuple[str, int]] = []
        try:
            for listen, slots in by_listen.items():
                known = any(key[0] == listen for key in self.sockets)
                for slot, s in zip(slots, bind_slots(listen, len(slots), probe=not known, label=labels.get(listen)),
                                   strict=True):
                    self.sockets[(listen, slot)] = s
                    bound.append((listen, slot))
        except BaseException:
            for key in bound:
                self.sockets.pop(key).close()
            raise
        return bound

    def _spawn(self, slot: int) -> tuple[_Worker, int]:
        parent_end, child_end = control.pair()
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar.worker", str(child_end.fileno()), str(slot)],
                pass_fds=(child_end.fileno(),), env=env, stdin=subprocess.DEVNULL,
            )
        finally:
            child_end.close()
        worker = _Worker(slot, proc, control.Caller(parent_end))
        self.workers[slot] = worker
        listens = sorted({e.listen for e in self.entries_for(slot)})
        seq = worker.caller.post({
            "op": "start", "kms": self.kms_spec, "confdir": self.confdir, "replay": str(self._rundir / "replay"),
            "entries": [e.model_dump(mode="json") for e in self.entries_for(slot)], "listens": listens,
            "access_level": logging.getLogger("keyhold.sidecar.access").getEffectiveLevel(),
        }, [self.sockets[(listen, slot)].fileno() for listen in listens])
        return worker, seq

    def _await_start(self, worker: _Worker, seq: int) -> None:
        try:
            reply = worker.caller.wait(seq, START_TIMEOUT)
        except (control.ChannelClosed, control.ChannelTimeout):
            code = worker.proc.poll()
            raise ConfigError(f"sidecar worker {worker.slot} did not start"
                              + (f" (exit status {code})" if code is not None else "")) from None
        if not reply.get("ok"):
            raise ConfigError(f"sidecar worker {worker.slot}: {reply.get('error')}")

    # -- reload --------------------------------------------------------------------------
    def apply(self, entries: Sequence[ProxyEntry]) -> list[str]:
        """Reload every worker or none (see the module's docstring)."""
        entries = list(entries)
        if pool_size(entries) != self.size:
            raise ConfigError(f"the sidecar runs {self.size} worker process(es); changing `workers` "
                              f"to {pool_size(entries)} needs a restart")
        wanted = self._wanted(entries)
        bound = self._bind(wanted, entries)  # may raise: nothing changed
        try:
            self._apply_metrics(entries, remove=False)
            self._prepare_all(entries, bound)
        except BaseException:
            for key in bound:
                self.sockets.pop(key).close()
            self._apply_metrics(self.entries)
            raise
        self.entries = entries
        changes = self._commit_all()
        for key in sorted(set(self.sockets) - wanted):
            self.sockets.pop(key).close()
        self._apply_metrics(entries)
        return changes

    def _prepare_all(self, entries: list[ProxyEntry], bound: list[tuple[str, int]]) -> None:
        posted: dict[int, int] = {}
        try:
            for slot, worker in sorted(self.workers.items()):
                new = sorted(listen for listen, s in bound if s == slot)
                posted[slot] = worker.caller.post(
                    {"op": "prepare", "entries": [e.model_dump(mode="json") for e in self.entries_for(slot, entries)],
                     "listens": new},
                    [self.sockets[(listen, slot)].fileno() for listen in new])
            for slot, seq in posted.items():
                reply = self.workers[slot].caller.wait(seq, self.reply_timeout)
                if not reply.get("ok"):
                    raise ConfigError(f"sidecar worker {slot} refused the new config: {reply.get('error')}")
        except (control.ChannelClosed, control.ChannelTimeout) as e:
            self._abort_all(posted)
            raise ConfigError(f"sidecar worker {slot} did not take the new config ({e}): "
                              "no worker changed") from None
        except BaseException:
            self._abort_all(posted)
            raise

    def _abort_all(self, posted: dict[int, int]) -> None:
        for slot in posted:
            try:
                self.workers[slot].caller.post({"op": "abort"})
            except control.ChannelClosed:
                pass  # it is gone: poll() restarts it with the running config

    def _commit_all(self) -> list[str]:
        posted = {}
        for slot, worker in sorted(self.workers.items()):
            try:
                posted[slot] = worker.caller.post({"op": "commit"})
            except control.ChannelClosed:
                pass  # gone: poll() starts it with the new entries
        changes: list[str] = []
        for slot, seq in posted.items():
            worker = self.workers[slot]
            try:
                reply = worker.caller.wait(seq, self.reply_timeout)
                ok, error = reply.get("ok"), reply.get("error")
            except (control.ChannelClosed, control.ChannelTimeout) as e:
                ok, error = False, str(e)
            if ok:
                changes = changes or list(reply.get("changes", []))
            else:  # never let one worker run the old config: replace it by one with the new
                log.error("sidecar worker %d (pid %d) failed to apply the new config (%s): restarting it",
                          slot, worker.pid, error)
                worker.proc.kill()
        return changes

    # -- supervision ---------------------------------------------------------------------
    def poll(self) -> None:
        """Restart workers that died (called between the ticks of `kms up` / `kms proxy`)."""
        if self._stopping:
            return
        now = time.monotonic()
        for slot in range(self.size):
            worker = self.workers.get(slot)
            if worker is not None:
                code = worker.proc.poll()
                if code is None:
                    if now - worker.started > HEALTHY_AFTER:
                        self.slots[slot].restarts = 0
                    continue
                self._bury(worker, code)
            state = self.slots[slot]
            if now < state.next_start:
                continue
            state.restarts += 1
            state.next_start = now + min(MAX_RESTART_DELAY, 2.0 ** (state.restarts - 1) - 1)
            try:
                self._rebind(slot)
                new, seq = self._spawn(slot)
                self._await_start(new, seq)
                log.warning("sidecar worker %d restarted (pid %d)", slot, new.pid)
            except Exception as e:  # noqa: BLE001 - tried again later; the others serve meanwhile
                log.error("sidecar worker %d could not be restarted: %s", slot, e)
                failed = self.workers.pop(slot, None)
                if failed is not None:
                    _kill(failed)
                self._unbind(slot)

    def _bury(self, worker: _Worker, code: int) -> None:
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        log.error("sidecar worker %d (pid %d) ended (%s): restarting it", worker.slot, worker.pid, how)
        self.workers.pop(worker.slot, None)
        worker.close()
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, str(self.metrics_dir))  # its in-flight gauge
        self._unbind(worker.slot)  # connections queued there are reset; new ones go to the others

    def _unbind(self, slot: int) -> None:
        for key in [k for k in self.sockets if k[1] == slot]:
            self.sockets.pop(key).close()

    def _rebind(self, slot: int) -> None:
        self._unbind(slot)
        self._bind({(e.listen, slot) for e in self.entries_for(slot)})

    # -- stop ----------------------------------------------------------------------------
    def stop(self, drain: float | None = None) -> None:
        """Stop listening, let every worker drain (up to `drain` s), end them all."""
        drain = self.drain if drain is None else drain
        self._stopping = True
        for s in self.sockets.values():
            s.close()
        self.sockets.clear()
        posted = {}
        for slot, worker in self.workers.items():
            try:
                posted[slot] = worker.caller.post({"op": "stop", "drain": drain})
            except control.ChannelClosed:
                pass
        deadline = time.monotonic() + drain + 15  # one bound for all: they drain side by side
        for slot, worker in list(self.workers.items()):
            if slot in posted:
                try:
                    worker.caller.wait(posted[slot], max(0.1, deadline - time.monotonic()))
                except (control.ChannelClosed, control.ChannelTimeout):
                    pass
        deadline = time.monotonic() + EXIT_GRACE
        for worker in self.workers.values():
            _kill(worker, grace=max(0.0, deadline - time.monotonic()))
        self.workers.clear()
        for server in self._metrics_servers.values():
            server.shutdown()
        self._metrics_servers.clear()
        if self._rundir is not None:
            shutil.rmtree(self._rundir, ignore_errors=True)
            self._rundir = None

    # -- /metrics: the sum of the workers --------------------------------------------------
    def _apply_metrics(self, entries: Sequence[ProxyEntry], remove: bool = True) -> None:
        from kmscore.health import HealthServer

        wanted = {e.metrics for e in entries if e.metrics}
        if remove:
            for addr in list(self._metrics_servers):
                if addr not in wanted:
                    self._metrics_servers.pop(addr).shutdown()
        for addr in sorted(wanted - set(self._metrics_servers)):
            host, _, port = addr.rpartition(":")
            try:
                server = HealthServer(host, int(port), [self.registry()])
            except OSError as e:
                raise ConfigError(f"cannot serve metrics on {addr}: {e.strerror}") from None
            self._metrics_servers[addr] = server

    def registry(self):
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.metrics_dir))
        return registry


def kms_spec(kms) -> dict:
    """How a worker opens the same KMS: for an embedded one its home and the root key's
    source (a path or a variable name, never the key); for a remote one (`[kms] url`)
    the deployment file that names it, which the worker loads as the parent did (the
    access key's secret stays in its 0600 file, never on the control channel)."""
    args = list(getattr(kms, "cli_args", ()) or ())
    if getattr(kms, "url", None) is not None and args[:1] == ["--deployment"] and len(args) == 2:
        return {"deployment": args[1], "caller": "kms proxy worker"}
    source = getattr(kms, "root_key_source", None)
    if source is None or not hasattr(kms, "home"):
        raise ConfigError("several sidecar workers need an embedded KMS (set workers = 1 for this one)")
    if source.kind == "passphrase-file" and source.value.startswith("/dev/fd/"):
        raise ConfigError(f"sidecar workers cannot read the passphrase again from {source.value}: "
                          "set workers = 1, or give the passphrase in a file or a variable")
    return {"home": str(kms.home), "root_key": [source.kind, source.value],
            "refresh_interval": getattr(kms, "refresh_interval", 1.0), "caller": "kms proxy worker"}


def _ensure_ca(confdir: str) -> None:
    """Create mitmproxy's CA once, here, before the workers start: each would otherwise
    make its own (forward-mode clients trust one file)."""
    path = Path(confdir)
    if (path / "mitmproxy-ca.pem").exists():
        return
    from mitmproxy.certs import CertStore

    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    CertStore.from_store(path, "mitmproxy", 2048)


def _kill(worker: _Worker, grace: float = 0.0) -> None:
    try:
        worker.proc.wait(grace)
    except subprocess.TimeoutExpired:
        worker.proc.kill()
        worker.proc.wait(10)
    worker.close()
