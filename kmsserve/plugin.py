"""kms serve as a keyhold front end: the `kms serve` and `kms access-key` commands, the
`[serve]` table of the deployment file, and `kms up` running it.

Under `kms up` the server runs in a thread of the `kms up` process, not in a child
process: it then shares that process's Kms (one key cache, one audit journal, the same
revocation bound as the mounts and proxies beside it), a taken port or a bad certificate
fails `kms up`'s start (or a reload) synchronously with the file's key path, and stopping
is a flag plus a drain. uvicorn only takes over signals on the main thread, so `kms up`
keeps its own SIGTERM/SIGHUP handling. What a thread costs: the server shares the GIL
with an in-process sidecar; a crash of the server thread is caught, logged and the
server restarted by `poll()` (it cannot take the other front ends down).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from kmscore.frontend import Frontend
from kmsserve.cli import register_cli
from kmsserve.errors import ServeError

log = logging.getLogger("keyhold.up")


class ServeEntry(BaseModel):
    """The `[serve]` table: where `kms up` serves the KMS (docs/API.md, docs/OPERATIONS.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str = "127.0.0.1:8443"
    """HOST:PORT; 0.0.0.0 or [::] for every address (TLS then required)."""
    cert: str | None = None
    """TLS certificate (PEM; relative to the config file). Unset with `key` unset: a
    self-signed certificate made in the KMS home on first start."""
    key: str | None = None
    """Its private key (PEM, 0600)."""
    plain_http: bool = False
    """No TLS: loopback addresses only (for a local test, or behind a TLS proxy on the host)."""
    request_timeout: float = Field(default=10.0, gt=0, le=3600)
    """Seconds for a request's headers, and then its body, to arrive."""

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        from kmsserve.server import parse_listen

        try:
            parse_listen(v, "listen")
        except ServeError:
            raise ValueError(f"expected HOST:PORT, got {v!r}") from None
        return v

    @field_validator("cert", "key")
    @classmethod
    def _path(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        base = (info.context or {}).get("config_dir") or os.getcwd()
        return os.path.normpath(os.path.join(base, os.path.expanduser(v)))

    @model_validator(mode="after")
    def _tls(self) -> "ServeEntry":
        from kmscore.remote import is_loopback
        from kmsserve.server import parse_listen

        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: set both, or neither for a self-signed certificate")
        if self.plain_http:
            if self.cert is not None:
                raise ValueError("plain_http = true serves no certificate: drop cert/key or plain_http")
            host, _ = parse_listen(self.listen)
            if not is_loopback(host):
                raise ValueError(f"plain_http is only allowed on loopback, not on {host}")
        return self

    def settings(self):
        from kmsserve.server import ServeSettings

        return ServeSettings(listen=self.listen, cert=self.cert, key=self.key, plain_http=self.plain_http,
                             request_timeout=self.request_timeout)


def check(entries: Sequence[ServeEntry], kms: Any) -> list[tuple[str, str]]:
    """What `kms check` finds before `kms up` would: a certificate that does not load."""
    from kmsserve import tls

    problems = []
    for entry in entries:
        if entry.cert and entry.key:
            try:
                tls.load(entry.cert, entry.key)
            except ServeError as e:
                problems.append(("cert", str(e)))
    return problems


class ServeService:
    """`kms up`'s handle on the running server (kmscore.frontend.Service)."""

    def __init__(self, entries: Sequence[ServeEntry], kms: Any) -> None:
        self.kms = kms
        self.entry = entries[0]
        self.server = self._start(self.entry)

    def _start(self, entry: ServeEntry):
        from kmscore.errors import KmsError
        from kmsserve.server import RunningServer

        try:
            server = RunningServer(self.kms, entry.settings())
            server.start()
        except ServeError as e:  # kms up reports it at [serve] and keeps (or restores) the old config
            raise KmsError(str(e)) from None
        return server

    def banner(self) -> list[str]:
        lines = [f"  serve      {self.server.describe()}"]
        if self.server.fingerprint:
            lines.append("             clients pin the fingerprint; access keys: kms access-key create --name N --policy FILE")
        return lines

    def apply(self, entries: Sequence[ServeEntry]) -> list[str]:
        """A changed `[serve]` restarts the listener (the port cannot be bound twice); if
        the new one cannot start, the old settings are put back by kms up's rollback."""
        new = entries[0]
        if new == self.entry:
            return []
        self.server.stop()
        self.entry = new
        self.server = self._start(new)
        return [f"restarted: {self.server.describe()}"]

    def poll(self) -> None:
        if not self.server.alive():
            log.error("serve: the server stopped unexpectedly; starting it again")
            self.server.stop()
            self.server = self._start(self.entry)

    def stop(self) -> None:
        self.server.stop()


def start(entries: Sequence[ServeEntry], kms: Any) -> ServeService:
    return ServeService(entries, kms)


FRONTEND = Frontend(name="serve", register_cli=register_cli, config_key="serve", config_model=ServeEntry,
                    config_table=True, check=check, start=start)
