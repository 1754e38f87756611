"""Key lifecycle: create, describe, enable/disable, deletion, aliases, rotation, maintenance."""

from __future__ import annotations

import uuid
from typing import Any

from kmscore import material, rules
from kmscore.errors import KmsError
from kmscore.keyring import DAY, Keyring, facts_of, metadata_of
from kmscore.metadata import KeyMetadata, iso
from kmscore.specs import KeySpec, KeyState, KeyUsage, Origin, parse_enum
from kmscore.store import Store


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
        """Create a custom key (origin KMS) or an external key awaiting import (EXTERNAL).

        The material is generated before the write transaction: an RSA_4096 key takes
        seconds, and no other process may wait for it."""
        try:
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
            description = rules.check_description(description)
        except KmsError as e:
            self._audit.record("CreateKey", None, f"denied: {e}")
            raise
        secret = None if origin is Origin.EXTERNAL else material.generate(spec)  # type: ignore[arg-type]
        with self._change("CreateKey", None):
            row = self._insert_key(alias, spec, usage, origin, description, rotation_days, secret)  # type: ignore[arg-type]
        return metadata_of(row)

    def _insert_key(
        self,
        alias: str | None,
        spec: KeySpec,
        usage: KeyUsage | None,
        origin: Origin,
        description: str,
        rotation_days: int | None,
        secret: bytes | None,
    ) -> dict[str, Any]:
        """Insert a key row (inside a write transaction), with its record in the same one."""
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
            assert secret is not None
            self._store.add_version(key_id, 1, self._seal(key_id, 1, secret), now)
        what = f"ok: {spec.value} {rules.resolve_create(spec, usage, origin).value} {origin.value}"
        if alias:
            what += f" alias {alias}"
        if rotation_days:
            what += f" rotation every {rotation_days} days"
        self._audit.append_now("CreateKey", key_id, what)
        return self._store.key_by_id(key_id)  # type: ignore[return-value]

    def _create_default(self, alias: str) -> dict[str, Any]:
        """Default keys: AES_256, made by the KMS the first time a service asks.

        Inside a caller's transaction (a lifecycle change naming a default key) the new
        key and its CreateKey record share that transaction: if the change is refused,
        both roll back, so no record names a key that does not exist."""
        rules.check_alias(alias, system=True)
        secret = material.generate(KeySpec.AES_256)
        with self._store.write():
            row = self._store.key_by_alias(alias)  # another process may have won the race
            if row is None:
                row = self._insert_key(
                    alias, KeySpec.AES_256, None, Origin.KMS, f"Default key of {alias.split('/')[0]}", None, secret
                )
                self.notices.append(f"created default key {alias} ({row['key_id']})")
        return row

    def default_key(self, service: str) -> KeyMetadata:
        """The default key of a front end (`fsmount`, `sidecar`), created on first use."""
        return metadata_of(self._row(rules.default_alias(service)))

    # -- reading ---------------------------------------------------------------------
    def describe_key(self, key: str) -> KeyMetadata:
        try:
            row = self._row(key)
        except KmsError as e:
            self._audit.record("DescribeKey", self._known_id(key), f"denied: {e}")
            raise
        self._audit.record("DescribeKey", row["key_id"])
        return metadata_of(row)

    def list_keys(self) -> list[KeyMetadata]:
        rows = self._store.all_keys()
        self._audit.record("ListKeys", None)
        return [metadata_of(r) for r in rows]

    # -- state -------------------------------------------------------------------------
    def _transition(self, audit_op: str, key: str, decide, **extra: Any) -> KeyMetadata:
        """Apply `decide(facts, row) -> changed fields` in one transaction; the record says
        what changed (old -> new)."""
        with self._change(audit_op, key):
            row = self._row(key)
            fields = decide(facts_of(row), row)
            self._store.update_key(row["key_id"], **fields)
            self._audit.append_now(audit_op, row["key_id"], "ok: " + changes(row, fields))
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

    def update_key_alias(self, key: str, alias: str | None) -> KeyMetadata:
        """Give the key a new alias; None removes its alias (the key keeps its id: the
        AWS API's DeleteAlias, and the first half of moving an alias to another key)."""

        def decide(facts: rules.KeyFacts, row: dict[str, Any]) -> dict[str, Any]:
            rules.check_alias_change(facts)
            return {"alias": None if alias is None else rules.check_alias(alias)}

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
        """A new key version: new encryptions use it, older versions keep decrypting.
        The new material is generated before the write transaction."""
        try:
            spec = KeySpec(self._row(key)["spec"])
        except KmsError as e:
            self._audit.record("RotateKey", self._known_id(key), f"denied: {e}")
            raise
        fresh = material.generate(spec)

        def decide(facts: rules.KeyFacts, row: dict[str, Any]) -> dict[str, Any]:
            rules.check_rotate_now(facts)
            return self._new_version(row, fresh)

        return self._transition("RotateKey", key, decide)

    def _new_version(self, row: dict[str, Any], fresh: bytes, store: Store | None = None) -> dict[str, Any]:
        """Add version N+1 holding `fresh` (generated by the caller before its write
        transaction) on `store` (the connection whose transaction this is)."""
        store = store or self._store
        now, version = self.clock(), row["current_version"] + 1
        sealed = self._seal(row["key_id"], version, fresh)
        store.add_version(row["key_id"], version, sealed, now)
        return {"current_version": version, "last_rotated_at": now}

    def _rotate_for_nonces(self, key_id: str, version: int) -> None:
        """Half the nonce budget of `version` is spent: a new version (once, even if several
        processes cross the mark together). The material is made before the write lock."""
        fresh = material.generate(KeySpec.AES_256)
        with self._change("AutoRotateKey", key_id):
            row = self._store.key_by_id(key_id)
            if row is not None and row["current_version"] == version and rules.rotates(facts_of(row)):
                fields = self._new_version(row, fresh)
                self._store.update_key(key_id, **fields)
                self._audit.append_now(
                    "AutoRotateKey", key_id, "ok: nonce budget; " + changes(row, fields), caller="kms maintenance"
                )

    # -- maintenance ---------------------------------------------------------------------
    def maintain(self, store: Store | None = None, *, tokens: bool = True) -> None:
        """Destroy keys whose deletion is due, drop expired imported material, rotate keys
        that are due, forget expired import tokens, merge the audit journals of dead
        processes. Idempotent; safe in every process (`kms maintain` runs it alone).

        Runs at open and then every MAINTENANCE_INTERVAL in the audit thread on that
        thread's own connection (`store`, with its own StoreGuard: rows it changes are
        MAC'd again and the log head resealed there), so no operation waits for it. At
        open (`tokens=False`) it takes the write lock only if a key is due: a short
        command should not queue behind another process's writer just to forget old tokens.

        Destruction is the one irreversible step, so one wrong clock must not cause it:
        see `rules.deletion_step` (the deadline must be seen twice, `DESTROY_GRACE` apart,
        and a clock that has not reached the deadline clears an early sighting)."""
        store = store or self._store
        self._audit.recover(store)
        now = self.clock()
        due = []
        for row in store.all_keys(verify=False):
            if not self._guard_row_ok(row):
                continue  # refused wherever it is used; `kms store verify` reports it
            row.pop("versions")
            interval = row["rotation_interval_days"]
            step = None
            if row["state"] == KeyState.PENDING_DELETION.value:
                step = rules.deletion_step(row["deletion_date"], row["deletion_due_seen"], now)
            if step is not None:
                due.append((step, row, None))
            elif row["material_expires_at"] is not None and row["material_expires_at"] <= now:
                due.append(("ExpireKeyMaterial", row, None))
            elif (
                interval
                and row["state"] == KeyState.ENABLED.value
                and (row["last_rotated_at"] or row["created_at"]) + interval * DAY <= now
            ):
                due.append(("AutoRotateKey", row, material.generate(KeySpec(row["spec"]))))
        if not due and not tokens:
            return
        with store.write():
            store.delete_tokens(expired_before=now)
            for op, stale, fresh in due:
                try:
                    row = store.key_by_id(stale["key_id"])
                except KmsError:
                    continue  # changed outside keyhold since: refused where used
                if row is None or row != stale:
                    continue  # another process got there first
                if op == "DestroyKey":
                    store.delete_key(row["key_id"])
                    what = "ok: key and all its versions destroyed"
                elif op == "KeyDeletionDue":
                    store.update_key(row["key_id"], deletion_due_seen=now)
                    what = f"ok: destroyed when seen due again after {iso(now + rules.DESTROY_GRACE)}"
                elif op == "KeyDeletionDueCleared":
                    store.update_key(row["key_id"], deletion_due_seen=None)
                    what = (
                        f"ok: a clock ahead saw the deletion due at {iso(row['deletion_due_seen'])}, "
                        f"before its date {iso(row['deletion_date'])}"
                    )
                elif op == "ExpireKeyMaterial":
                    store.delete_versions(row["key_id"])
                    fields = {"material_expires_at": None, "current_version": 0, **rules.material_gone(facts_of(row))}
                    store.update_key(row["key_id"], **fields)
                    what = "ok: expired material deleted; " + changes(row, fields)
                else:
                    fields = self._new_version(row, fresh, store)
                    store.update_key(row["key_id"], **fields)
                    what = "ok: " + changes(row, fields)
                self._audit.append_now(op, row["key_id"], what, caller="kms maintenance", store=store)
        if due:
            self._invalidate()


def changes(row: dict[str, Any], fields: dict[str, Any]) -> str:
    """What a change did, for its audit record: `state Enabled -> Disabled, ...`.
    Times are ISO 8601; a description is named, not quoted (it is free text)."""
    parts = []
    for name, new in fields.items():
        old = row.get(name)
        if old == new:
            continue
        if name == "description":
            parts.append(f"description changed ({len(old or '')} -> {len(new or '')} characters)")
        elif name in ("deletion_date", "last_rotated_at", "material_expires_at"):
            parts.append(f"{name} {iso(old) or '-'} -> {iso(new) or '-'}")
        else:
            parts.append(f"{name} {'-' if old is None else old} -> {'-' if new is None else new}")
    return ", ".join(parts) or "no change"
