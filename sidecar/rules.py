"""Routing rules as frozen runtime objects, compiled from a checked `ProxyEntry`.

Pure: matching a request is a function of (host, path, method). A reload builds a new
`RouteTable` and swaps one reference, so a request sees the old rules or the new ones,
never a mix.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, replace

from sidecar import fields, httpsig
from sidecar.config import Action, ProxyEntry


@dataclass(frozen=True)
class Step:
    """One direction's action of a route, ready to run."""

    kind: str  # encrypt | decrypt | sign | verify
    key: str
    fields: tuple[fields.FieldPath, ...] = ()
    algorithm: httpsig.Algorithm | None = None
    keyid: str | None = None
    label: str = "sig1"
    max_age: int = 300
    key_id: str | None = None  # resolved at load, for the access log

    @property
    def whole_body(self) -> bool:
        return self.kind in ("encrypt", "decrypt") and not self.fields

    @property
    def name(self) -> str:
        if self.kind in ("encrypt", "decrypt"):
            return f"{self.kind}-fields" if self.fields else f"{self.kind}-body"
        return self.kind


@dataclass(frozen=True)
class Route:
    name: str
    host: re.Pattern | None
    path: re.Pattern
    methods: frozenset[str] | None
    request: Step | None
    response: Step | None

    @property
    def action(self) -> str:
        """`encrypt-fields+decrypt-fields`, `sign`, ... : the metrics label of this route."""
        return "+".join(s.name for s in (self.request, self.response) if s is not None) or "pass"

    def matches(self, host: str, path: str, method: str) -> bool:
        return (
            (self.methods is None or method.upper() in self.methods)
            and (self.host is None or self.host.fullmatch(host.lower()) is not None)
            and self.path.fullmatch(path) is not None
        )


@dataclass(frozen=True)
class RouteTable:
    entry: ProxyEntry
    routes: tuple[Route, ...]

    def match(self, host: str, path: str, method: str) -> Route | None:
        """The first route that matches, in config order."""
        for route in self.routes:
            if route.matches(host, path, method):
                return route
        return None


def compile_step(action: Action | None, default_keyid: str | None = None) -> Step | None:
    if action is None:
        return None
    alg = None
    if action.action in ("sign", "verify"):
        alg = httpsig.ALGORITHMS[action.algorithm] if action.algorithm else None
    return Step(
        kind=action.action,
        key=action.key_name,
        fields=tuple(fields.parse(f) for f in action.fields or ()),
        algorithm=alg,
        keyid=action.keyid,
        label=action.label,
        max_age=action.max_age,
    )


def compile_entry(entry: ProxyEntry, kms=None) -> RouteTable:
    """Frozen routes for an entry. With `kms`, sign/verify steps get their default
    algorithm from the key spec (the config check has already vetted the key)."""
    routes = []
    for i, r in enumerate(entry.route):
        steps = [compile_step(r.request), compile_step(r.response)]
        if kms is not None:
            steps = [_with_algorithm(s, kms) for s in steps]
        routes.append(
            Route(
                name=r.name or f"route[{i}]",
                host=_glob(r.match.host.lower()) if r.match.host else None,
                path=_glob(r.match.path),
                methods=frozenset(r.match.methods) if r.match.methods else None,
                request=steps[0],
                response=steps[1],
            )
        )
    return RouteTable(entry, tuple(routes))


def _with_algorithm(step: Step | None, kms) -> Step | None:
    """Fill in the key id and, for sign/verify, the default algorithm of the key's spec."""
    if step is None:
        return step
    meta = kms.describe_key(step.key)
    step = replace(step, key_id=meta.key_id)
    if step.kind not in ("sign", "verify") or step.algorithm is not None:
        return step
    spec = getattr(meta.spec, "value", meta.spec)
    return replace(step, algorithm=httpsig.ALGORITHMS[httpsig.DEFAULT_FOR_SPEC[spec]])


def _glob(pattern: str) -> re.Pattern:
    return re.compile(fnmatch.translate(pattern), re.DOTALL)
