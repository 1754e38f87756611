"""Public value objects the facade returns."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from kmscore.specs import KeySpec, KeyState, KeyUsage, Origin


def iso(when: float | None) -> str | None:
    return None if when is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


@dataclass(frozen=True)
class KeyMetadata:
    key_id: str
    alias: str | None
    description: str
    state: KeyState
    spec: KeySpec
    usage: KeyUsage
    origin: Origin
    created_at: float
    current_version: int
    rotation_enabled: bool
    rotation_interval_days: int | None
    next_rotation_at: float | None
    deletion_date: float | None
    material_expires_at: float | None
    is_default: bool

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("state", "spec", "usage", "origin"):
            d[k] = d[k].value
        for k in ("created_at", "next_rotation_at", "deletion_date", "material_expires_at"):
            d[k] = iso(d[k])
        return d


@dataclass(frozen=True)
class DataKey:
    """A data encryption key: `plaintext` is None when created without plaintext."""

    key_id: str
    ciphertext: bytes
    plaintext: bytes | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"<DataKey of {self.key_id}, {len(self.ciphertext)}-byte blob>"


@dataclass(frozen=True)
class ImportParameters:
    key_id: str
    import_token: str
    public_key_pem: str
    wrapping_algorithm: str
    wrapping_key_spec: str
    expires_at: float
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["expires_at"] = iso(self.expires_at)
        return d
