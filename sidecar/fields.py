"""JSON field paths (`user.ssn`, `cards[*].number`, `items[0].id`): parse and rewrite.

Sans-IO and pure: paths are parsed once at config load into tuples of steps; `rewrite`
walks a decoded JSON document and replaces every value a path selects.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from sidecar.errors import BadBody

_NAME = re.compile(r"[A-Za-z_$@][A-Za-z0-9_\-$@]*")
_INDEX = re.compile(r"\[(\*|0|[1-9][0-9]{0,8})\]")
WILDCARD = "*"

Step = Union[str, int]
"""A member name (str), an array index (int), or WILDCARD written as the string '[*]'."""


class PathSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class FieldPath:
    text: str
    steps: tuple[Step, ...]

    def __str__(self) -> str:
        return self.text


def parse(text: str) -> FieldPath:
    """`a.b[0].c[*]` into steps; raise PathSyntaxError naming the offending position."""
    if not isinstance(text, str) or not text:
        raise PathSyntaxError("a field path is a non-empty string like user.ssn or cards[*].number")
    steps: list[Step] = []
    pos = 0
    expect_name = True
    while pos < len(text):
        if expect_name:
            m = _NAME.match(text, pos)
            if not m:
                raise PathSyntaxError(f"bad field path {text!r}: expected a field name at position {pos}")
            steps.append(m.group())
            pos = m.end()
            expect_name = False
            continue
        m = _INDEX.match(text, pos)
        if m:
            steps.append("[*]" if m.group(1) == WILDCARD else int(m.group(1)))
            pos = m.end()
        elif text[pos] == "." and pos + 1 < len(text):
            pos += 1
            expect_name = True
        else:
            raise PathSyntaxError(f"bad field path {text!r}: unexpected {text[pos]!r} at position {pos}")
    return FieldPath(text, tuple(steps))


def rewrite(doc: Any, path: FieldPath, fn: Callable[[Any], Any], *, required: bool = False) -> int:
    """Replace, in place, each value `path` selects in `doc` by `fn(value)`; return how many.

    A missing member or index is skipped (an optional field), unless `required`, in
    which case BadBody names the path. `[*]` over an empty array selects nothing.
    """
    count = _walk(doc, path.steps, fn)
    if required and count == 0:
        raise BadBody(f"field {path} is not in the body")
    return count


def _walk(node: Any, steps: tuple[Step, ...], fn: Callable[[Any], Any]) -> int:
    step, rest = steps[0], steps[1:]
    if step == "[*]":
        if not isinstance(node, list):
            return 0
        keys: list[Any] = list(range(len(node)))
    elif isinstance(step, int):
        if not isinstance(node, list) or step >= len(node):
            return 0
        keys = [step]
    else:
        if not isinstance(node, dict) or step not in node:
            return 0
        keys = [step]
    count = 0
    for k in keys:
        if rest:
            count += _walk(node[k], rest, fn)
        else:
            node[k] = fn(node[k])
            count += 1
    return count
