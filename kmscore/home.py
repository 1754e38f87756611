"""Where a KMS keeps its files: `--home`, else `$KMS_HOME`, else a per-user folder."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "KMS_HOME"


def resolve_home(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser().resolve()
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser().resolve()
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "keyhold"
