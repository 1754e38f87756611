"""Config problems: one line each, `<file>: <key path>: <message>`, all reported at once.

Pydantic reports a location as a tuple (`('route', 2, 'request', 'key')`); operators read
TOML, so it becomes `route[2].request.key`, and pydantic's wording becomes what the
file should have held. Values that came from `${VAR}` never appear in a message.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from kmscore.errors import KmsError


@dataclass(frozen=True)
class Problem:
    file: str
    path: str
    message: str
    severity: str = "error"
    """`error` (the file cannot run) or `warning` (it runs, but maybe not as meant)."""

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        message = self.message if self.is_error else f"{self.severity}: {self.message}"
        return f"{self.file}: {self.path}: {message}" if self.path else f"{self.file}: {message}"


class ConfigError(KmsError):
    """A config that cannot run: every problem found, one per line."""

    exit_code = 2

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def join_path(*parts: str | int) -> str:
    """`join_path('proxy', 0, 'route', 2)` -> `proxy[0].route[2]`."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p:
            out += p if not out or p.startswith("[") else f".{p}"
    return out


_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
    "str": "a string", "tuple": "an array", "list": "an array", "dict": "a table",
    "model": "a table",
}


def _kind(value: object) -> str:
    """What a TOML value is, in TOML words (never the value itself: it may be a secret)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _field_names(model: type[BaseModel] | None, loc: Sequence[str | int]) -> list[str] | None:
    """The keys allowed at `loc` (for 'did you mean'), walking nested models and unions."""
    models = [model] if model is not None else []
    for part in loc:
        if isinstance(part, int):
            continue
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        models = [inner for f in fields for inner in _inner_models(f.annotation)]
        if not models:
            return None
    return sorted({name for m in models for name in m.model_fields}) if models else None


def _inner_models(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated, tuple, list):
        return [m for arg in typing.get_args(annotation) for m in _inner_models(arg)]
    return []


def unknown_key_message(name: str, allowed: Iterable[str] | None, what: str = "key") -> str:
    allowed = sorted(allowed or ())
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown {what} {name!r} (did you mean {close[0]!r}?)"
    if allowed:
        return f"unknown {what} {name!r} (expected one of: {', '.join(allowed)})"
    return f"unknown {what} {name!r}"


def _message(err: Mapping, model: type[BaseModel] | None, loc: Sequence[str | int]) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return unknown_key_message(str(loc[-1]), _field_names(model, loc[:-1]))
    if kind == "missing":
        return "required key is missing"
    base = kind.split("_")[0] if kind.endswith(("_type", "_parsing")) else None
    if base in _TYPE_WORDS:
        return f"expected {_TYPE_WORDS[base]}, got {_kind(err.get('input'))}"
    if kind.startswith(("greater_than", "less_than")):
        return "expected a number " + msg.removeprefix("Input should be ")
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    if msg.startswith("Input should be "):
        return "expected " + msg[len("Input should be "):]
    return msg


def _clean_loc(loc: Sequence[str | int], model: type[BaseModel] | None) -> list[str | int]:
    """Drop pydantic's validator, union-member and discriminator tags
    (`function-after[...]`, `str`, `file`): parts that name no key of the model.
    The last part stays: it may be the unknown key being reported."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if isinstance(part, str):
            if part.endswith("]") and "[" in part:  # function-after[_shape(), Action]
                continue
            names = _field_names(model, out)
            if i < len(loc) - 1 and names is not None and part not in names:
                continue
        out.append(part)
    return out


def from_validation_error(
    file: str, prefix: str, error: ValidationError, model: type[BaseModel] | None
) -> list[Problem]:
    """One Problem per pydantic error, placed under `prefix` (`proxy[0]`), duplicates dropped."""
    seen: dict[tuple[str, str], Problem] = {}
    for err in error.errors():
        loc = _clean_loc(err["loc"], model)
        problem = Problem(file, join_path(prefix, *loc), _message(err, model, loc))
        seen.setdefault((problem.path, problem.message), problem)
    return list(seen.values())


def redact(problems: Iterable[Problem], secrets: Mapping[str, str]) -> list[Problem]:
    """Replace every substituted value that shows up in a message by its `${VAR}`."""
    out = []
    for p in problems:
        msg = p.message
        for value, name in sorted(secrets.items(), key=lambda kv: -len(kv[0])):
            if len(value) >= 3:
                msg = msg.replace(value, "${" + name + "}")
        out.append(Problem(p.file, p.path, msg, p.severity))
    return out
