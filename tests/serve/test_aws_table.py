"""The AWS table against botocore's own model of the service (its data, as the AWS SDKs
read it) and against docs/api/aws.md: every AWS operation is a row (offered or refused),
every AWS enum value is mapped or listed as not offered, every error code is one AWS has,
and the documentation names every row and code. No server: these are the tables."""

from __future__ import annotations

import warnings
from pathlib import Path

import botocore.session
import pytest

from kmscore import errors as kms_errors
from kmsserve import errors
from kmsserve.apis import aws
from kmsserve.apis import awsfields as F

MODEL = botocore.session.get_session().get_service_model("kms")
DOC = (Path(__file__).parents[2] / "docs" / "api" / "aws.md").read_text()
ISSUE_12 = """CreateKey DescribeKey ListKeys ListAliases CreateAlias UpdateAlias DeleteAlias EnableKey DisableKey
ScheduleKeyDeletion CancelKeyDeletion UpdateKeyDescription Encrypt Decrypt ReEncrypt GenerateDataKey
GenerateDataKeyWithoutPlaintext GenerateRandom Sign Verify GetPublicKey GenerateMac VerifyMac EnableKeyRotation
DisableKeyRotation GetKeyRotationStatus RotateKeyOnDemand GetParametersForImport ImportKeyMaterial
DeleteImportedKeyMaterial""".split()
COMMON_ERRORS = {"UnrecognizedClientException", "InvalidSignatureException", "AccessDeniedException",
                 "UnknownOperationException", "SerializationException", "ValidationException"}
"""Errors every AWS JSON API answers (not in a service's own model)."""


def test_every_aws_operation_is_a_row():
    assert set(aws.OPERATIONS) == set(MODEL.operation_names)
    offered = set(aws.OPERATIONS) - set(aws.NOT_OFFERED)
    assert offered == set(ISSUE_12)


@pytest.mark.parametrize("shape", sorted(F.ALL_VOCABULARIES))
def test_every_aws_enum_value_is_mapped_or_not_offered(shape):
    """Mapped values are AWS's (none invented); every AWS value is classified. A value
    a newer botocore adds is a warning, not a failure (boto3 is not pinned: a new AWS
    release must not turn main red); it answers ValidationException until classified."""
    values = set(MODEL.shape_for(shape).enum)
    table = F.ALL_VOCABULARIES[shape]
    assert set(table.mapped) <= values
    assert not set(table.mapped) & table.not_offered
    unclassified = values - set(table.mapped) - table.not_offered
    if unclassified:
        warnings.warn(f"{shape}: AWS values not in the table yet: {sorted(unclassified)}")


def test_every_error_code_is_aws_s():
    known = {e.name for op in MODEL.operation_names for e in MODEL.operation_model(op).error_shapes}
    assert {code for _, _, code, _ in aws.ERRORS} <= known | COMMON_ERRORS


def test_error_code_depends_on_the_operation_where_aws_does():
    rule = kms_errors.KeyRuleViolation("x")
    assert aws.error_code(rule, "Encrypt") == ("InvalidKeyUsageException", 400)
    assert aws.error_code(rule, "EnableKeyRotation") == ("UnsupportedOperationException", 400)
    assert aws.error_code(kms_errors.KeyDisabled("x"), "Decrypt") == ("DisabledException", 400)
    assert aws.error_code(kms_errors.KeyUnavailable("x"), "Decrypt") == ("KMSInvalidStateException", 400)
    assert aws.error_code(kms_errors.StoreError("x"), "Decrypt") == ("DependencyTimeoutException", 500)
    assert aws.error_code(kms_errors.ExpiredImportToken("x"), "ImportKeyMaterial") == ("ExpiredImportTokenException", 400)
    assert aws.error_code(kms_errors.IncorrectKey("x"), "ReEncrypt") == ("IncorrectKeyException", 400)
    assert aws.error_code(kms_errors.AuditError("x"), "Encrypt") == ("KMSInternalException", 500)  # fail closed
    assert aws.error_code(RuntimeError("bug"), "Decrypt") == ("KMSInternalException", 500)


def test_an_internal_error_tells_the_client_nothing():
    out = aws.API.fail(kms_errors.KmsError("internal error: KeyError: 'secret detail'"), "r")
    assert out.status == 500 and b"secret detail" not in out.body
    out = aws.API.fail(errors.AuthFailed("the credential scope's date is wrong"), "r")
    assert b"scope" not in out.body and b"UnrecognizedClientException" in out.body


def test_the_documentation_names_every_row_and_code():
    for name in aws.OPERATIONS:
        assert f"`{name}`" in DOC, name
    for _, _, code, _ in aws.ERRORS:
        assert f"`{code}`" in DOC, code
    for table in F.ALL_VOCABULARIES.values():
        for value in [*table.mapped, *table.not_offered]:
            assert value in DOC, value
    assert F.ACCOUNT in DOC


@pytest.mark.parametrize("value,name", [
    ("1234abcd-12ab-34cd-56ef-1234567890ab", "1234abcd-12ab-34cd-56ef-1234567890ab"),
    ("1234ABCD-12AB-34CD-56EF-1234567890AB", "1234abcd-12ab-34cd-56ef-1234567890ab"),
    ("arn:aws:kms:eu-west-1:000000000000:key/1234abcd-12ab-34cd-56ef-1234567890ab", "1234abcd-12ab-34cd-56ef-1234567890ab"),
    ("alias/app/db", "app/db"),
    ("arn:aws:kms:us-east-2:000000000000:alias/app/db", "app/db"),
    ("arn:aws-cn:kms:cn-north-1:000000000000:alias/app", "app"),
])
def test_key_names(value, name):
    assert F.key_name(value) == name


@pytest.mark.parametrize("value,error", [
    ("app/db", kms_errors.NotFound), ("", kms_errors.InvalidRequest), (7, kms_errors.InvalidRequest),
    ("arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab", kms_errors.NotFound),
    ("arn:aws:kms:eu-west-1:000000000000:grant/x", F.InvalidArn), ("arn:nonsense", F.InvalidArn),
])
def test_bad_key_names(value, error):
    with pytest.raises(error):
        F.key_name(value)


def test_boto3_runs_every_offered_operation():
    """tests/serve/test_aws_boto3.py calls each operation of issue 12 through boto3."""
    from botocore import xform_name

    source = (Path(__file__).parent / "test_aws_boto3.py").read_text()
    missing = [op for op in ISSUE_12 if f"kms.{xform_name(op)}(" not in source and f"kms.{xform_name(op)}," not in source]
    assert not missing
