"""The `[[proxy]]` section of a deployment TOML: pydantic models plus semantic checks.

Pydantic checks shape (extra keys are errors); `check` checks meaning against the key
store (key exists, usage fits the action, field paths parse, algorithm fits the key).
`sidecar.rules.compile_entry` turns a checked entry into frozen runtime objects.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kmscore.errors import KmsError

from sidecar import fields, httpsig

DEFAULT_KEY = "sidecar/default"


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1
MiB = 1024 * 1024


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Model):
    host: str | None = None
    """A glob on the host, e.g. `*.example.com`: reverse mode, the Host header the client
    sent (virtual hosts in front of one upstream); forward mode, the real destination."""
    path: str = "*"
    """A glob on the canonical path without the query, e.g. `/api/users/*` (`*` crosses
    `/`). Requests are matched after `sidecar.canonical` (escapes of unreserved
    characters decoded, `//` merged, dot segments removed), so write the path that way."""
    methods: tuple[str, ...] | None = None
    case_sensitive: bool | None = None
    """Match the path's letters exactly (true) or in any case (false). Unset: any case for
    a route with a request or response action (a case-insensitive upstream cannot dodge
    it with `/STORE`), exact case for a route without one (it cannot swallow `/API` from
    a later encrypt route)."""
    other_methods: Literal["refuse", "pass"] = "refuse"
    """A request whose host and path match but whose method is not in `methods`: `refuse`
    it with 405 when this route would have encrypted or verified its body (or encrypted
    its response) and the route that takes it instead would not do the same; `pass` it
    on to the next routes as if this route did not exist."""

    @field_validator("methods")
    @classmethod
    def _upper(cls, v):
        return None if v is None else tuple(m.upper() for m in v)


class Action(_Model):
    action: Literal["encrypt", "decrypt", "sign", "verify"]
    key: str | None = None
    """A key id or alias. encrypt/decrypt default to `sidecar/default`; sign/verify need one."""
    fields: tuple[str, ...] | None = None
    """encrypt/decrypt only these JSON fields (paths like `user.ssn`, `cards[*].number`)."""
    algorithm: str | None = None
    """sign/verify: an RFC 9421 algorithm name; default from the key spec."""
    keyid: str | None = None
    """sign: the `keyid` parameter (default: the key alias or id). verify: the expected keyid."""
    label: str = "sig1"
    max_age: int = Field(default=300, ge=1, le=86400)
    """verify: replay window in seconds on `created` (both directions of clock skew)."""
    require_nonce: bool = True
    """verify: a signature must carry a `nonce`; each nonce is accepted once within the
    window (remembered in bounded memory across reloads). sign: a nonce is always sent."""
    covers: tuple[str, ...] | None = None
    """sign: the components to sign (those the message has). verify: the components a
    signature must cover (a header only when the message carries it). Default, requests:
    @method, @target-uri (with the query), content-digest, content-type; responses:
    @status, content-digest, content-type."""

    @field_validator("covers")
    @classmethod
    def _components(cls, v):
        if v is None:
            return v
        for name in v:
            if name.startswith("@") and name not in httpsig.DERIVED:
                raise ValueError(f"unknown derived component {name!r}; choose from: {', '.join(httpsig.DERIVED)}")
            if not name.startswith("@") and not re.fullmatch(r"[a-z0-9!#$%&'*+.^_`|~-]+", name):
                raise ValueError(f"{name!r} is not a lower-case header name")
        if "content-digest" not in v:
            raise ValueError("covers must include content-digest (the body is signed through it)")
        return tuple(dict.fromkeys(v))

    @model_validator(mode="after")
    def _shape(self):
        if self.action in ("sign", "verify"):
            if self.fields is not None:
                raise ValueError(f"{self.action} takes no fields")
            if not self.key:
                raise ValueError(f"{self.action} needs a key (an HMAC, RSA or EC key)")
        elif self.algorithm is not None:
            raise ValueError(f"{self.action} takes no algorithm")
        elif self.covers is not None:
            raise ValueError(f"{self.action} takes no covers")
        return self

    @property
    def key_name(self) -> str:
        return self.key or DEFAULT_KEY


class Route(_Model):
    name: str | None = None
    match: Match = Match()
    request: Action | None = None
    response: Action | None = None
    allow_upgrade: bool = False
    """Let WebSocket / h2c upgrades through although the route has a step: the upgraded
    connection's bytes then pass unencrypted (sidecar.addons.guard refuses them otherwise)."""


class Limits(_Model):
    max_buffered_body: int = Field(default=16 * MiB, ge=1024, le=1024 * MiB)
    """Bodies up to this size are buffered (clean JSON errors); larger whole-body
    encrypt/decrypt bodies stream; larger bodies for fields/sign/verify get 413."""


class ProxyEntry(_Model):
    """One `[[proxy]]` table."""

    name: str | None = None
    listen: str = "127.0.0.1:8081"
    mode: Literal["reverse", "forward"] = "reverse"
    upstream: str | None = None
    verify_upstream: bool = True
    upstream_ca: str | None = None
    """A PEM bundle of CAs trusted for upstream HTTPS (default: the system store)."""
    unmatched: Literal["pass", "deny"] = "pass"
    literal_semicolons: bool = False
    """A `;` in a request path is refused with 400 (servlet containers drop `;params` from
    segments, so `/store;x/a` is `/store/a` to them); true reads it as an ordinary
    character, for upstreams known to keep it."""
    limits: Limits = Limits()
    metrics: str | None = None
    """host:port of a Prometheus endpoint (all proxies of the process share one registry)."""
    access_log: str | None = None
    """A file for JSON access-log lines; `-` for stderr; unset: the `keyhold.sidecar.access` logger."""
    frame_size: int = Field(default=65536, ge=4096, le=4 * MiB)
    workers: int | None = Field(default=None, ge=1, le=256)
    """Engine processes serving this proxy (`sidecar.pool`); unset: one per CPU. They
    share the listening address (one SO_REUSEPORT socket each, bound by the parent)."""
    route: tuple[Route, ...] = ()

    @field_validator("listen", "metrics")
    @classmethod
    def _hostport(cls, v):
        if v is None:
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {v!r}")
        return v

    @field_validator("upstream")
    @classmethod
    def _url(cls, v):
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be an http:// or https:// URL, got {v!r}")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError("upstream is scheme://host[:port] without a path")
        return v

    @model_validator(mode="after")
    def _mode(self):
        if self.mode == "reverse" and not self.upstream:
            raise ValueError("reverse mode needs an upstream URL")
        if self.mode == "forward" and self.upstream:
            raise ValueError("forward mode takes no upstream (clients choose the target)")
        return self

    @property
    def label(self) -> str:
        return self.name or self.listen

    @property
    def worker_count(self) -> int:
        return self.workers or cpu_count()

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0] or "127.0.0.1"

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])


USAGE_FOR = {"encrypt": "ENCRYPT_DECRYPT", "decrypt": "ENCRYPT_DECRYPT"}
NOT_IN = {"request": frozenset({"@status"}),
          "response": frozenset(httpsig.DERIVED) - {"@status"}}
"""Derived components a message of that direction does not have (responses would need
RFC 9421's `;req` parameter, which the sidecar does not implement)."""


def check(entries: Sequence[ProxyEntry], kms) -> list[tuple[str, str]]:
    """Semantic problems, each as (key path inside its entry, message); among them the
    errors of `sidecar.routelint` (routes that never match or never apply).

    Paths are relative to the entry; with several entries they are prefixed
    `[i]` so the config loader can place them (`proxy[1].route[0].request.key`).
    """
    from sidecar.routelint import lint_entry  # it imports this module's models

    problems: list[tuple[str, str]] = []
    many = len(entries) > 1
    listens: dict[str, int] = {}
    for i, entry in enumerate(entries):
        pre = f"[{i}]." if many else ""
        if entry.listen in listens:
            problems.append((f"{pre}listen", f"{entry.listen} is also used by proxy[{listens[entry.listen]}]"))
        listens.setdefault(entry.listen, i)
        if many and (entry.verify_upstream, entry.upstream_ca) != (entries[0].verify_upstream, entries[0].upstream_ca):
            problems.append((f"{pre}verify_upstream", "all proxies of one process share verify_upstream and upstream_ca"))
        problems.extend((path, msg) for path, msg, severity in lint_entry(entry, pre) if severity == "error")
        for r, route in enumerate(entry.route):
            for direction in ("request", "response"):
                action = getattr(route, direction)
                if action is not None:
                    where = f"{pre}route[{r}].{direction}"
                    problems.extend(check_action(where, action, kms))
                    wrong = sorted(set(action.covers or ()) & NOT_IN[direction])
                    if wrong:
                        problems.append((f"{where}.covers", f"a {direction} has no {', '.join(wrong)}"))
    return problems


def warnings(entries: Sequence[ProxyEntry]) -> list[tuple[str, str]]:
    """What runs but maybe not as meant (unmatched requests that pass), as `check` places it."""
    from sidecar.routelint import lint_entry

    many = len(entries) > 1
    return [(path, msg) for i, entry in enumerate(entries)
            for path, msg, severity in lint_entry(entry, f"[{i}]." if many else "") if severity == "warning"]


def check_action(where: str, action: Action, kms) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for f in action.fields or ():
        try:
            fields.parse(f)
        except fields.PathSyntaxError as e:
            out.append((f"{where}.fields", str(e)))
    try:
        meta = kms.describe_key(action.key_name)
    except KmsError as e:
        return [*out, (f"{where}.key", str(e))]
    spec, usage = _value(meta.spec), _value(meta.usage)
    if action.action in USAGE_FOR:
        if spec != "AES_256":
            out.append((f"{where}.key", f"{action.action} needs an AES_256 key; {action.key_name} is {spec} ({usage})"))
        return out
    alg_name = action.algorithm or httpsig.DEFAULT_FOR_SPEC.get(spec)
    if alg_name is None:
        out.append((f"{where}.key", f"{action.action} needs an HMAC, RSA or EC key; {action.key_name} is {spec}"))
        return out
    alg = httpsig.ALGORITHMS.get(alg_name)
    if alg is None:
        out.append((f"{where}.algorithm", f"unknown algorithm {alg_name!r}; choose one of: {', '.join(httpsig.ALGORITHMS)}"))
    elif alg.family != spec.split("_")[0]:
        out.append((f"{where}.algorithm", f"{alg_name} needs a {alg.family} key; {action.key_name} is {spec}"))
    elif alg.family == "EC" and spec != {32: "EC_P256", 48: "EC_P384"}[alg.ec_size]:
        out.append((f"{where}.algorithm", f"{alg_name} does not fit key {action.key_name} ({spec})"))
    elif alg.family == "HMAC" and spec != "HMAC_" + alg.name[-3:]:
        out.append((f"{where}.algorithm", f"{alg_name} does not fit key {action.key_name} ({spec})"))
    elif alg.family == "RSA" and usage != "SIGN_VERIFY":
        out.append((f"{where}.key", f"{action.action} needs a SIGN_VERIFY key; {action.key_name} is {spec} ({usage})"))
    return out


def _value(v) -> str:
    return getattr(v, "value", v)


def parse_entries(raw: object) -> list[ProxyEntry]:
    """`[[proxy]]` tables (a list of dicts) into entries; pydantic errors become ConfigError."""
    from pydantic import ValidationError

    from sidecar.errors import ConfigError

    if not isinstance(raw, list):
        raise ConfigError("proxy: expected an array of tables ([[proxy]])")
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(ProxyEntry.model_validate(item))
        except ValidationError as e:
            err = e.errors()[0]
            loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
            raise ConfigError(f"proxy[{i}]{loc}: {err['msg'].removeprefix('Value error, ')}") from None
    return out
