"""Kms.audit_event: the public way for a server to record what happened outside the key
operations (a refused request, an access-key change), as the caller it names."""

from __future__ import annotations

import pytest

from kmscore import Kms
from kmscore.errors import InvalidRequest


def test_audit_event_is_recorded_for_its_caller(tmp_path):
    with Kms(tmp_path / "home", caller="test") as kms:
        kms.audit_event("aws.GenerateRandom", None, "denied: AuthFailed", caller="unauthenticated")
        kms.audit_event("aws.GenerateRandom", None, "denied: AuthFailed", caller="unauthenticated")
        kms.flush_audit()
        (record,) = kms.audit_records(operation="aws.GenerateRandom")
        assert (record["caller"], record["outcome"], record["count"]) == ("unauthenticated", "denied: AuthFailed", 2)
        assert kms.verify_audit().ok


@pytest.mark.parametrize("args", [("", None, "x"), ("op", None, ""), ("op", None, 3)])
def test_audit_event_refuses_empty_or_odd_fields(tmp_path, args):
    with Kms(tmp_path / "home") as kms:
        with pytest.raises(InvalidRequest):
            kms.audit_event(*args, caller="c")
        with pytest.raises(InvalidRequest):
            kms.audit_event("op", None, "ok", caller="")
