"""How front ends plug into kmscore without kmscore importing them.

A front end (fsmount, sidecar) publishes a `Frontend` object under the entry point
group `keyhold.frontends` (see pyproject.toml). The `kms` CLI adds its sub-commands,
the config loader validates its TOML section, and `kms up` starts and reloads it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from kmscore.cli.context import CliContext
    from kmscore.facade import Kms

ENTRY_POINT_GROUP = "keyhold.frontends"


class Service(Protocol):
    """What `kms up` holds for one running front end section."""

    def apply(self, entries: Sequence[Any]) -> list[str]:
        """Apply a new, already validated list of entries live; return what changed."""

    def stop(self) -> None:
        """Stop cleanly: drain, flush, unmount."""

    # Optional: `poll(self) -> None`, called by `kms up` between its ticks so that a
    # service can notice and restart what died (fsmount's supervised mounts).


@dataclass(frozen=True)
class Frontend:
    name: str
    register_cli: Callable[[argparse._SubParsersAction, "CliContext"], None]
    config_key: str | None = None
    """The TOML section this front end owns: an array of tables (`mount`, `proxy`), or
    one table with `config_table`."""
    config_model: type | None = None
    """A pydantic model for one entry of that array."""
    config_table: bool = False
    """The section is one table (`[serve]`) instead of an array of tables: its entries
    are then () when absent or (the table,), so reloads, checks and `kms up` treat it as
    an array of at most one entry; problems are placed at `serve.listen`."""
    check: Callable[[Sequence[Any], "Kms"], list[tuple[str, str]]] | None = None
    """Semantic checks against the key store: (key path inside the entry, message)."""
    warnings: Callable[[Sequence[Any]], list[tuple[str, str]]] | None = None
    """What runs but maybe not as meant, placed like `check`'s findings; `kms check` prints them."""
    start: Callable[[Sequence[Any], "Kms"], Service] | None = None
    """Start every entry of the section; used by `kms up`."""


def load_frontends() -> list[Frontend]:
    """Every installed front end, in name order. Broken plugins are skipped with a warning.

    importlib.metadata (its scan of every installed distribution) is imported here, not
    with the module: only commands that need the front ends pay for it."""
    from importlib.metadata import entry_points

    found = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            found.append(ep.load())
        except Exception as e:  # a missing system library must not break the core CLI
            import sys

            print(f"kms: warning: front end {ep.name!r} is unavailable: {e}", file=sys.stderr)
    return found
