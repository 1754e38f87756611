"""The Kms facade: one class whose methods mirror the KMS operations.

Front ends use only this (plus the envelope format and config loader). The embedded
implementation runs in-process on the local key store; its methods are grouped by
concern in `lifecycle`, `operations` and `importing`.
"""

from __future__ import annotations

import functools

from kmscore.errors import InvalidRequest, KmsError, NotFound, as_kms_error
from kmscore.importing import ImportMixin
from kmscore.lifecycle import LifecycleMixin
from kmscore.operations import OperationsMixin


class Kms(LifecycleMixin, OperationsMixin, ImportMixin):
    """Keys named by id or alias everywhere. Thread-safe; one per process is enough.

    >>> with Kms(home) as kms:
    ...     blob = kms.encrypt_data("app/db", b"secret")
    """

    def verify_audit(self):
        """Walk the audit chain: a report naming the first missing or altered record."""
        return self._audit.verify()

    def audit_records(self, limit: int | None = None, *, key: str | None = None, operation: str | None = None,
                      outcome: str | None = None, since: float | None = None) -> list[dict]:
        """Audit records, newest `limit` (all with None), oldest first; `key` is an id or an
        alias (a key id of a key that no longer exists matches its old records too).
        Reading the log writes nothing to it (see kmscore.cli.audit)."""
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise InvalidRequest(f"limit must be a positive whole number, not {limit!r}")
        filters: dict[str, object] = {}
        if key is not None:
            try:
                key_id = self.key_name(key)[0]  # not audited, and makes no default key: a read
            except NotFound:
                key_id = None
            filters["key_id"] = key_id or key.lower()  # a destroyed key's records keep its id
        for column, value in (("operation", operation), ("outcome", outcome)):
            if value is not None:
                filters[column] = value
        return self._audit.records(limit, filters, since)

    def audit_event(self, operation: str, key_id: str | None, outcome: str, *, caller: str) -> None:
        """Record something that happened outside the key operations, for `caller`: a
        server's refusal of a request before it reached the facade (bad signature,
        policy), or a change to its access keys. Like every record, it fails closed
        (AuditError) when the log cannot take it."""
        for name, value in (("operation", operation), ("outcome", outcome), ("caller", caller)):
            if not isinstance(value, str) or not value:
                raise InvalidRequest(f"{name} must be non-empty text")
        self._audit.record(operation, key_id, outcome, caller)

    def flush_audit(self) -> None:
        self._audit.flush()

    # -- store integrity (kmscore.storeguard) ------------------------------------------------
    def verify_store(self) -> list[str]:
        """Every integrity problem of the store, one line each: key rows that fail their
        MAC, the log head, the anchor (rollback, wipe), the audit chain. [] if all is well."""
        from kmscore.integrity import row_refusal

        try:
            self._store.quick_check()
        except KmsError as e:
            return [str(e)]
        problems = [str(row_refusal(k)) for k in self._guard.bad_rows()]
        try:
            report = self._audit.verify()
        except KmsError as e:
            return problems + [str(e)]
        if not report.ok:
            problems += [p for p in report.problem.split("; ") if p not in problems]
        return problems

    def reanchor_store(self) -> tuple[int, int]:
        """Accept the store as it is now: new head and anchor, recorded in the audit log."""

        def record() -> None:  # inside the guard's write transaction, on this connection
            self._audit.append_now("StoreReanchored", None, "ok: the operator accepted the store as it is")

        return self._guard.reanchor(record)


# Operations on the hot path translate foreign exceptions inside their own `try` blocks
# (a wrapper would cost a sixth of a 4 KiB encryption); every other public method is
# wrapped here, so only kmscore's errors cross the facade.
TRANSLATED_INSIDE = frozenset(
    "encrypt_data decrypt_data create_datakey encrypt_datakey decrypt_datakey sign verify "
    "get_public_key generate_mac verify_mac key_usable gen_random".split()
)


def _own_errors(method):
    @functools.wraps(method)
    def call(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except KmsError:
            raise
        except Exception as e:
            err = as_kms_error(e)
            if type(err) is KmsError:  # a bug: keep the cause for whoever debugs it
                raise err from e
            raise err from None

    return call


for _name in dir(Kms):
    _attr = getattr(Kms, _name)
    if callable(_attr) and (_name == "__init__" or not _name.startswith("_")) and _name not in TRANSLATED_INSIDE:
        setattr(Kms, _name, _own_errors(_attr))
