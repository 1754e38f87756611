"""The sidecar as a keyhold front end: the `kms proxy` command, the `[[proxy]]` config
section, and `kms up` (start / live reload / stop)."""

from __future__ import annotations

from collections.abc import Sequence

from kmscore.frontend import Frontend

from sidecar.cli import register_cli
from sidecar.config import ProxyEntry, check, warnings


def start(entries: Sequence[ProxyEntry], kms):
    """Start every entry: in one embedded mitmproxy when each wants one worker (the Engine
    is the Service: `apply(entries)` reloads routes live, restarts only changed listeners;
    `stop()` drains), else in a `WorkerPool` of engine processes (same Service, plus
    `poll()`, which restarts a worker that died)."""
    return start_service(list(entries), kms)


def start_service(entries: list[ProxyEntry], kms):
    from sidecar.pool import WorkerPool, pool_size

    if pool_size(entries) > 1:
        pool = WorkerPool(entries, kms)
        pool.start()
        return pool
    from sidecar.engine import Engine

    engine = Engine(entries, kms)
    engine.start()
    return engine


FRONTEND = Frontend(
    name="sidecar",
    register_cli=register_cli,
    config_key="proxy",
    config_model=ProxyEntry,
    check=check,
    warnings=warnings,
    start=start,
)
