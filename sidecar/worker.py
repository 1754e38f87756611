"""One worker process of a `kms proxy` pool: `python -m sidecar.worker CONTROL_FD SLOT`.

A worker is an ordinary `Engine` that serves the listening sockets its parent bound and
takes every order over the control channel (`sidecar.control`):

    start    {kms, entries, listens, confdir, replay}  + one socket per listen address
    prepare  {entries, listens}                         + sockets of new addresses
    commit / abort                                      the second phase of a reload
    stop     {drain}

It opens the key store itself (the same home and root key source as the parent: a
path or a variable name crosses the channel, never a key). SIGINT, SIGTERM and SIGHUP
are ignored: Ctrl-C reaches the whole process group and systemd signals the whole unit, and
the parent must be the one to drain and stop the workers in order. When the control
channel closes (the parent exited or was killed) the worker stops by itself, so no worker
ever outlives its parent.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys

from sidecar import control

log = logging.getLogger("keyhold.sidecar")
ORPHAN_DRAIN = 5.0


def _open_kms(spec: dict):
    from kmscore import Kms
    from kmscore.rootkey import RootKeySource

    if "deployment" in spec:  # a remote KMS: opened from the deployment, as by the parent
        from kmscore.config import load_config
        from kmscore.deploy.up import open_kms

        return open_kms(load_config(spec["deployment"]), caller=spec["caller"])

    source = RootKeySource(*spec["root_key"]) if spec.get("root_key") else None
    return Kms(spec["home"], root_key=source, caller=spec["caller"], refresh_interval=spec["refresh_interval"])


def _entries(raw: list[dict]):
    from sidecar.config import ProxyEntry

    return [ProxyEntry.model_validate(e) for e in raw]


def _log_to_stderr(slot: int) -> None:
    """The parent's log format when it set one up (`kmscore.logs` exports it in the
    environment: `kms up` and `kms proxy` do), else a line tagged with the worker."""
    if os.environ.get("KMS_LOG_FORMAT"):
        from kmscore.logs import setup_logging

        setup_logging(export=False)
        return
    keyhold = logging.getLogger("keyhold")
    if not keyhold.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s kms proxy[worker {slot}]: %(message)s",
                                               "%Y-%m-%dT%H:%M:%S"))
        keyhold.addHandler(handler)
        keyhold.setLevel(logging.INFO)
    access = logging.getLogger("keyhold.sidecar.access")
    if access.level == logging.NOTSET:
        access.setLevel(logging.WARNING)


class Worker:
    def __init__(self, chan: socket.socket, slot: int) -> None:
        self.chan = chan
        self.slot = slot
        self.engine = None
        self.kms = None
        self.sockets: dict[str, socket.socket] = {}
        self._pending = None  # (prepared tables, sockets) between prepare and commit

    def reply(self, msg: dict, **fields) -> None:
        control.send(self.chan, {"seq": msg.get("seq"), **fields})

    def serve(self) -> int:
        try:
            msg, socks = control.receive(self.chan)
        except control.ChannelClosed:
            return 1
        try:
            self.start(msg, socks)
        except Exception as e:  # noqa: BLE001 - told to the parent, which reports it
            self.reply(msg, ok=False, error=_message(e))
            return 1
        self.reply(msg, ok=True, pid=os.getpid())
        while True:
            try:
                msg, socks = control.receive(self.chan)
            except control.ChannelClosed:
                log.warning("the parent process is gone: stopping")
                self.engine.stop(ORPHAN_DRAIN)
                self.kms.close()
                return 0
            op = msg.get("op")
            try:
                if op == "prepare":
                    self.prepare(msg, socks)
                    self.reply(msg, ok=True)
                elif op == "commit":
                    self.reply(msg, ok=True, changes=self.commit())
                elif op == "abort":
                    self.abort()
                    self.reply(msg, ok=True)
                elif op == "stop":
                    self.engine.stop(float(msg.get("drain", 30.0)))
                    self.reply(msg, ok=True)
                    self.kms.close()  # its audit records into the store, before the exit
                    return 0
                elif op == "ping":
                    self.reply(msg, ok=True, pid=os.getpid())
                else:
                    self.reply(msg, ok=False, error=f"unknown control operation {op!r}")
            except control.ChannelClosed:
                continue  # the next receive sees the end and stops
            except Exception as e:  # noqa: BLE001 - the parent decides (abort, or restart this worker)
                self.reply(msg, ok=False, error=_message(e))

    def start(self, msg: dict, socks: list[socket.socket]) -> None:
        from sidecar.engine import Engine
        from sidecar.sharedreplay import SharedReplayGuard

        self.sockets = dict(zip(msg["listens"], socks, strict=True))
        # the access log where the parent has it: kms up logs it, kms proxy only with access_log
        logging.getLogger("keyhold.sidecar.access").setLevel(int(msg.get("access_level", logging.WARNING)))
        self.kms = _open_kms(msg["kms"])
        entries = _entries(msg["entries"])
        self.engine = Engine(entries, self.kms, confdir=msg["confdir"], sockets=self.sockets, side_services=False,
                             replay=SharedReplayGuard(msg["replay"]))
        self.engine.start()

    def prepare(self, msg: dict, socks: list[socket.socket]) -> None:
        self.abort()  # a prepare that was never committed nor aborted (its parent gave up)
        new = dict(zip(msg["listens"], socks, strict=True))
        prepared = self.engine.prepare(_entries(msg["entries"]))
        self._pending = (prepared, new)

    def commit(self) -> list[str]:
        if self._pending is None:
            raise RuntimeError("commit without a prepared reload")
        prepared, new = self._pending
        self._pending = None
        from sidecar.listeners import serve_inherited

        wanted = {e.listen for e in prepared[0]}
        sockets = {listen: s for listen, s in {**self.sockets, **new}.items() if listen in wanted}
        serve_inherited(sockets)
        try:
            changes = self.engine.commit(prepared)
        except BaseException:
            serve_inherited(self.sockets)  # the engine put its old listeners back
            for s in new.values():
                s.close()
            raise
        for listen, s in self.sockets.items():
            if sockets.get(listen) is not s:
                s.close()  # its listener has stopped (each server accepted on a duplicate)
        self.sockets = sockets
        return changes

    def abort(self) -> None:
        if self._pending is not None:
            for s in self._pending[1].values():
                s.close()
            self._pending = None


def _message(e: BaseException) -> str:
    """What a failure says to the operator (kmscore and sidecar errors are written for
    that); anything else by its type only, since a foreign message may quote data."""
    from kmscore.errors import KmsError

    from sidecar.errors import SidecarError

    if isinstance(e, (KmsError, SidecarError)):
        return str(e)
    return f"{type(e).__name__} (see the worker's log)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    fd, slot = int(argv[0]), int(argv[1])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a terminal's hangup reaches the group too
        signal.signal(sig, signal.SIG_IGN)
    _log_to_stderr(slot)
    chan = socket.socket(fileno=fd)
    try:
        return Worker(chan, slot).serve()
    finally:
        chan.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
