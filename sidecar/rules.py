"""Routing rules as frozen runtime objects, compiled from a checked `ProxyEntry`.

Pure: matching a request is a function of (host, path, method, has a body), where host
and path are already in canonical form (`sidecar.canonical`). A reload builds a new
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
    require_nonce: bool = True
    covers: tuple[str, ...] | None = None  # None: httpsig.REQUEST_COMPONENTS / RESPONSE_COMPONENTS

    @property
    def whole_body(self) -> bool:
        return self.kind in ("encrypt", "decrypt") and not self.fields

    @property
    def name(self) -> str:
        if self.kind in ("encrypt", "decrypt"):
            return f"{self.kind}-fields" if self.fields else f"{self.kind}-body"
        return self.kind


GUARD_REQUEST = frozenset({"encrypt", "verify"})
"""Request steps that protect the body: skipping them by changing the method leaks it."""
GUARD_RESPONSE = frozenset({"encrypt"})
"""Response steps whose absence lets plaintext out to the client."""


@dataclass(frozen=True)
class Route:
    name: str
    host: re.Pattern | None
    path: re.Pattern
    methods: frozenset[str] | None
    request: Step | None
    response: Step | None
    other_methods: str = "refuse"  # refuse | pass: see `RouteTable.decide`

    @property
    def action(self) -> str:
        """`encrypt-fields+decrypt-fields`, `sign`, ... : the metrics label of this route."""
        return "+".join(s.name for s in (self.request, self.response) if s is not None) or "pass"

    @property
    def guards_request(self) -> bool:
        return self.request is not None and self.request.kind in GUARD_REQUEST

    @property
    def guards_response(self) -> bool:
        return self.response is not None and self.response.kind in GUARD_RESPONSE

    def matches_place(self, host: str, path: str) -> bool:
        """Host and path match (the method aside)."""
        return (self.host is None or self.host.fullmatch(host.lower()) is not None) and self.path.fullmatch(path) is not None

    def allows(self, method: str) -> bool:
        return self.methods is None or method.upper() in self.methods

    def matches(self, host: str, path: str, method: str) -> bool:
        return self.allows(method) and self.matches_place(host, path)


@dataclass(frozen=True)
class Decision:
    """What routing decided for one request."""

    route: Route | None
    """The first route that matches host, path and method (None: unmatched)."""
    refused_by: Route | None = None
    """An earlier route whose host and path match and whose rule the method would skip."""
    allow: tuple[str, ...] = ()
    """For a refusal: the methods that route lists (the `Allow` header of the 405)."""
    needs_body_check: bool = False
    """The refusal holds only if the request has a body, which its headers do not tell:
    check when the body has arrived."""


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

    def decide(self, host: str, path: str, method: str, has_body: bool | None) -> Decision:
        """The first full match, unless a method change would skip a rule.

        A route that matches host and path but not the method is skipped (the next
        route may take the request: `PUT` to an encrypt route, `GET` to a decrypt
        route on the same path). But when a skipped route would have encrypted or
        verified the request body, and the request has one (`has_body`; None: the
        headers do not tell), and the route that takes it does not do the same (encrypt
        for encrypt, verify for verify), the request is refused. The same when it would
        have encrypted the response and the taker does not. `other_methods = "pass"` on
        a route turns this off for that route.
        """
        winner, skipped = None, []
        for route in self.routes:
            if not route.matches_place(host, path):
                continue
            if route.allows(method):
                winner = route
                break
            if route.other_methods == "refuse":
                skipped.append(route)
        decision = Decision(winner)
        for route in skipped:
            allow = tuple(sorted(route.methods or ()))
            if route.guards_response and not _same_kind(winner, route, "response") and method.upper() != "HEAD":
                return Decision(winner, route, allow)
            if route.guards_request and not _same_kind(winner, route, "request") and has_body is not False:
                decision = Decision(winner, route, allow, needs_body_check=has_body is None)
                if has_body:
                    return decision
        return decision


def _same_kind(winner: Route | None, skipped: Route, direction: str) -> bool:
    """The route that takes the request applies the skipped route's kind of step too."""
    if winner is None:
        return False
    mine, theirs = getattr(winner, direction), getattr(skipped, direction)
    return mine is not None and mine.kind == theirs.kind


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
        require_nonce=action.require_nonce,
        covers=action.covers,
    )


def compile_entry(entry: ProxyEntry, kms=None) -> RouteTable:
    """Frozen routes for an entry. With `kms`, sign/verify steps get their default
    algorithm from the key spec (the config check has already vetted the key)."""
    routes = []
    for i, r in enumerate(entry.route):
        steps = [compile_step(r.request), compile_step(r.response)]
        if kms is not None:
            steps = [_with_algorithm(s, kms) for s in steps]
        has_step = r.request is not None or r.response is not None
        case_sensitive = r.match.case_sensitive if r.match.case_sensitive is not None else not has_step
        routes.append(
            Route(
                name=r.name or f"route[{i}]",
                host=_glob(r.match.host.lower()) if r.match.host else None,
                path=_glob(r.match.path, case_sensitive),
                methods=frozenset(r.match.methods) if r.match.methods else None,
                request=steps[0],
                response=steps[1],
                other_methods=r.match.other_methods,
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


def _glob(pattern: str, case_sensitive: bool = True) -> re.Pattern:
    flags = re.DOTALL if case_sensitive else re.DOTALL | re.IGNORECASE | re.ASCII
    return re.compile(fnmatch.translate(pattern), flags)
