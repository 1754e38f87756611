"""keyhold's KMS core: keys, key store, crypto operations, envelope format, config.

The public names are imported on first use (PEP 562 `__getattr__`): `import kmscore`,
which every `kms` command does through `kmscore.cli`, must not load the key store,
sqlite3 and cryptography for `kms --version` (issue 14). `from kmscore import Kms`
works as before. The errors are light and imported at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kmscore.errors import *  # noqa: F401,F403
from kmscore.errors import __all__ as _errors

_LAZY = {
    "Kms": "kmscore.facade",
    "DataKey": "kmscore.metadata",
    "ImportParameters": "kmscore.metadata",
    "KeyMetadata": "kmscore.metadata",
    "RootKeySource": "kmscore.rootkey",
    **{name: "kmscore.specs" for name in (
        "EncryptionAlgorithm", "KeySpec", "KeyState", "KeyUsage", "MacAlgorithm", "MessageType", "Origin",
        "SigningAlgorithm", "WrappingAlgorithm",
    )},
}

__all__ = [*_errors, *_LAZY]

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kmscore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
