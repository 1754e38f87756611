"""The metrics listener: `/metrics` (Prometheus), `/healthz`, `/readyz`; 404 elsewhere.

    /healthz  200 while the process serves requests at all (liveness: restart me if not)
    /readyz   200 when the deployment can do its work, else 503 with the failed checks
              (the key store answers, every key the config names is usable, every mount
              is mounted, every proxy accepts connections): see kmscore.deploy.status
    /metrics  the registries given (KMS operations, mounts, proxies)

Used by `kms up` (`[kms] metrics = "host:port"`) and the sidecar's per-proxy `metrics`.
A table of routes, not a framework: stdlib http.server in a daemon thread.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

Readiness = Callable[[], "list[dict[str, Any]]"]
"""Returns checks: {"check": name, "ok": bool, "detail": str}."""


class HealthServer:
    """A started listener; `shutdown()` stops it."""

    def __init__(self, host: str, port: int, registries: Sequence[CollectorRegistry],
                 ready: Readiness | None = None) -> None:
        self.registries = list(registries)
        self.ready = ready
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self.address = "%s:%d" % self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"keyhold-metrics-{self.address}", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the routes ------------------------------------------------------------------
    def metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, b"".join(generate_latest(r) for r in self.registries)

    def healthz(self) -> tuple[int, str, bytes]:
        return 200, "text/plain; charset=utf-8", b"ok\n"

    def readyz(self) -> tuple[int, str, bytes]:
        checks = self.ready() if self.ready else []
        ok = all(c["ok"] for c in checks)
        body = json.dumps({"ready": ok, "checks": checks}, indent=1).encode() + b"\n"
        return (200 if ok else 503), "application/json", body

    ROUTES = {"/metrics": metrics, "/healthz": healthz, "/readyz": readyz}


def _handler(owner: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "keyhold-metrics"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - scrapes are not news
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            route = HealthServer.ROUTES.get(self.path.split("?", 1)[0])
            if route is None:
                status, ctype, body = 404, "text/plain; charset=utf-8", b"not found: try /metrics, /healthz, /readyz\n"
            else:
                try:
                    status, ctype, body = route(owner)
                except Exception as e:  # noqa: BLE001 - a failing check is "not ready", never a crash
                    status, ctype, body = 503, "text/plain; charset=utf-8", f"error: {type(e).__name__}\n".encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_HEAD = do_GET

    return Handler


class KmsMetrics:
    """KMS operations by name and outcome, counted where every operation is recorded:
    the audit log's `record` (so nothing is counted that was not audited)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.operations = Counter("keyhold_kms_operations", "KMS operations by operation and outcome",
                                  ["operation", "outcome"], registry=self.registry)
        self.mount_up = Gauge("keyhold_mount_up", "1 if the [[mount]] is mounted", ["mount_point"],
                              registry=self.registry)
        self.ready = Gauge("keyhold_ready", "1 if every readiness check passes", registry=self.registry)

    def instrument(self, kms: Any) -> None:
        """Count at both ways into the audit log: `record` (cryptographic operations, via
        the journal) and `append_now` (lifecycle changes, in the change's transaction)."""
        audit = getattr(kms, "_audit", None)
        if audit is None or getattr(audit.record, "_counted", False):
            return
        for name in ("record", "append_now"):
            original = getattr(audit, name, None)
            if original is not None:
                setattr(audit, name, self._counting(original))

    def _counting(self, original):
        def counted(operation: str, key_id: str | None, outcome: str = "ok", *args: Any, **kwargs: Any) -> None:
            original(operation, key_id, outcome, *args, **kwargs)
            self.operations.labels(operation, outcome.split(":", 1)[0]).inc()

        counted._counted = True  # type: ignore[attr-defined]
        return counted
