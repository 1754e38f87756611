"""Checks that need the key store: `[[keys]]` against what exists, and each front end's
own `check(entries, kms)` with its findings placed at their full key path.

Front ends are checked against the store *as `kms up` would leave it*: keys declared in
`[[keys]]` but not created yet, and default keys not made yet, look present (with the
declared spec), so `kms check` never creates anything and never reports a declared key
as missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kmscore import rules
from kmscore.config.problems import Problem, join_path, redact
from kmscore.config.schema import Deployment, KeyDecl
from kmscore.errors import NotFound
from kmscore.frontend import Frontend, load_frontends
from kmscore.metadata import KeyMetadata
from kmscore.specs import DEFAULT_SERVICES, KeySpec, KeyState, KeyUsage, Origin


def compare_key(decl: KeyDecl, meta: KeyMetadata) -> list[tuple[str, str]]:
    """How an existing key differs from its declaration: (field, message) pairs."""
    out = []
    why = "kms up never changes an existing key: fix the config or the key"
    for field, want, have in (
        ("spec", decl.spec, meta.spec),
        ("usage", decl.resolved_usage, meta.usage),
        ("origin", decl.origin, meta.origin),
    ):
        if want != have:
            out.append((field, f"key {decl.alias} is {have.value} in the key store, not {want.value} ({why})"))
    if decl.rotation_days is not None and decl.rotation_days != meta.rotation_interval_days:
        now = f"every {meta.rotation_interval_days} days" if meta.rotation_enabled else "off"
        out.append(("rotation_days", f"key {decl.alias} rotates {now} in the key store, not every {decl.rotation_days} days ({why})"))
    if decl.description and decl.description != meta.description:
        out.append(("description", f"key {decl.alias} has another description in the key store ({why})"))
    return out


class PlannedKms:
    """The Kms as it will be once `[[keys]]` are ensured; read-only for planned keys."""

    def __init__(self, kms: Any, keys: Sequence[KeyDecl]) -> None:
        self._kms = kms
        existing = {m.alias for m in kms.list_keys() if m.alias}
        self._planned = {k.alias: _planned_meta(k.alias, k.spec, k.resolved_usage, k.origin, k.description)
                         for k in keys if k.alias not in existing}
        for service in DEFAULT_SERVICES:
            alias = rules.default_alias(service)
            if alias not in existing:
                self._planned[alias] = _planned_meta(alias, KeySpec.AES_256, KeyUsage.ENCRYPT_DECRYPT, Origin.KMS, "")

    def describe_key(self, key: str) -> KeyMetadata:
        planned = self._planned.get(key)
        return planned if planned is not None else self._kms.describe_key(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kms, name)


class NoKeyStore:
    """A key store that does not exist yet, as `kms check` sees it: no keys at all.

    Lets `kms check` run on a fresh host without creating a store or a root key file."""

    home = None

    def list_keys(self) -> list[KeyMetadata]:
        return []

    def describe_key(self, key: str) -> KeyMetadata:
        raise NotFound(f"no key with id or alias {key!r}")


def _planned_meta(alias: str, spec: KeySpec, usage: KeyUsage, origin: Origin, description: str) -> KeyMetadata:
    return KeyMetadata(
        key_id=f"(new key {alias})", alias=alias, description=description,
        state=KeyState.PENDING_IMPORT if origin is Origin.EXTERNAL else KeyState.ENABLED,
        spec=spec, usage=usage, origin=origin, created_at=0.0, current_version=1,
        rotation_enabled=False, rotation_interval_days=None, next_rotation_at=None,
        deletion_date=None, material_expires_at=None, is_default=rules.is_default_alias(alias),
    )


def check_keys(dep: Deployment, kms: Any) -> list[Problem]:
    """Declared keys that exist with other settings (missing ones will be created)."""
    problems = []
    for i, decl in enumerate(dep.keys):
        try:
            meta = kms.describe_key(decl.alias)
        except NotFound:
            continue  # will be created
        for field, msg in compare_key(decl, meta):
            problems.append(Problem(dep.file, f"keys[{i}].{field}", msg))
    return problems


def check_frontends(dep: Deployment, kms: Any, frontends: Sequence[Frontend] | None = None) -> list[Problem]:
    """Every front end's semantic checks, placed at `proxy[0].route[2].request.key`."""
    problems = []
    planned = PlannedKms(kms, dep.keys)
    for frontend in load_frontends() if frontends is None else frontends:
        entries = dep.entries(frontend.config_key or "")
        if not entries or frontend.check is None:
            continue
        try:
            found = [(p, m, "error") for p, m in frontend.check(list(entries), planned)]
            found += [(p, m, "warning") for p, m in _warnings(frontend, list(entries))]
            singles = None
            for path, msg, severity in found:
                if getattr(frontend, "config_table", False):  # one table: no index
                    where = join_path(frontend.config_key, path.partition("].")[2] if path.startswith("[") else path)
                elif path.startswith("[") or len(entries) == 1:
                    where = join_path(frontend.config_key, *([] if path.startswith("[") else [0]), path)
                else:  # a multi-entry finding without its index: find the entry alone
                    if singles is None:
                        singles = [set(frontend.check([e], planned)) | set(_warnings(frontend, [e])) for e in entries]
                    hit = next((i for i, s in enumerate(singles) if (path, msg) in s), None)
                    where = join_path(frontend.config_key, *([] if hit is None else [hit]), path)
                problems.append(Problem(dep.file, where, msg, severity))
        except Exception as e:  # a crashing check must not hide the other problems
            problems.append(Problem(dep.file, frontend.config_key or frontend.name, f"{frontend.name} check failed: {type(e).__name__}: {e}"))
    return problems


def _warnings(frontend: Frontend, entries: list[Any]) -> list[tuple[str, str]]:
    return frontend.warnings(entries) if getattr(frontend, "warnings", None) is not None else []


def check_empty(dep: Deployment) -> list[Problem]:
    """A file that declares nothing to run (an empty file, or only `[kms]`) is a mistake."""
    if dep.keys or any(entries for _, entries in dep.sections):
        return []
    sections = ", ".join(f"[{key}]" if key == "serve" else f"[[{key}]]" for key, _ in dep.sections)
    return [Problem(dep.file, "", f"the file declares nothing to run: no [[keys]]{', ' + sections if sections else ''}")]


def check_deployment(
    dep: Deployment, kms: Any, frontends: Sequence[Frontend] | None = None, *, warnings: bool = False
) -> list[Problem]:
    """Every problem that needs the key store, secrets scrubbed from the messages.
    With `warnings`, also what runs but maybe not as meant (`Problem.severity`)."""
    found = [*check_empty(dep), *check_keys(dep, kms), *check_frontends(dep, kms, frontends)]
    return redact([p for p in found if warnings or p.is_error], dict(dep.secrets))
