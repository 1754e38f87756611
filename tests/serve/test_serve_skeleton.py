"""The skeleton holds end to end: boto3 reaches the facade through SigV4, the dispatcher
and the AWS table; a wrong secret is refused with AWS's error and audited."""

from __future__ import annotations

import botocore.exceptions
import pytest

from kmscore import Kms


def test_boto3_generate_random(server):
    kms = server.boto3(server.access_key())
    out = kms.generate_random(NumberOfBytes=32)
    assert len(out["Plaintext"]) == 32


def test_wrong_secret_is_refused_and_audited(server):
    key = server.access_key()
    from tests.serve.conftest import AccessKey

    bad = server.boto3(AccessKey(key.access_key_id, "x" * 40))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bad.generate_random(NumberOfBytes=8)
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
    server.proc.terminate()
    server.proc.wait(timeout=15)
    with Kms(server.home) as k:
        recs = k.audit_records(operation="aws.GenerateRandom")
    assert recs and recs[-1]["outcome"].startswith("denied: AuthFailed") and recs[-1]["caller"].startswith("unauthenticated")
