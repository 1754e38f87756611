"""Routes that cannot do what they seem to say: found by `kms check`, before traffic is.

Pure: a `ProxyEntry` in, findings out, each `(key path, message, "error" | "warning")`. Errors are routes that never match
(a path without its leading `/`, a path not in the canonical form requests are matched
in, a host with a port) and encrypt routes that an earlier route without an action
takes every request from. The warning says when requests that match no route pass to
the upstream unchanged.
"""

from __future__ import annotations

import fnmatch
import re

from sidecar.canonical import BadTarget, canonical_target
from sidecar.config import ProxyEntry, Route

Finding = tuple[str, str, str]
GLOB_CHARS = "*?["


def lint_entry(entry: ProxyEntry, pre: str = "") -> list[Finding]:
    out: list[Finding] = []
    for i, route in enumerate(entry.route):
        where = f"{pre}route[{i}].match"
        out.extend(_path_findings(f"{where}.path", route.match.path, entry.literal_semicolons))
        out.extend(_host_findings(f"{where}.host", route.match.host))
        shadow = next((j for j in range(i) if _takes_all_of(entry.route[j], route)), None)
        if shadow is not None and _encrypts(route):
            out.append((f"{pre}route[{i}]", f"never applies: route[{shadow}] "
                        f"({_name(entry.route[shadow], shadow)}) comes first, has no action and matches every request "
                        "this route matches, so their bodies pass in plaintext; put this route first", "error"))
    if entry.mode == "reverse" and entry.unmatched == "pass" and not any(_catch_all(r) for r in entry.route):
        out.append((f"{pre}unmatched", "requests that match no route pass to the upstream unchanged (bodies in "
                    "plaintext); set unmatched = \"deny\" to refuse them, or add a last route that matches everything",
                    "warning"))
    return out


def _path_findings(where: str, pattern: str, semicolons: bool) -> list[Finding]:
    if pattern[:1] not in ("/", *GLOB_CHARS):
        return [(where, f"{pattern!r} never matches: request paths start with / (write '/{pattern}')", "error")]
    if pattern[:1] != "/":
        return []
    literal = pattern.replace("?", "x")  # a glob `?` is one character, not a query
    if not semicolons and ";" in pattern:
        return [(where, f"{pattern!r} never matches: paths with ';' are refused (set literal_semicolons = true)", "error")]
    try:
        canonical = canonical_target(literal.encode("utf-8"), semicolons=True).path
    except BadTarget as e:
        return [(where, f"{pattern!r} never matches: requests holding {str(e).removeprefix('the path holds ')} are refused", "error")]
    if canonical != literal:
        hint = "" if "?" in pattern else f"; write {canonical!r}"
        return [(where, f"{pattern!r} never matches: requests are matched in canonical form "
                 f"(escapes of letters, digits and -._~ decoded, // merged, . and .. removed){hint}", "error")]
    return []


def _host_findings(where: str, pattern: str | None) -> list[Finding]:
    if pattern is None:
        return []
    if re.search(r":[0-9*]*$", pattern) and not pattern.startswith("["):
        return [(where, f"{pattern!r} never matches: hosts are matched without the port", "error")]
    if pattern.endswith("."):
        return [(where, f"{pattern!r} never matches: hosts are matched without a trailing dot", "error")]
    return []


def _takes_all_of(first: Route, later: Route) -> bool:
    """True if `first` has no action and matches every request `later` matches. Only
    decided where it can be decided exactly: `first`'s globs use `*` alone (then matching
    `later`'s pattern text shows every instance of it matches too)."""
    if first.request is not None or first.response is not None:
        return False
    if first.match.methods is not None and (later.match.methods is None or not set(later.match.methods) <= set(first.match.methods)):
        return False
    return _covers(first.match.host, later.match.host, fold=True) and _covers(first.match.path, later.match.path)


def _covers(general: str | None, specific: str | None, fold: bool = False) -> bool:
    if general is None:
        return True
    if specific is None or any(c in general for c in "?["):
        return False
    if fold:
        general, specific = general.lower(), specific.lower()
    return re.fullmatch(fnmatch.translate(general), specific, re.DOTALL) is not None


def _encrypts(route: Route) -> bool:
    return any(a is not None and a.action == "encrypt" for a in (route.request, route.response))


def _catch_all(route: Route) -> bool:
    m = route.match
    return m.host is None and m.path in ("*", "/*") and m.methods is None


def _name(route: Route, i: int) -> str:
    return route.name or f"route[{i}]"
