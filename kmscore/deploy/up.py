"""`kms up`: one foreground process for a whole deployment.

The main thread owns everything: it starts the Deployer, then sleeps in short steps,
reloading when the watcher saw the file change or SIGHUP arrived, and stopping on
SIGTERM or SIGINT. Signal handlers only set flags (taking locks in a handler can
deadlock the thread it interrupted).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from kmscore.config import Deployment
from kmscore.deploy.runner import Deployer
from kmscore.deploy.status import banner, deployment_status
from kmscore.deploy.watch import ConfigWatcher
from kmscore.errors import AuditError
from kmscore.frontend import Frontend

log = logging.getLogger("keyhold.up")
TICK = 0.1


def open_kms(dep: Deployment, caller: str = "kms up"):
    """The Kms described by `[kms]` (not the CLI's --home): the embedded facade on the
    local key store, or with `[kms] url` the remote one (kmscore.remote.RemoteKms), for
    which no local store is opened or created. Front ends cannot tell them apart."""
    from kmscore.facade import Kms
    from kmscore.home import check_home, choose_home

    if dep.kms.url is not None:
        from kmscore.remote import Credentials, RemoteKms

        return RemoteKms(dep.kms.url, Credentials.load(dep.kms.access_key_file), ca_file=dep.kms.ca_file,
                         fingerprint=dep.kms.fingerprint, timeout=dep.kms.timeout, home=dep.home,
                         revocation_bound=dep.kms.revocation_bound,
                         cli_args=("--deployment", str(dep.path.absolute())))
    check_home(choose_home(dep.home, named_by=f"{dep.file} [kms] home"), may_create=True)  # world-writable?
    return Kms(dep.home, root_key=dep.root_key, caller=caller, refresh_interval=dep.kms.revocation_bound)


def verify_audit(kms, dep: Deployment) -> None:
    if dep.kms.audit.verify_on_start and dep.kms.url is None:  # a remote KMS's log is checked on its host
        report = kms.verify_audit()
        if not report.ok:
            raise AuditError(f"audit log check failed: {report.problem} (see `kms audit verify`; "
                             f"set kms.audit.verify_on_start = false to start anyway)")


class _Flags:
    def __init__(self) -> None:
        self.stop: str | None = None
        self.reload = False

    def on_signal(self, signum: int, _frame) -> None:
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.stop = signal.Signals(signum).name


def run(dep: Deployment, kms, frontends: Sequence[Frontend]) -> int:
    """Start, serve until SIGTERM/SIGINT, stop. Returns the process exit code."""
    flags = _Flags()
    previous = {s: signal.signal(s, flags.on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    deployer = Deployer(dep, kms, frontends)
    watcher = ConfigWatcher(dep.path)
    health = None
    metrics = kms_metrics(dep, kms)  # before start: the keys it creates are counted too
    try:
        verify_audit(kms, dep)
        source = dep.root_key.describe() if dep.root_key else "default"
        if dep.kms.url is not None:
            log.info("remote KMS %s (no local key store)", dep.kms.url)
        else:
            log.info("key store %s (root key: %s)", kms.home, deployer.scrub(source))
        watcher.start()  # before starting: an edit made while mounts come up is not lost
        deployer.start()
        if not deployer.services:
            log.warning("%s starts no front end: add [[mount]], [[proxy]] or [serve]", dep.file)
        health = start_health(dep, kms, deployer, metrics)
        extra = [line for service in deployer.services.values() for line in getattr(service, "banner", list)()]
        for line in banner(dep, kms.home, log_format=os.environ.get("KMS_LOG_FORMAT", "text"),
                           metrics=health.address if health else None, pid=os.getpid(), extra=extra):
            log.info("%s", deployer.scrub(line))
        while flags.stop is None:
            time.sleep(TICK)
            deployer.supervise()
            if flags.reload:
                flags.reload = False
                log.info("SIGHUP: reloading")
                watcher.mark_read()
                _reload(deployer)
            elif watcher.take_change():
                log.info("%s changed: reloading", Path(dep.file).name)
                _reload(deployer)
        log.info("%s: stopping", flags.stop)
        return 0
    finally:
        if health is not None:
            health.shutdown()
        watcher.stop()
        deployer.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def kms_metrics(dep: Deployment, kms):
    if not dep.kms.metrics:
        return None
    from kmscore.health import KmsMetrics

    metrics = KmsMetrics()
    metrics.instrument(kms)
    return metrics


def start_health(dep: Deployment, kms, deployer: Deployer, metrics):
    """`[kms] metrics`: /metrics (KMS operations, mounts), /healthz, /readyz."""
    if metrics is None:
        return None
    from kmscore.health import HealthServer

    def ready() -> list[dict]:
        checks = deployment_status(deployer.current, kms)
        for c in checks:
            if c["check"].startswith("mount "):
                metrics.mount_up.labels(c["check"][6:]).set(1 if c["ok"] else 0)
        metrics.ready.set(1 if all(c["ok"] for c in checks) else 0)
        return checks

    host, _, port = dep.kms.metrics.rpartition(":")
    try:
        server = HealthServer(host or "127.0.0.1", int(port), [metrics.registry], ready)
    except OSError as e:
        from kmscore.config import ConfigError, Problem

        raise ConfigError([Problem(dep.file, "kms.metrics", f"cannot listen on {dep.kms.metrics}: {e.strerror}")]) from None
    ready()
    return server


def _reload(deployer: Deployer) -> None:
    """A reload that fails in an unforeseen way must not take the deployment down."""
    try:
        deployer.reload()
    except Exception as e:  # noqa: BLE001 - logged; the running config stays
        log.error("reload failed (%s: %s); the running config stays", type(e).__name__, deployer.scrub(str(e)))
