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
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kmsserve.errors import ServeError

ANY = "*"


class PolicyError(ServeError):
    """A policy file that cannot be read or is not valid."""


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

    allow: tuple[Statement, ...] = ()

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
            first = e.errors()[0]
            at = ".".join(str(p) for p in first["loc"])
            raise PolicyError(f"{where}: {at}: {first['msg']}") from None

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise PolicyError(f"cannot read policy {path}: {e.strerror}") from None
        return cls.parse(text, str(path))

    def to_json(self) -> str:
        return self.model_dump_json()
