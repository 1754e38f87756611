"""Request targets and hosts in one canonical form, so that a route sees what the upstream sees.

Sans-IO: bytes and strings in, a `Target` (or `BadTarget`) out. Routes match the
canonical path, and the canonical path is what the sidecar forwards, so the upstream
never receives a spelling that was not matched. The form follows RFC 3986 section 6.2.2:

1. percent escapes: hex digits upper-cased; escapes of unreserved characters
   (`A-Z a-z 0-9 - . _ ~`) decoded (`/%73tore` is `/store`);
2. empty segments merged (`//store` is `/store`; RFC 3986 keeps them, but most servers
   and frameworks merge them, so a route must not see two paths where they see one);
3. dot segments removed (`/x/../store`, `/./store` and `/%2e%2e/store` are `/store`).

What cannot be made unambiguous is refused (`BadTarget`, HTTP 400) instead of guessed:
the table `REFUSED` lists each spelling with the reason the client is told. The query
is checked for bytes that are not allowed in a URI but otherwise forwarded untouched:
routes do not match on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sidecar.errors import SidecarError

__all__ = ["BadTarget", "Target", "canonical_host", "canonical_target", "is_canonical_path"]


class BadTarget(SidecarError):
    """A request target or host that the sidecar cannot read one way only."""

    status = 400
    reason = "bad_target"


UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

# (pattern on the raw path bytes, what the client is told). Checked in order, before
# anything is decoded; the first hit refuses the request.
REFUSED: tuple[tuple[re.Pattern[bytes], str], ...] = (
    (re.compile(rb"[\x00-\x20\x7f-\xff]"), "a control, space or non-ASCII byte (not allowed in a URI)"),
    (re.compile(rb"#"), "a fragment (#...): clients never send one, servers disagree on it"),
    (re.compile(rb"\\"), "a backslash: some servers read it as /"),
    (re.compile(rb"%(?![0-9A-Fa-f]{2})"), "an invalid percent escape"),
    (re.compile(rb"%2[Ff]"), "an encoded slash (%2F): servers disagree on whether it separates segments"),
    (re.compile(rb"%5[Cc]"), "an encoded backslash (%5C): some servers read it as /"),
    (re.compile(rb"%00"), "an encoded NUL (%00)"),
    (re.compile(rb"%25[0-9A-Fa-f]{2}"), "a double-encoded escape (%25XX): a server that decodes twice sees another path"),
)
SEMICOLON: tuple[re.Pattern[bytes], str] = (
    re.compile(rb";"),
    "a ';' in the path: servlet containers drop ;params from segments, other servers keep them",
)
QUERY_REFUSED: tuple[tuple[re.Pattern[bytes], str], ...] = REFUSED[:2]

_PLAIN_PATH = re.compile(rb"/|(?:/(?!\.\.?(?:/|$))[A-Za-z0-9\-._~!$&'()*+,=:@]+)+/?")
"""Non-empty segments, none `.` or `..`, of characters that need no decoding and are never
refused: such a path is its own canonical form (checked first, for speed)."""
_PLAIN_QUERY = re.compile(rb"[^\x00-\x20\x7f-\xff#]*")


@dataclass(frozen=True)
class Target:
    """A request target in canonical form. `path` is what routes match and what is forwarded."""

    path: str
    query: str | None = None
    """The raw query without its `?` (None when the target had no `?`)."""

    @property
    def origin_form(self) -> str:
        return self.path if self.query is None else f"{self.path}?{self.query}"


def canonical_target(raw: bytes, *, semicolons: bool = False) -> Target:
    """The canonical form of an origin-form request target (`/path?query`), or BadTarget.

    `semicolons=True` reads `;` as an ordinary path character (for upstreams known not to
    strip `;params`); by default a `;` in the path is refused.
    """
    path, sep, query = raw.partition(b"?")
    if _PLAIN_PATH.fullmatch(path) and _PLAIN_QUERY.fullmatch(query):  # the common case, already canonical
        return Target(path.decode("ascii"), query.decode("ascii") if sep else None)
    if not path.startswith(b"/"):
        raise BadTarget("the request target is not a path starting with / (origin form)")
    for pattern, why in (*REFUSED, *(() if semicolons else (SEMICOLON,))):
        if pattern.search(path):
            raise BadTarget(f"the path holds {why}")
    for pattern, why in QUERY_REFUSED:
        if pattern.search(query):
            raise BadTarget(f"the query holds {why}")
    decoded = _normalize_escapes(path)
    _check_utf8(decoded)
    segments = remove_dot_segments(decoded.decode("ascii"))
    return Target(segments, query.decode("ascii") if sep else None)


def _normalize_escapes(path: bytes) -> bytes:
    """Decode escapes of unreserved characters, upper-case the hex of the others."""

    def one(m: re.Match[bytes]) -> bytes:
        byte = int(m.group(1), 16)
        return bytes([byte]) if byte in UNRESERVED else b"%" + m.group(1).upper()

    return re.sub(rb"%([0-9A-Fa-f]{2})", one, path)


def _check_utf8(path: bytes) -> None:
    """Escaped bytes must spell UTF-8: an overlong `%C0%AE` is a `.` to some old decoders."""
    raw = re.sub(rb"%([0-9A-F]{2})", lambda m: bytes([int(m.group(1), 16)]), path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadTarget("the path holds percent-encoded bytes that are not UTF-8") from None


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 on an absolute path, with empty segments merged.

    `..` above the root stays at the root, as RFC 3986 says. A trailing `.`, `..` or
    `/` leaves a trailing slash (`/a/b/..` is `/a/`)."""
    out: list[str] = []
    parts = path.split("/")[1:]
    for i, seg in enumerate(parts):
        last = i == len(parts) - 1
        if seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        elif seg == ".":
            if last:
                out.append("")
        elif seg or last:
            out.append(seg)
    return "/" + "/".join(out)


def is_canonical_path(pattern: str) -> bool:
    """True if a route's path glob is written in canonical form (else it can never match
    some of what it seems to say). Glob characters are taken literally here."""
    try:
        return canonical_target(pattern.encode("utf-8"), semicolons=True).path == pattern
    except BadTarget:
        return False


_HOST = re.compile(r"[a-z0-9._-]+|\[[0-9a-f:.]+\]")


def canonical_host(authority: str) -> str:
    """The host of an authority (`Host` header, `:authority`, absolute-form target), lower
    case, without port, brackets or one trailing dot (`API.Example.com.:443` is
    `api.example.com`). Userinfo, percent escapes and other bytes are refused."""
    host = authority.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :] if end > 0 else "?"
        name = host[: end + 1]
    else:
        name, colon, port = host.partition(":")
        rest = colon + port
    if rest and not re.fullmatch(r":[0-9]{0,5}", rest):
        raise BadTarget("the host has an invalid port")
    if not _HOST.fullmatch(name):
        raise BadTarget("the host holds characters that are not allowed in a host name")
    name = name.removesuffix(".")
    if not name:
        raise BadTarget("the host is empty")
    return name.strip("[]")
