"""The Kms facade: one class whose methods mirror the KMS operations.

Front ends use only this (plus the envelope format and config loader). The embedded
implementation runs in-process on the local key store; its methods are grouped by
concern in `lifecycle`, `operations` and `importing`.
"""

from __future__ import annotations

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

    def audit_records(self, limit: int | None = None) -> list[dict]:
        return self._audit.records(limit)

    def flush_audit(self) -> None:
        self._audit.flush()
