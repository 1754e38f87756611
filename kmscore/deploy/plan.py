"""What a reload changes, decided by pure functions over two Deployments.

The runner only executes a plan: which sections start, stop or get new entries, which
`[[keys]]` are new, and which edits cannot apply to a running process (a different
key store or root key needs a restart of `kms up`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kmscore.config import Deployment, KeyDecl


@dataclass(frozen=True)
class SectionChange:
    config_key: str
    old: tuple[Any, ...]
    new: tuple[Any, ...]

    @property
    def kind(self) -> str:
        """'start', 'stop' or 'apply'."""
        if not self.old:
            return "start"
        return "stop" if not self.new else "apply"


@dataclass(frozen=True)
class Plan:
    sections: tuple[SectionChange, ...]
    new_keys: tuple[KeyDecl, ...]
    needs_restart: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.sections or self.new_keys)


def plan_reload(old: Deployment, new: Deployment) -> Plan:
    old_sections, new_sections = dict(old.sections), dict(new.sections)
    changes = tuple(
        SectionChange(key, old_sections.get(key, ()), new_sections.get(key, ()))
        for key in dict.fromkeys([*old_sections, *new_sections])
        if old_sections.get(key, ()) != new_sections.get(key, ())
    )
    known = {k.alias for k in old.keys}
    restart = [
        name
        for name, before, after in (
            ("kms.home", old.home, new.home),
            ("kms.root_key", old.root_key, new.root_key),
            ("kms.revocation_bound", old.kms.revocation_bound, new.kms.revocation_bound),
            ("kms.audit", old.kms.audit, new.kms.audit),
            ("kms.metrics", old.kms.metrics, new.kms.metrics),
            *((f"kms.{f}", getattr(old.kms, f), getattr(new.kms, f))  # the remote KMS (kmscore.remote)
              for f in ("url", "access_key_file", "ca_file", "fingerprint", "timeout")),
        )
        if before != after
    ]
    return Plan(changes, tuple(k for k in new.keys if k.alias not in known), tuple(restart))


def describe_entry(entry: Any) -> str:
    """A one-line summary of a front-end entry (for 'what runs where' in the log).

    Strings (addresses, paths, key names, modes) always show; other settings only when
    they differ from their default; arrays by their length. `${VAR}` values are scrubbed
    by the caller.
    """
    fields = getattr(type(entry), "model_fields", {})
    dump = entry.model_dump() if hasattr(entry, "model_dump") else dict(vars(entry))
    parts = []
    for name, value in dump.items():
        if isinstance(value, list | tuple):
            if value:
                parts.append(f"{len(value)} {name}{'s' if len(value) != 1 and not name.endswith('s') else ''}")
        elif isinstance(value, str) or (
            value is not None and not isinstance(value, dict) and (name not in fields or fields[name].default != value)
        ):
            parts.append(f"{name}={value}")
    return " ".join(parts)
