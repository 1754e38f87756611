"""kms serve as a keyhold front end: the `kms serve` and `kms access-key` commands
(the `[serve]` section and `kms up` come with the server work)."""

from __future__ import annotations

from kmscore.frontend import Frontend
from kmsserve.cli import register_cli

FRONTEND = Frontend(name="serve", register_cli=register_cli)
