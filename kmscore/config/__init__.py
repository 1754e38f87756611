"""One TOML file for a whole deployment: `[kms]`, `[[keys]]` and the front ends' sections.

`load_config` checks the shape (every problem at once, `<file>: <key path>: <message>`);
`check_deployment` checks meaning against the key store. Both are pure functions over
frozen objects: a reload builds a new `Deployment` and swaps it in whole, or not at all.
"""

from kmscore.config.checks import NoKeyStore, PlannedKms, check_deployment, compare_key
from kmscore.config.loader import load_config, parse_config
from kmscore.config.problems import ConfigError, Problem
from kmscore.config.schema import AuditSettings, Deployment, KeyDecl, KmsSection

__all__ = [
    "AuditSettings",
    "ConfigError",
    "Deployment",
    "KeyDecl",
    "KmsSection",
    "NoKeyStore",
    "PlannedKms",
    "Problem",
    "check_deployment",
    "compare_key",
    "load_config",
    "parse_config",
]
