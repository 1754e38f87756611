"""Key lifecycle: create, describe, enable/disable, deletion, aliases, rotation, maintenance."""

from __future__ import annotations

import uuid
from typing import Any

from kmscore import material, rules
from kmscore.errors import KmsError
from kmscore.keyring import DAY, Keyring, facts_of, metadata_of
from kmscore.metadata import KeyMetadata, iso
from kmscore.specs import KeySpec, KeyState, KeyUsage, Origin, parse_enum


class LifecycleMixin(Keyring):
    def create_key(
        self,
        alias: str | None = None,
        spec: KeySpec | str = KeySpec.AES_256,
        usage: KeyUsage | str | None = None,
        origin: Origin | str = Origin.KMS,
        description: str = "",
        rotation_days: int | None = None,
    ) -> KeyMetadata:
        """Create a custom key (origin KMS) or an external key awaiting import (EXTERNAL)."""
        with self._change("CreateKey", None):
            spec = parse_enum(KeySpec, spec, "key spec")
            usage = None if usage is None else parse_enum(KeyUsage, usage, "key usage")
            origin = parse_enum(Origin, origin, "origin")
            if alias is not None:
                rules.check_alias(alias)
            rules.resolve_create(spec, usage, origin)  # type: ignore[arg-type]
            if rotation_days is not None:
                if origin is not Origin.KMS or spec is not KeySpec.AES_256:
                    raise rules.KeyRuleViolation(
                        "only KMS-generated AES_256 keys rotate; drop --rotation-days"
                    )
                rules.check_days(rotation_days, rules.ROTATION_DAYS, "the rotation interval")
            row = self._insert_key(alias, spec, usage, origin, rules.check_description(description), rotation_days)  # type: ignore[arg-type]
        return metadata_of(row)

    def _insert_key(
        self,
        alias: str | None,
        spec: KeySpec,
        usage: KeyUsage | None,
        origin: Origin,
        description: str,
        rotation_days: int | None,
    ) -> dict[str, Any]:
        now = self.clock()
        key_id = str(uuid.uuid4())
        external = origin is Origin.EXTERNAL
        row = {
            "key_id": key_id,
            "alias": alias,
            "description": description,
            "spec": spec.value,
            "usage": rules.resolve_create(spec, usage, origin).value,
            "origin": origin.value,
            "state": (KeyState.PENDING_IMPORT if external else KeyState.ENABLED).value,
            "created_at": now,
            "rotation_interval_days": rotation_days,
            "last_rotated_at": now if rotation_days else None,
            "current_version": 0 if external else 1,
        }
        self._store.insert_key(row)
        if not external:
            self._store.add_version(key_id, 1, self._seal(key_id, 1, material.generate(spec)), now)
        self._audit.record("CreateKey", key_id, f"ok: {spec.value} {origin.value} {alias or ''}".rstrip())
        return self._store.key_by_id(key_id)  # type: ignore[return-value]

    def _create_default(self, alias: str) -> dict[str, Any]:
        """Default keys: AES_256, made by the KMS the first time a service asks."""
        with self._store.write():
            row = self._store.key_by_alias(alias)  # another process may have won the race
            if row is None:
                rules.check_alias(alias, system=True)
                row = self._insert_key(alias, KeySpec.AES_256, None, Origin.KMS, f"Default key of {alias.split('/')[0]}", None)
                self.notices.append(f"created default key {alias} ({row['key_id']})")
        return row

    def default_key(self, service: str) -> KeyMetadata:
        """The default key of a front end (`fsmount`, `sidecar`), created on first use."""
        return metadata_of(self._row(rules.default_alias(service)))

    # -- reading ---------------------------------------------------------------------
    def describe_key(self, key: str) -> KeyMetadata:
        self._maybe_maintain()
        return metadata_of(self._row(key))

    def list_keys(self) -> list[KeyMetadata]:
        self._maybe_maintain()
        return [metadata_of(r) for r in self._store.all_keys()]

    # -- state -------------------------------------------------------------------------
    def _transition(self, audit_op: str, key: str, decide, **extra: Any) -> KeyMetadata:
        with self._change(audit_op, key):
            row = self._row(key)
            fields = decide(facts_of(row), row)
            self._store.update_key(row["key_id"], **fields)
            self._audit.record(audit_op, row["key_id"])
        return metadata_of(self._store.key_by_id(row["key_id"]))  # type: ignore[arg-type]

    def enable_key(self, key: str) -> KeyMetadata:
        return self._transition("EnableKey", key, lambda f, r: {"state": rules.next_state_enable(f).value})

    def disable_key(self, key: str) -> KeyMetadata:
        return self._transition("DisableKey", key, lambda f, r: {"state": rules.next_state_disable(f).value})

    def schedule_key_deletion(self, key: str, pending_days: int = 30) -> KeyMetadata:
        """PendingDeletion for 7-1096 days; the key and its material are destroyed when due."""

        def decide(facts: rules.KeyFacts, row: dict[str, Any]) -> dict[str, Any]:
            state = rules.next_state_schedule_deletion(facts)
            rules.check_days(pending_days, rules.DELETION_DAYS, f"the pending window of key {facts.name}")
            return {"state": state.value, "deletion_date": self.clock() + pending_days * DAY}

        return self._transition("ScheduleKeyDeletion", key, decide)

    def cancel_key_deletion(self, key: str) -> KeyMetadata:
        def decide(facts: rules.KeyFacts, row: dict[str, Any]) -> dict[str, Any]:
            state = rules.next_state_cancel_deletion(facts, has_material=row["current_version"] > 0)
            resume = KeyState.DISABLED.value if state is KeyState.PENDING_IMPORT else None
            return {"state": state.value, "deletion_date": None, "deletion_due_seen": None, "resume_state": resume}

        return self._transition("CancelKeyDeletion", key, decide)

    def update_key_alias(self, key: str, alias: str) -> KeyMetadata:
        def decide(facts: rules.KeyFacts, row: dict[str, Any]) -> dict[str, Any]:
            rules.check_alias_change(facts)
            return {"alias": rules.check_alias(alias)}

        return self._transition("UpdateKeyAlias", key, decide)

    def update_key_description(self, key: str, description: str) -> KeyMetadata:
        return self._transition(
            "UpdateKeyDescription", key, lambda f, r: {"description": rules.check_description(description)}
        )

    # -- rotation ------------------------------------------------------------------------
    def enable_key_rotation(self, key: str, interval_days: int = 365) -> KeyMetadata:
        def decide(facts: rules.KeyFacts, row: dict[str, Any]) -> dict[str, Any]:
            rules.check_rotation(facts)
            rules.check_days(interval_days, rules.ROTATION_DAYS, f"the rotation interval of key {facts.name}")
            return {"rotation_interval_days": interval_days, "last_rotated_at": row["last_rotated_at"] or self.clock()}

        return self._transition("EnableKeyRotation", key, decide)

    def disable_key_rotation(self, key: str) -> KeyMetadata:
        def decide(facts: rules.KeyFacts, row: dict[str, Any]) -> dict[str, Any]:
            rules.check_rotation(facts)
            return {"rotation_interval_days": None}

        return self._transition("DisableKeyRotation", key, decide)

    def rotate_key(self, key: str) -> KeyMetadata:
        """A new key version: new encryptions use it, older versions keep decrypting."""

        def decide(facts: rules.KeyFacts, row: dict[str, Any]) -> dict[str, Any]:
            rules.check_rotate_now(facts)
            return self._new_version(row)

        return self._transition("RotateKey", key, decide)

    def _new_version(self, row: dict[str, Any]) -> dict[str, Any]:
        now, version = self.clock(), row["current_version"] + 1
        sealed = self._seal(row["key_id"], version, material.generate(KeySpec(row["spec"])))
        self._store.add_version(row["key_id"], version, sealed, now)
        return {"current_version": version, "last_rotated_at": now}

    def _rotate_for_nonces(self, key_id: str, version: int) -> None:
        """Half the nonce budget of `version` is spent: a new version (once, even if several
        processes cross the mark together)."""
        with self._change("AutoRotateKey", key_id):
            row = self._store.key_by_id(key_id)
            if row is not None and row["current_version"] == version and rules.rotates(facts_of(row)):
                self._store.update_key(key_id, **self._new_version(row))
                self._audit.record("AutoRotateKey", key_id, "ok: nonce budget", caller="kms maintenance")

    # -- maintenance ---------------------------------------------------------------------
    def maintain(self) -> None:
        """Destroy keys whose deletion is due, drop expired imported material, rotate keys
        that are due, forget expired import tokens. Idempotent; safe in every process.

        Destruction is the one irreversible step, so one wrong clock must not cause it:
        see `rules.deletion_step` (the deadline must be seen twice, `DESTROY_GRACE` apart,
        and a clock that has not reached the deadline clears an early sighting)."""
        now = self.clock()
        due = []
        for row in self._store.all_keys(verify=False):
            if not self._guard_row_ok(row):
                continue  # refused wherever it is used; `kms store verify` reports it
            row.pop("versions")
            interval = row["rotation_interval_days"]
            step = None
            if row["state"] == KeyState.PENDING_DELETION.value:
                step = rules.deletion_step(row["deletion_date"], row["deletion_due_seen"], now)
            if step is not None:
                due.append((step, row))
            elif row["material_expires_at"] is not None and row["material_expires_at"] <= now:
                due.append(("ExpireKeyMaterial", row))
            elif (
                interval
                and row["state"] == KeyState.ENABLED.value
                and (row["last_rotated_at"] or row["created_at"]) + interval * DAY <= now
            ):
                due.append(("AutoRotateKey", row))
        with self._store.write():
            self._store.delete_tokens(expired_before=now)
            for op, stale in due:
                try:
                    row = self._store.key_by_id(stale["key_id"])
                except KmsError:
                    continue
                if row is None or row != stale:
                    continue  # another process got there first
                outcome = "ok"
                if op == "DestroyKey":
                    self._store.delete_key(row["key_id"])
                elif op == "KeyDeletionDue":
                    self._store.update_key(row["key_id"], deletion_due_seen=now)
                    outcome = f"ok: destroyed when seen due again after {iso(now + rules.DESTROY_GRACE)}"
                elif op == "KeyDeletionDueCleared":
                    self._store.update_key(row["key_id"], deletion_due_seen=None)
                    outcome = (
                        f"ok: a clock ahead saw the deletion due at {iso(row['deletion_due_seen'])}, "
                        f"before its date {iso(row['deletion_date'])}"
                    )
                elif op == "ExpireKeyMaterial":
                    self._store.delete_versions(row["key_id"])
                    self._store.update_key(row["key_id"], material_expires_at=None, current_version=0,
                                           **rules.material_gone(facts_of(row)))
                else:
                    self._store.update_key(row["key_id"], **self._new_version(row))
                self._audit.record(op, row["key_id"], outcome, caller="kms maintenance")
            self._audit.flush()
        if due:
            self._invalidate()
