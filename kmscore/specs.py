"""Key specs, usages, origins, states and algorithms: the vocabulary of the KMS.

Pure data. Which combinations are allowed is decided in `kmscore.rules`.
"""

from __future__ import annotations

import enum


class KeySpec(str, enum.Enum):
    AES_256 = "AES_256"
    HMAC_256 = "HMAC_256"
    HMAC_384 = "HMAC_384"
    HMAC_512 = "HMAC_512"
    RSA_2048 = "RSA_2048"
    RSA_3072 = "RSA_3072"
    RSA_4096 = "RSA_4096"
    EC_P256 = "EC_P256"
    EC_P384 = "EC_P384"

    @property
    def family(self) -> str:
        """'AES', 'HMAC', 'RSA' or 'EC'."""
        return self.value.split("_")[0]

    @property
    def is_asymmetric(self) -> bool:
        return self.family in ("RSA", "EC")


class KeyUsage(str, enum.Enum):
    ENCRYPT_DECRYPT = "ENCRYPT_DECRYPT"
    SIGN_VERIFY = "SIGN_VERIFY"
    GENERATE_VERIFY_MAC = "GENERATE_VERIFY_MAC"


class Origin(str, enum.Enum):
    KMS = "KMS"
    EXTERNAL = "EXTERNAL"


class KeyState(str, enum.Enum):
    ENABLED = "Enabled"
    DISABLED = "Disabled"
    PENDING_DELETION = "PendingDeletion"
    PENDING_IMPORT = "PendingImport"


class EncryptionAlgorithm(str, enum.Enum):
    SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"  # AES-256-GCM, KMS ciphertext blob
    RSAES_OAEP_SHA_256 = "RSAES_OAEP_SHA_256"
    RSAES_OAEP_SHA_1 = "RSAES_OAEP_SHA_1"


class SigningAlgorithm(str, enum.Enum):
    RSASSA_PSS_SHA_256 = "RSASSA_PSS_SHA_256"
    RSASSA_PSS_SHA_384 = "RSASSA_PSS_SHA_384"
    RSASSA_PSS_SHA_512 = "RSASSA_PSS_SHA_512"
    RSASSA_PKCS1_V1_5_SHA_256 = "RSASSA_PKCS1_V1_5_SHA_256"
    RSASSA_PKCS1_V1_5_SHA_384 = "RSASSA_PKCS1_V1_5_SHA_384"
    RSASSA_PKCS1_V1_5_SHA_512 = "RSASSA_PKCS1_V1_5_SHA_512"
    ECDSA_SHA_256 = "ECDSA_SHA_256"
    ECDSA_SHA_384 = "ECDSA_SHA_384"
    ECDSA_SHA_512 = "ECDSA_SHA_512"

    @property
    def family(self) -> str:
        """'RSA' or 'EC': the key family that can use this algorithm."""
        return "EC" if self.value.startswith("ECDSA") else "RSA"

    @property
    def hash_name(self) -> str:
        return "sha" + self.value.rsplit("_", 1)[1]


class MacAlgorithm(str, enum.Enum):
    HMAC_SHA_256 = "HMAC_SHA_256"
    HMAC_SHA_384 = "HMAC_SHA_384"
    HMAC_SHA_512 = "HMAC_SHA_512"


class MessageType(str, enum.Enum):
    RAW = "RAW"
    DIGEST = "DIGEST"


class WrappingAlgorithm(str, enum.Enum):
    """How imported key material is wrapped on its way in.

    The plain OAEP algorithms carry at most (modulus - 2*hash - 2) bytes: enough for
    AES and EC private keys, not for RSA private keys. For those, the RSA_AES_KEY_WRAP
    variants wrap a one-time AES key with OAEP and the material with it (RFC 5649).
    """

    RSAES_OAEP_SHA_256 = "RSAES_OAEP_SHA_256"
    RSAES_OAEP_SHA_1 = "RSAES_OAEP_SHA_1"
    RSA_AES_KEY_WRAP_SHA_256 = "RSA_AES_KEY_WRAP_SHA_256"
    RSA_AES_KEY_WRAP_SHA_1 = "RSA_AES_KEY_WRAP_SHA_1"

    @property
    def uses_sha1(self) -> bool:
        return self.value.endswith("SHA_1")


class WrappingKeySpec(str, enum.Enum):
    RSA_2048 = "RSA_2048"
    RSA_3072 = "RSA_3072"
    RSA_4096 = "RSA_4096"


DEFAULT_SERVICES = ("fsmount", "sidecar")
"""Services that own a default key `<service>/default`, created on first use."""

MAX_PLAINTEXT = 4096
"""Largest plaintext encrypt_data accepts (symmetric and RSA alike; RSA is smaller)."""

DATAKEY_BITS = (256, 512)

HMAC_SPEC_ALGORITHM = {
    KeySpec.HMAC_256: MacAlgorithm.HMAC_SHA_256,
    KeySpec.HMAC_384: MacAlgorithm.HMAC_SHA_384,
    KeySpec.HMAC_512: MacAlgorithm.HMAC_SHA_512,
}


def parse_enum(enum_type: type[enum.Enum], value: str | enum.Enum, what: str) -> enum.Enum:
    """Turn user text into an enum member, or raise a message listing the choices."""
    from kmscore.errors import InvalidRequest

    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(str(value).upper() if what != "state" else str(value))
    except ValueError:
        choices = ", ".join(m.value for m in enum_type)
        raise InvalidRequest(f"unknown {what} {value!r}; choose one of: {choices}") from None
