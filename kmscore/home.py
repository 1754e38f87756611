"""Where a KMS keeps its files: `--home`, else `$KMS_HOME`, else a per-user folder.

A home the operator *named* (`--home`, `$KMS_HOME`, a deployment file) is never created
as a side effect of another command: a typo would otherwise give a fresh, empty key
store and a new root key, and the real keys would seem gone. Only `kms init` (or the
explicit `--create-home` flag) creates a named home. The per-user default home may be
made on first use, and the CLI says so.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from kmscore.errors import StoreError

HOME_ENV = "KMS_HOME"
DB_NAME = "keys.db"  # the store's file name (kmscore.store.DB_NAME, kept import-free here)


def resolve_home(explicit: str | os.PathLike | None = None) -> Path:
    return choose_home(explicit).path


@dataclass(frozen=True)
class HomeChoice:
    """A home folder and who named it: "--home", "$KMS_HOME", a config file, or "default"."""

    path: Path
    named_by: str

    @property
    def explicit(self) -> bool:
        return self.named_by != "default"

    @property
    def store(self) -> Path:
        return self.path / DB_NAME


def choose_home(explicit: str | os.PathLike | None = None, named_by: str = "--home") -> HomeChoice:
    if explicit:
        return HomeChoice(Path(explicit).expanduser().resolve(), named_by)
    if os.environ.get(HOME_ENV):
        return HomeChoice(Path(os.environ[HOME_ENV]).expanduser().resolve(), f"${HOME_ENV}")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return HomeChoice(Path(data) / "keyhold", "default")


def check_home(choice: HomeChoice, *, may_create: bool) -> str | None:
    """Refuse a home that is unsafe or that would be created by mistake.

    Returns a notice for the user when a new default home is about to be made; raises
    StoreError (with how to fix it) otherwise.
    """
    path = choice.path
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise StoreError(f"cannot use KMS home {path}: {e.strerror}") from None
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError(f"KMS home {path} (from {choice.named_by}) is not a directory")
        if st.st_mode & stat.S_IWOTH:
            raise StoreError(
                f"KMS home {path} is writable by every user (mode {st.st_mode & 0o7777:o}): anyone could "
                f"replace its key store; run `chmod 700 {path}`"
            )
    if choice.store.exists() or may_create:
        return None
    if choice.explicit:
        where = "does not exist" if st is None else "holds no key store"
        raise StoreError(
            f"KMS home {path} (from {choice.named_by}) {where}; check the spelling, or create it "
            f"with `kms init --home {path}`"
        )
    return (f"no key store yet: creating the per-user default home {path} (for another store: --home DIR, "
            f"${HOME_ENV}, or --deployment CONFIG for a deployment's, e.g. config/example.toml)")
