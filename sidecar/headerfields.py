"""Header lookups on mitmproxy's raw header fields, without its per-call cost.

mitmproxy's `Headers.get(name)` and `name in headers` go through `get_all`, which
converts the name and then every field's name through a few Python calls each: about
2.5-3 µs per lookup, and the sidecar's hooks made a dozen of them per request (~30 µs
of a 4 KiB encrypted request). These read `headers.fields` (mitmproxy's tuple of
(name, value) byte pairs, in wire order) with one comparison per field and give the
same answers: names compared ASCII-case-insensitively, several fields of one name
joined by ", " (as `Headers.get` folds them), values decoded as mitmproxy decodes them
(UTF-8, surrogateescape).

Names are given as lower-case bytes (b"content-length").
"""

from __future__ import annotations


def has(headers, name: bytes) -> bool:
    """`name in headers`: at least one field of that name (even with an empty value)."""
    for n, _ in headers.fields:
        if n.lower() == name:
            return True
    return False


def get(headers, name: bytes, default: str | None = None) -> str | None:
    """`headers.get(name, default)`: the values of every field of that name, joined."""
    values = [v for n, v in headers.fields if n.lower() == name]
    if not values:
        return default
    raw = values[0] if len(values) == 1 else b", ".join(values)
    return raw.decode("utf-8", "surrogateescape")


def get_all(headers, name: bytes) -> list[str]:
    """`headers.get_all(name)`: each field's value, unfolded, in order."""
    return [v.decode("utf-8", "surrogateescape") for n, v in headers.fields if n.lower() == name]
