"""The typed shape of a deployment: `[kms]`, `[[keys]]`, and the front ends' sections.

Everything here is frozen: a running deployment holds one `Deployment` and a reload
swaps it for another, so two configs compare with `==` and nothing mutates one in place.
Front-end sections are validated by the front end's own `config_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from kmscore import rules
from kmscore.errors import KmsError
from kmscore.rootkey import RootKeySource
from kmscore.specs import KeySpec, KeyUsage, Origin


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RootKeyFile(_Model):
    source: Literal["file"]
    path: str
    """A file holding 32 bytes in base64, mode 0600 (`kms init` makes one)."""


class RootKeyEnv(_Model):
    source: Literal["env", "passphrase"]
    var: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The environment variable's *name* (never its value: that stays out of the file)."""


class AuditSettings(_Model):
    verify_on_start: bool = True
    """`kms up` walks the audit chain before starting and refuses a broken log."""


class KmsSection(_Model):
    """`[kms]`: which key store, which root key, how fast revocation reaches front ends."""

    home: str | None = None
    """Key store folder; relative to the config file. Unset: $KMS_HOME or ~/.local/share/keyhold."""
    root_key: Annotated[RootKeyFile | RootKeyEnv, Field(discriminator="source")] | None = None
    revocation_bound: float = Field(default=5.0, ge=0.1, le=300)
    """Seconds within which a key disabled elsewhere stops working in this process."""
    audit: AuditSettings = AuditSettings()
    metrics: str | None = None
    """host:port for `kms up`'s /metrics, /healthz and /readyz (kmscore.health)."""

    # -- a remote KMS (kmscore.remote): front ends on a host without the key store --------
    url: str | None = None
    """`https://HOST:PORT` of a `kms serve` (http:// only to loopback): with it, this host
    opens no key store and front ends use the remote facade."""
    access_key_file: str | None = None
    """With `url`: a 0600 file holding the access key (`kms access-key create --json`'s output)."""
    ca_file: str | None = None
    """With `url`: the CA (PEM) that signed the server's certificate (default: the system's)."""
    fingerprint: str | None = None
    """With `url`: the SHA-256 fingerprint of the server's self-signed certificate, pinned."""
    timeout: float = Field(default=10.0, gt=0, le=300)
    """With `url`: seconds a call may take before it fails closed (KmsUnreachable)."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from kmscore.remote import kms_url_problem

        problem = kms_url_problem(v)
        if problem:
            raise ValueError(problem)
        return v.rstrip("/")

    @field_validator("access_key_file", "ca_file")
    @classmethod
    def _path(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        base = (info.context or {}).get("config_dir")
        return str(Path(base or ".", Path(v).expanduser()).resolve())

    @field_validator("fingerprint")
    @classmethod
    def _fingerprint(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from kmscore.remote import normalize_fingerprint

        try:
            return normalize_fingerprint(v)
        except KmsError as e:
            raise ValueError(str(e)) from None

    @model_validator(mode="after")
    def _remote(self) -> "KmsSection":
        if self.url is None:
            given = [n for n in ("access_key_file", "ca_file", "fingerprint") if getattr(self, n) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only with url (a remote KMS)")
        else:
            if self.access_key_file is None:
                raise ValueError("url needs access_key_file: the access key this host signs its requests with")
            if self.root_key is not None:
                raise ValueError("with url the key store is remote: this host holds no root key (drop root_key)")
            if self.ca_file is not None and self.fingerprint is not None:
                raise ValueError("give ca_file or fingerprint, not both")
            if self.url.startswith("http://") and (self.ca_file or self.fingerprint):
                raise ValueError("ca_file and fingerprint are for https:// urls")
        return self

    @field_validator("metrics")
    @classmethod
    def _hostport(cls, v: str | None) -> str | None:
        if v is not None:
            _host, sep, port = v.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port, got {v!r}")
        return v

    def root_key_source(self) -> RootKeySource | None:
        rk = self.root_key
        if rk is None:
            return None
        return RootKeySource("file", rk.path) if isinstance(rk, RootKeyFile) else RootKeySource(rk.source, rk.var)


class KeyDecl(_Model):
    """One `[[keys]]` table: a key that must exist. Created if missing, never changed."""

    alias: str
    spec: KeySpec = KeySpec.AES_256
    usage: KeyUsage | None = None
    origin: Origin = Origin.KMS
    description: str = ""
    rotation_days: int | None = None

    @field_validator("spec", "usage", "origin", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        try:
            return rules.check_alias(v)
        except KmsError as e:
            raise ValueError(str(e)) from None

    @model_validator(mode="after")
    def _combination(self) -> "KeyDecl":
        try:
            rules.resolve_create(self.spec, self.usage, self.origin)
            if self.rotation_days is not None:
                if self.origin is not Origin.KMS or self.spec is not KeySpec.AES_256:
                    raise ValueError("only KMS-generated AES_256 keys rotate; drop rotation_days")
                rules.check_days(self.rotation_days, rules.ROTATION_DAYS, "rotation_days")
        except KmsError as e:
            raise ValueError(str(e)) from None
        return self

    @property
    def resolved_usage(self) -> KeyUsage:
        return rules.resolve_create(self.spec, self.usage, self.origin)


@dataclass(frozen=True)
class Deployment:
    """One loaded, shape-checked config file."""

    path: Path
    kms: KmsSection
    home: Path | None
    """`kms.home` resolved against the config file's folder."""
    root_key: RootKeySource | None
    keys: tuple[KeyDecl, ...]
    sections: tuple[tuple[str, tuple[Any, ...]], ...]
    """(config key, entries) per installed front end, in front-end order; empty ones too."""
    secrets: tuple[tuple[str, str], ...] = ()
    """(value, variable name) of every `${VAR}` used: for scrubbing messages, never shown."""

    def entries(self, config_key: str) -> tuple[Any, ...]:
        return dict(self.sections).get(config_key, ())

    @property
    def file(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:  # the secrets field must never be printed
        return f"<Deployment {self.path}: {len(self.keys)} keys, " + ", ".join(
            f"{len(e)} {k}" for k, e in self.sections
        ) + ">"
