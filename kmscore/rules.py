"""The key rules table of DESIGN.md as code: the one place that decides whether an
operation is allowed for a key of a given kind, spec, usage, origin and state.

Pure functions over a `KeyFacts` snapshot; no store, no clock of their own.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from kmscore.errors import InvalidRequest, KeyDisabled, KeyRuleViolation, KeyUnavailable
from kmscore.specs import DEFAULT_SERVICES, KeySpec, KeyState, KeyUsage, Origin

# used with fullmatch only: `$` would also match before a trailing newline
ALIAS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*(?:/[A-Za-z0-9][A-Za-z0-9_\-]*)*")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
MAX_EXPIRY = 253402300799.0  # 9999-12-31T23:59:59Z: the last time every tool can print
ALIAS_MAX = 256
DESCRIPTION_MAX = 8192
DELETION_DAYS = (7, 1096)
DESTROY_GRACE = 86400.0
"""Destruction waits for a second sighting of a due deletion this long after the first."""
ROTATION_DAYS = (30, 365)

USAGES = {
    "AES": (KeyUsage.ENCRYPT_DECRYPT,),
    "HMAC": (KeyUsage.GENERATE_VERIFY_MAC,),
    "RSA": (KeyUsage.SIGN_VERIFY, KeyUsage.ENCRYPT_DECRYPT),
    "EC": (KeyUsage.SIGN_VERIFY,),
}
"""Usages allowed per spec family; the first is the default."""

EXTERNAL_SPECS = frozenset(
    s for s in KeySpec if s.family != "HMAC"
)


class Op(str, enum.Enum):
    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    DATAKEY = "data keys"
    SIGN = "sign"
    VERIFY = "verify"
    GENERATE_MAC = "generate-mac"
    VERIFY_MAC = "verify-mac"
    GET_PUBLIC_KEY = "get-public-key"


OP_USAGE = {
    Op.ENCRYPT: KeyUsage.ENCRYPT_DECRYPT,
    Op.DECRYPT: KeyUsage.ENCRYPT_DECRYPT,
    Op.DATAKEY: KeyUsage.ENCRYPT_DECRYPT,
    Op.SIGN: KeyUsage.SIGN_VERIFY,
    Op.VERIFY: KeyUsage.SIGN_VERIFY,
    Op.GENERATE_MAC: KeyUsage.GENERATE_VERIFY_MAC,
    Op.VERIFY_MAC: KeyUsage.GENERATE_VERIFY_MAC,
}


@dataclass(frozen=True)
class KeyFacts:
    """What the rules need to know about a key."""

    key_id: str
    alias: str | None
    spec: KeySpec
    usage: KeyUsage
    origin: Origin
    state: KeyState
    material_expires_at: float | None = None

    @property
    def name(self) -> str:
        return f"{self.alias} ({self.key_id})" if self.alias else self.key_id

    @property
    def is_default(self) -> bool:
        return is_default_alias(self.alias)


def is_default_alias(alias: str | None) -> bool:
    return bool(alias) and alias.endswith("/default")  # type: ignore[union-attr]


def default_alias(service: str) -> str:
    if service not in DEFAULT_SERVICES:
        raise InvalidRequest(
            f"no default key for service {service!r}; default keys exist for: "
            + ", ".join(DEFAULT_SERVICES)
        )
    return f"{service}/default"


def check_alias(alias: str, *, system: bool = False) -> str:
    """Validate a user alias. Only the KMS itself (system=True) may use `*/default`."""
    if not isinstance(alias, str) or not alias or len(alias) > ALIAS_MAX or not ALIAS_RE.fullmatch(alias):
        raise InvalidRequest(
            f"invalid alias {ascii(alias)}: use letters, digits, '_', '-' and '/'-separated parts "
            f"(at most {ALIAS_MAX} characters), e.g. 'app/db'"
        )
    if is_default_alias(alias) and not system:
        raise InvalidRequest(
            f"alias {alias!r} is reserved: aliases ending in '/default' belong to the "
            "default keys that the KMS creates for its services"
        )
    try:
        import uuid

        uuid.UUID(alias)
    except ValueError:
        return alias
    raise InvalidRequest(f"alias {alias!r} looks like a key id; choose a name")


def check_description(description: str) -> str:
    """Free text, but printable: no control characters (terminal escapes, newlines that
    forge extra lines in listings and logs, bidi overrides) and valid Unicode."""
    if not isinstance(description, str):
        raise InvalidRequest("a description is text")
    if len(description) > DESCRIPTION_MAX:
        raise InvalidRequest(f"description is longer than {DESCRIPTION_MAX} characters")
    check_text(description, "the description")
    return description


def check_text(text: str, what: str) -> str:
    """Refuse control characters and text that is not valid Unicode (e.g. a non-UTF-8
    command-line argument, which Python carries as lone surrogates)."""
    bad = CONTROL_RE.search(text)
    if bad:
        raise InvalidRequest(f"{what} contains the control character {ascii(bad.group())}: use printable text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"{what} is not valid UTF-8 text") from None
    return text


def check_expiry(expires_at: float | None, now: float) -> float | None:
    """A material expiry: a finite time in the future, before year 10000 (NaN, infinity
    and overflowing values are refused before anything is saved)."""
    if expires_at is None:
        return None
    if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)):
        raise InvalidRequest("the material expiry is a time (seconds since the epoch)")
    if not (expires_at == expires_at) or not now < expires_at <= MAX_EXPIRY:  # NaN fails the first
        raise InvalidRequest(
            "the material expiry must be a finite time in the future, before 9999-12-31T23:59:59Z"
        )
    return float(expires_at)


def resolve_create(spec: KeySpec, usage: KeyUsage | None, origin: Origin) -> KeyUsage:
    """Check a new key's spec/usage/origin combination; return the usage to record."""
    allowed = USAGES[spec.family]
    if usage is None:
        usage = allowed[0]
    if usage not in allowed:
        raise KeyRuleViolation(
            f"a {spec.value} key cannot have usage {usage.value}; allowed: "
            + ", ".join(u.value for u in allowed)
        )
    if origin is Origin.EXTERNAL and spec not in EXTERNAL_SPECS:
        raise KeyRuleViolation(
            f"external keys cannot be {spec.value}; external keys are AES_256, RSA or EC"
        )
    return usage


def check_days(days: int, bounds: tuple[int, int], what: str) -> int:
    low, high = bounds
    if not isinstance(days, int) or not low <= days <= high:
        raise InvalidRequest(f"{what} must be between {low} and {high} days, got {days!r}")
    return days


def material_expired(key: KeyFacts, now: float) -> bool:
    return key.material_expires_at is not None and now >= key.material_expires_at


def check_use(key: KeyFacts, op: Op, now: float) -> None:
    """Refuse a cryptographic operation the key's usage or state does not allow."""
    if op is Op.GET_PUBLIC_KEY:
        if not key.spec.is_asymmetric:
            raise KeyRuleViolation(
                f"key {key.name} is {key.spec.value}: only RSA and EC keys have a public key"
            )
    else:
        needed = OP_USAGE[op]
        if key.usage is not needed:
            raise KeyRuleViolation(
                f"key {key.name} ({key.spec.value}, usage {key.usage.value}) cannot {op.value}: "
                f"that needs a key of usage {needed.value}"
            )
        if op is Op.DATAKEY and key.spec is not KeySpec.AES_256:
            raise KeyRuleViolation(
                f"key {key.name} is {key.spec.value}: data keys need an AES_256 key"
            )
    if key.state is KeyState.ENABLED and material_expired(key, now):
        raise KeyUnavailable(f"key {key.name}: its imported key material has expired")
    if key.state is not KeyState.ENABLED:
        unavailable = KeyDisabled if key.state is KeyState.DISABLED else KeyUnavailable
        raise unavailable(f"key {key.name} is {key.state.value}: {_state_hint(key.state)}")


def _state_hint(state: KeyState) -> str:
    return {
        KeyState.DISABLED: "enable it with `kms enable-key` to use it",
        KeyState.PENDING_DELETION: "it is scheduled for deletion; cancel with `kms cancel-key-deletion`",
        KeyState.PENDING_IMPORT: "it has no key material; import some with `kms import-key-material`",
    }.get(state, "")


def _refuse_default(key: KeyFacts, action: str) -> None:
    if key.is_default:
        raise KeyRuleViolation(f"key {key.name} is a default key: default keys cannot be {action}")


def next_state_enable(key: KeyFacts) -> KeyState:
    if key.state is KeyState.PENDING_DELETION:
        raise KeyUnavailable(
            f"key {key.name} is PendingDeletion: cancel the deletion first (it then becomes Disabled)"
        )
    if key.state is KeyState.PENDING_IMPORT:
        raise KeyUnavailable(f"key {key.name} is PendingImport: import key material to enable it")
    return KeyState.ENABLED


def next_state_disable(key: KeyFacts) -> KeyState:
    _refuse_default(key, "disabled")
    if key.state is KeyState.PENDING_DELETION:
        raise KeyUnavailable(f"key {key.name} is PendingDeletion: it is already unusable")
    if key.state is KeyState.PENDING_IMPORT:
        raise KeyUnavailable(f"key {key.name} is PendingImport: it has no material to disable")
    return KeyState.DISABLED


def next_state_schedule_deletion(key: KeyFacts) -> KeyState:
    _refuse_default(key, "scheduled for deletion")
    if key.state is KeyState.PENDING_DELETION:
        raise KeyUnavailable(f"key {key.name} is already scheduled for deletion")
    return KeyState.PENDING_DELETION


def next_state_cancel_deletion(key: KeyFacts, has_material: bool) -> KeyState:
    if key.state is not KeyState.PENDING_DELETION:
        raise KeyUnavailable(f"key {key.name} is {key.state.value}, not scheduled for deletion")
    return KeyState.DISABLED if has_material else KeyState.PENDING_IMPORT


def check_rotation(key: KeyFacts) -> None:
    """Only KMS-generated AES_256 keys rotate."""
    if key.origin is Origin.EXTERNAL:
        raise KeyRuleViolation(f"key {key.name} has imported material: external keys never rotate")
    if key.spec is not KeySpec.AES_256:
        raise KeyRuleViolation(
            f"key {key.name} is {key.spec.value}: only AES_256 keys can rotate"
        )


def rotates(key: KeyFacts) -> bool:
    """Whether the key may rotate now (by hand, on schedule or for its nonce budget)."""
    return key.origin is Origin.KMS and key.spec is KeySpec.AES_256 and key.state is KeyState.ENABLED


def deletion_step(deletion_date: float, due_seen: float | None, now: float) -> str | None:
    """What maintenance does with a PendingDeletion key, as a table of the clock readings.

    One process's wall clock decides nothing irreversible alone. The deadline must be
    seen twice: the first sighting is recorded (`KeyDeletionDue`); destruction needs a
    later sighting at least DESTROY_GRACE after it. A clock that has not reached the
    deadline, but finds a sighting recorded, knows a clock ahead made it and clears it
    (`KeyDeletionDueCleared`). So a process 8 days ahead marks a key due; a correct
    process clears the mark within a maintenance interval; and destruction happens
    only if every process's clock agrees for a whole day (cancel stays possible until).
    """
    if now < deletion_date:
        return "KeyDeletionDueCleared" if due_seen is not None else None
    if due_seen is None or due_seen > now:
        return "KeyDeletionDue"
    if now >= due_seen + DESTROY_GRACE:
        return "DestroyKey"
    return None


def material_gone(key: KeyFacts) -> dict[str, str | None]:
    """State fields when a key's imported material goes (expiry or deletion): the key
    waits for material, and remembers the state the operator gave it (Enabled or
    Disabled) to return to it on re-import."""
    if key.state is KeyState.PENDING_DELETION:
        return {}
    resume = key.state.value if key.state in (KeyState.ENABLED, KeyState.DISABLED) else None
    return {"state": KeyState.PENDING_IMPORT.value, "resume_state": resume}


def state_after_import(state: KeyState, resume_state: str | None) -> KeyState:
    """A key that waited for material returns to the state it had (Enabled if new)."""
    if state is not KeyState.PENDING_IMPORT:
        return state
    return KeyState(resume_state) if resume_state else KeyState.ENABLED


def check_rotate_now(key: KeyFacts) -> None:
    check_rotation(key)
    if key.state is not KeyState.ENABLED:
        raise KeyUnavailable(f"key {key.name} is {key.state.value}: only enabled keys rotate")


def check_import(key: KeyFacts, expires_at: float | None, now: float) -> None:
    if key.origin is not Origin.EXTERNAL:
        raise KeyRuleViolation(
            f"key {key.name} has KMS-generated material: only keys created with origin EXTERNAL "
            "take imported material"
        )
    if key.state is KeyState.PENDING_DELETION:
        raise KeyUnavailable(f"key {key.name} is PendingDeletion: cancel the deletion first")
    if expires_at is not None:
        if key.spec is not KeySpec.AES_256:
            raise KeyRuleViolation(
                f"key {key.name} is {key.spec.value}: RSA and EC material is permanent and "
                "cannot expire"
            )
        if expires_at <= now:
            raise InvalidRequest("the material expiry must lie in the future")


def check_delete_material(key: KeyFacts) -> None:
    if key.origin is not Origin.EXTERNAL:
        raise KeyRuleViolation(
            f"key {key.name} has KMS-generated material, which cannot be deleted by hand"
        )
    if key.spec is not KeySpec.AES_256:
        raise KeyRuleViolation(
            f"key {key.name} is {key.spec.value}: RSA and EC material is permanent and cannot be deleted"
        )
    if key.state is KeyState.PENDING_IMPORT:
        raise KeyUnavailable(f"key {key.name} has no key material to delete")
    if key.state is KeyState.PENDING_DELETION:
        raise KeyUnavailable(f"key {key.name} is PendingDeletion")


def check_alias_change(key: KeyFacts) -> None:
    if key.is_default:
        raise KeyRuleViolation(f"key {key.name} is a default key: its alias cannot change")
