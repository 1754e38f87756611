"""keyhold's KMS core: keys, key store, crypto operations, envelope format, config."""

from kmscore.errors import *  # noqa: F401,F403
from kmscore.errors import __all__ as _errors
from kmscore.facade import Kms
from kmscore.metadata import DataKey, ImportParameters, KeyMetadata
from kmscore.rootkey import RootKeySource
from kmscore.specs import (
    EncryptionAlgorithm,
    KeySpec,
    KeyState,
    KeyUsage,
    MacAlgorithm,
    MessageType,
    Origin,
    SigningAlgorithm,
    WrappingAlgorithm,
)

__all__ = [
    *_errors,
    "Kms",
    "DataKey",
    "ImportParameters",
    "KeyMetadata",
    "RootKeySource",
    "EncryptionAlgorithm",
    "KeySpec",
    "KeyState",
    "KeyUsage",
    "MacAlgorithm",
    "MessageType",
    "Origin",
    "SigningAlgorithm",
    "WrappingAlgorithm",
]
