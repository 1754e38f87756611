"""Run the app: uvicorn (the reference ASGI server: h11/httptools, TLS from the ssl
module, graceful shutdown on SIGTERM) on one listening address.

Skeleton: TLS (given or self-signed with a printed fingerprint) is filled in by the
server work; today only plain HTTP on loopback."""

from __future__ import annotations

import ipaddress
import logging

import uvicorn

from kmsserve.apis import all_apis
from kmsserve.app import ServerContext, create_app
from kmsserve.auth.accesskeys import AccessKeys
from kmsserve.errors import ServeError


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(kms, host: str, port: int, *, plain_http: bool = False) -> None:
    """Serve until SIGINT/SIGTERM."""
    if not plain_http:
        raise ServeError("TLS is not implemented yet: pass --plain-http (loopback only)")
    if not is_loopback(host):
        raise ServeError(f"plain HTTP is only allowed on loopback, not on {host}")
    keys = AccessKeys(kms)
    app = create_app(all_apis(), ServerContext(kms, keys))
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
    logging.getLogger("kmsserve").info("kms serve: listening on http://%s:%d", host, port)
    print(f"kms serve: listening on http://{host}:{port}", flush=True)
    try:
        uvicorn.Server(config).run()
    finally:
        keys.close()
