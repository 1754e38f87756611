"""A policy per access key: which operations on which keys; everything else is refused.

    [[allow]]
    operations = ["encrypt_data", "decrypt_data", "create_datakey"]   # facade names, or "*"
    keys = ["app/*", "1234abcd-...", "sidecar/default"]                # ids, aliases, alias prefixes

Operations are named as the facade names them, so one policy means the same thing over
every wire API. A key pattern is a key id, an alias, an alias prefix ending in `/*`, or
`*` (every key). An operation that touches no key (gen_random, list_keys, create_key) is
allowed by a statement whose keys include `*`. Nothing is allowed unless a statement
allows it; there is no deny (a policy is small enough to read whole).
"""

from __future__ import annotations

import json
import tomllib
import uuid
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kmscore import rules
from kmscore.errors import KmsError
from kmsserve.errors import ServeError

ANY = "*"


class PolicyError(ServeError):
    """A policy file that cannot be read or is not valid."""


def key_pattern(pattern: str) -> str:
    """A key id (normalised: lower case), an alias, `prefix/*`, or `*`; ValueError with
    the fix otherwise."""
    if pattern == ANY:
        return pattern
    try:
        return str(uuid.UUID(pattern))
    except ValueError:
        pass
    if pattern.startswith("alias/"):
        raise ValueError(f"{pattern!r}: name keys as keyhold does, without 'alias/' ({pattern[6:]!r})")
    if pattern.startswith("arn:"):
        raise ValueError(f"{pattern!r}: name keys by id or alias, not by ARN")
    alias = pattern[:-2] if pattern.endswith("/*") else pattern
    if "*" in alias:
        raise ValueError(f"{pattern!r}: the only wildcards are '*' (every key) and a trailing '/*' (an alias prefix)")
    try:
        rules.check_alias(alias, system=True)
    except KmsError as e:
        raise ValueError(str(e)) from None
    return pattern


class Statement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    operations: tuple[str, ...] = Field(min_length=1)
    keys: tuple[str, ...] = Field(min_length=1)

    @field_validator("operations")
    @classmethod
    def _known(cls, ops: tuple[str, ...]) -> tuple[str, ...]:
        from kmsserve.operations import FACADE_OPERATIONS

        unknown = [o for o in ops if o != ANY and o not in FACADE_OPERATIONS]
        if unknown:
            raise ValueError(f"unknown operation(s) {', '.join(unknown)}; known: {', '.join(sorted(FACADE_OPERATIONS))}")
        return ops

    @field_validator("keys")
    @classmethod
    def _patterns(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(key_pattern(k) for k in keys)

    def matches(self, action: str, key_id: str | None, alias: str | None) -> bool:
        if ANY not in self.operations and action not in self.operations:
            return False
        for pattern in self.keys:
            if pattern == ANY:
                return True
            if key_id is None and alias is None:
                continue  # an operation on no key: only `*` allows it
            if pattern == key_id or (alias is not None and (
                    pattern == alias or (pattern.endswith("/*") and alias.startswith(pattern[:-1])))):
                return True
        return False


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: tuple[Statement, ...] = Field(min_length=1)
    """At least one statement: a policy that allows nothing is a mistake (disable the
    access key instead)."""

    def allows(self, action: str, key_id: str | None, alias: str | None) -> bool:
        return any(s.matches(action, key_id, alias) for s in self.allow)

    @classmethod
    def parse(cls, text: str, where: str = "policy") -> "Policy":
        """From TOML or JSON text; PolicyError naming the file and the field."""
        try:
            data = json.loads(text) if text.lstrip().startswith("{") else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as e:
            raise PolicyError(f"{where}: not valid TOML or JSON: {e}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            problems = []
            errors = e.errors()
            locs = [tuple(err["loc"]) for err in errors]
            for err in errors:
                loc = tuple(err["loc"])
                if any(other[:len(loc)] == loc and other != loc for other in locs):
                    continue  # a consequence of a problem deeper inside
                at = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
                msg = err["msg"].removeprefix("Value error, ")
                if err["type"] == "too_short":
                    msg = "must not be empty"
                elif err["type"] == "extra_forbidden":
                    msg = "unknown field (a statement has operations and keys)"
                problems.append(f"{where}: {at or '(top)'}: {msg}")
            raise PolicyError("\n".join(problems)) from None

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise PolicyError(f"cannot read policy {path}: {e.strerror}") from None
        return cls.parse(text, str(path))

    def to_json(self) -> str:
        return self.model_dump_json()
