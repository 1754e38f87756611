"""AWS KMS JSON 1.1 fields <-> keyhold values: pure conversions the AWS table is built of.

Names: AWS names a key by its key id, key ARN, `alias/<name>` or alias ARN; keyhold by
key id or alias (`app/db` is AWS's `alias/app/db`). Answers carry ARNs
`arn:aws:kms:<region>:<ACCOUNT>:key/<id>`: one fixed account (keyhold has no accounts),
the region the request was signed for. Vocabularies (specs, usages, origins, algorithms)
are tables: an AWS value keyhold has, an AWS value keyhold does not offer
(UnsupportedOperationException), or not an AWS value at all (ValidationException).
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Mapping
from typing import Any

from kmscore import rules
from kmscore.errors import InvalidRequest, NotFound
from kmscore.metadata import KeyMetadata
from kmscore.specs import HMAC_SPEC_ALGORITHM, KeySpec, KeyState, KeyUsage, Origin
from kmsserve.errors import MalformedRequest, ServeError

ACCOUNT = "000000000000"
"""The AWS account id in every ARN keyhold answers: keyhold has no accounts; twelve zeros
are no real account's id."""
DEFAULT_REGION = "us-east-1"
"""The region of ARNs when a request's credential scope names none (never, for SigV4)."""
ALIAS_PREFIX = "alias/"
_ARN = re.compile(r"arn:aws[a-z-]*:kms:(?P<region>[a-z0-9-]*):(?P<account>\d{12}):(?P<kind>key|alias)/(?P<name>.+)")


class Unsupported(ServeError):
    """A valid AWS request for something keyhold does not offer (grants, tags, key
    policies, custom key stores, multi-Region keys, specs it has not)."""


class InvalidArn(ServeError):
    """A KeyId that starts like an ARN but is not a KMS key or alias ARN."""


class InvalidAliasName(ServeError):
    """An AliasName that is not `alias/<name>` with a name keyhold allows."""


class InvalidMarker(ServeError):
    """A pagination Marker this server did not hand out."""


class LimitExceeded(ServeError):
    """A keyhold limit AWS has no equal of: a key has at most one alias."""


class InvalidSignature(ServeError):
    """Verify: the signature does not hold (AWS answers an error, not SignatureValid=false)."""


class InvalidMac(ServeError):
    """VerifyMac: the MAC does not hold."""


# -- names ---------------------------------------------------------------------------
def is_key_id(name: str) -> bool:
    try:
        return str(uuid.UUID(name)) == name.lower()
    except (ValueError, AttributeError, TypeError):
        return False


def key_name(value: Any, field: str = "KeyId") -> str:
    """An AWS KeyId -> the keyhold name (key id or alias)."""
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{field} must be a non-empty string")
    if value.startswith("arn:"):
        m = _ARN.fullmatch(value)
        if m is None:
            raise InvalidArn(f"{field} {value!r} is not a KMS key ARN or alias ARN")
        if m["account"] != ACCOUNT:
            raise NotFound(f"{field} {value!r} names account {m['account']}; keyhold's keys are in {ACCOUNT}")
        return m["name"] if m["kind"] == "alias" or not is_key_id(m["name"]) else m["name"].lower()
    if value.startswith(ALIAS_PREFIX):
        return value[len(ALIAS_PREFIX):]
    if is_key_id(value):
        return value.lower()
    raise NotFound(f"{field} {value!r} names no key: give a key id, a key ARN, alias/<name> or an alias ARN")


def alias_name(value: Any, *, new: bool = True) -> str:
    """An AWS AliasName (`alias/app/db`) -> keyhold's alias (`app/db`); a new one is
    validated (keyhold's rules: `*/default` is reserved for default keys), an existing
    one is looked up as it is (NotFoundException if it does not exist)."""
    if not isinstance(value, str) or not value.startswith(ALIAS_PREFIX) or value == ALIAS_PREFIX:
        raise InvalidAliasName(f"alias names begin with {ALIAS_PREFIX!r}, e.g. alias/app/db")
    if not new:
        return value[len(ALIAS_PREFIX):]
    try:
        return rules.check_alias(value[len(ALIAS_PREFIX):])
    except InvalidRequest as e:
        raise InvalidAliasName(str(e)) from None


def key_arn(key_id: str, region: str) -> str:
    return f"arn:aws:kms:{region}:{ACCOUNT}:key/{key_id}"


def alias_arn(alias: str, region: str) -> str:
    return f"arn:aws:kms:{region}:{ACCOUNT}:{ALIAS_PREFIX}{alias}"


# -- values ----------------------------------------------------------------------------
def required(fields: Mapping[str, Any], name: str) -> Any:
    value = fields.get(name)
    if value is None:
        raise InvalidRequest(f"1 validation error detected: {name} must not be null")
    return value


def blob(fields: Mapping[str, Any], name: str, *, optional: bool = False) -> bytes | None:
    """A Blob field: base64 text in JSON."""
    value = fields.get(name) if optional else required(fields, name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedRequest(f"{name} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedRequest(f"{name} is not valid base64") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def integer(fields: Mapping[str, Any], name: str, default: int | None = None) -> int | None:
    value = fields.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedRequest(f"{name} must be a whole number")
    return value


def text(fields: Mapping[str, Any], name: str, default: str | None = None) -> str | None:
    value = fields.get(name, default)
    if value is not None and not isinstance(value, str):
        raise MalformedRequest(f"{name} must be a string")
    return value


def context(fields: Mapping[str, Any], name: str = "EncryptionContext") -> dict[str, str] | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidRequest(f"{name} must map strings to strings")
    return value or None


def timestamp(fields: Mapping[str, Any], name: str) -> float | None:
    """A Timestamp field: epoch seconds (what botocore sends for JSON 1.1)."""
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedRequest(f"{name} must be a time in seconds since the epoch")
    return float(value)


class Vocabulary:
    """One AWS enum: the values keyhold has (AWS -> keyhold), those it does not offer."""

    def __init__(self, what: str, mapped: Mapping[str, Any], not_offered: frozenset[str] = frozenset()) -> None:
        self.what = what
        self.mapped = dict(mapped)
        self.not_offered = not_offered
        self.back = {v: k for k, v in self.mapped.items()}

    def parse(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise MalformedRequest(f"a {self.what} is a string")
        if value in self.mapped:
            return self.mapped[value]
        if value in self.not_offered:
            raise Unsupported(f"keyhold does not offer {self.what} {value}; it offers: {', '.join(self.mapped)}")
        raise InvalidRequest(f"{value!r} is not a valid {self.what}; choose one of: {', '.join(self.mapped)}")

    def get(self, fields: Mapping[str, Any], name: str, default: Any = None) -> Any:
        value = fields.get(name)
        return default if value is None else self.parse(value)

    def aws(self, value: Any) -> str:
        return self.back[value]


def _same(values: list[str]) -> dict[str, str]:
    return {v: v for v in values}


KEY_SPECS = Vocabulary("key spec", {
    "SYMMETRIC_DEFAULT": KeySpec.AES_256,
    "RSA_2048": KeySpec.RSA_2048, "RSA_3072": KeySpec.RSA_3072, "RSA_4096": KeySpec.RSA_4096,
    "ECC_NIST_P256": KeySpec.EC_P256, "ECC_NIST_P384": KeySpec.EC_P384,
    "HMAC_256": KeySpec.HMAC_256, "HMAC_384": KeySpec.HMAC_384, "HMAC_512": KeySpec.HMAC_512,
}, frozenset("ECC_NIST_P521 ECC_SECG_P256K1 ECC_NIST_EDWARDS25519 HMAC_224 SM2 ML_DSA_44 ML_DSA_65 ML_DSA_87 "
              "ML_KEM_512 ML_KEM_768 ML_KEM_1024".split()))
KEY_USAGES = Vocabulary("key usage", {u.value: u for u in KeyUsage}, frozenset({"KEY_AGREEMENT", "ENCAPSULATE_DECAPSULATE"}))
ORIGINS = Vocabulary("origin", {"AWS_KMS": Origin.KMS, "EXTERNAL": Origin.EXTERNAL},
                     frozenset({"AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"}))
ENCRYPTION_ALGORITHMS = Vocabulary("encryption algorithm", _same(
    ["SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]), frozenset({"SM2PKE"}))
SIGNING_ALGORITHMS = Vocabulary("signing algorithm", _same([
    "RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
    "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512",
    "ECDSA_SHA_256", "ECDSA_SHA_384", "ECDSA_SHA_512"]),
    frozenset({"SM2DSA", "ML_DSA_SHAKE_256", "ED25519_SHA_512", "ED25519_PH_SHA_512"}))
MAC_ALGORITHMS = Vocabulary("MAC algorithm", _same(["HMAC_SHA_256", "HMAC_SHA_384", "HMAC_SHA_512"]),
                            frozenset({"HMAC_SHA_224"}))
MESSAGE_TYPES = Vocabulary("message type", _same(["RAW", "DIGEST"]), frozenset({"EXTERNAL_MU"}))
WRAPPING_ALGORITHMS = Vocabulary("wrapping algorithm", _same([
    "RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1", "RSA_AES_KEY_WRAP_SHA_256", "RSA_AES_KEY_WRAP_SHA_1"]),
    frozenset({"RSAES_PKCS1_V1_5", "SM2PKE"}))
WRAPPING_KEY_SPECS = Vocabulary("wrapping key spec", _same(["RSA_2048", "RSA_3072", "RSA_4096"]), frozenset({"SM2"}))
DATA_KEY_SPECS = Vocabulary("data key spec", {"AES_256": 256}, frozenset({"AES_128"}))
EXPIRATION_MODELS = Vocabulary("expiration model", _same(["KEY_MATERIAL_EXPIRES", "KEY_MATERIAL_DOES_NOT_EXPIRE"]))

ALL_VOCABULARIES = {
    "KeySpec": KEY_SPECS, "KeyUsageType": KEY_USAGES, "OriginType": ORIGINS,
    "EncryptionAlgorithmSpec": ENCRYPTION_ALGORITHMS, "SigningAlgorithmSpec": SIGNING_ALGORITHMS,
    "MacAlgorithmSpec": MAC_ALGORITHMS, "MessageType": MESSAGE_TYPES,
    "AlgorithmSpec": WRAPPING_ALGORITHMS, "WrappingKeySpec": WRAPPING_KEY_SPECS, "DataKeySpec": DATA_KEY_SPECS,
    "ExpirationModelType": EXPIRATION_MODELS,
}
"""botocore's shape name -> our table (tests check each against botocore's model)."""


def data_key_bits(fields: Mapping[str, Any]) -> int:
    """GenerateDataKey's KeySpec or NumberOfBytes (exactly one, as AWS requires)."""
    spec, size = fields.get("KeySpec"), integer(fields, "NumberOfBytes")
    if (spec is None) == (size is None):
        raise InvalidRequest("give either KeySpec or NumberOfBytes (not both)")
    if spec is not None:
        return DATA_KEY_SPECS.parse(spec)
    if not 1 <= size <= 1024:  # type: ignore[operator]
        raise InvalidRequest("NumberOfBytes must be between 1 and 1024")
    if size not in (32, 64):
        raise Unsupported("keyhold's data keys are 32 or 64 bytes (AES_256 or 512 bits)")
    return size * 8  # type: ignore[operator]


# -- answers -----------------------------------------------------------------------------
def algorithms(spec: KeySpec, usage: KeyUsage) -> dict[str, list[str]]:
    """What DescribeKey and GetPublicKey list for a key of this spec and usage."""
    if usage is KeyUsage.ENCRYPT_DECRYPT:
        return {"EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"] if spec is KeySpec.AES_256
                else ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]}
    if usage is KeyUsage.SIGN_VERIFY:
        family = "ECDSA" if spec.family == "EC" else "RSASSA"
        return {"SigningAlgorithms": [a for a in SIGNING_ALGORITHMS.mapped if a.startswith(family)]}
    return {"MacAlgorithms": [HMAC_SPEC_ALGORITHM[spec].value]}


def key_metadata(md: KeyMetadata, region: str) -> dict[str, Any]:
    """keyhold's KeyMetadata -> AWS's. Default keys (`*/default`, made by keyhold on first
    use, never disabled or deleted) are what AWS calls AWS managed keys: KeyManager AWS."""
    spec = KEY_SPECS.aws(md.spec)
    out: dict[str, Any] = {
        "AWSAccountId": ACCOUNT, "KeyId": md.key_id, "Arn": key_arn(md.key_id, region),
        "CreationDate": md.created_at, "Enabled": md.state is KeyState.ENABLED,
        "Description": md.description, "KeyUsage": md.usage.value, "KeyState": md.state.value,
        "Origin": ORIGINS.aws(md.origin), "KeyManager": "AWS" if md.is_default else "CUSTOMER",
        "CustomerMasterKeySpec": spec, "KeySpec": spec, "MultiRegion": False,
        **algorithms(md.spec, md.usage),
    }
    if md.deletion_date is not None:
        out["DeletionDate"] = md.deletion_date
    if md.origin is Origin.EXTERNAL:
        if md.material_expires_at is not None:
            out.update(ValidTo=md.material_expires_at, ExpirationModel="KEY_MATERIAL_EXPIRES")
        elif md.current_version > 0:
            out["ExpirationModel"] = "KEY_MATERIAL_DOES_NOT_EXPIRE"
    return out


def public_key_der(pem: str) -> bytes:
    """A PEM SubjectPublicKeyInfo -> its DER bytes (what AWS's PublicKey field holds)."""
    body = "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))
    return base64.b64decode(body)
