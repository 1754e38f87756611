"""`${VAR}` in TOML strings: secrets stay in the environment, not in the file.

Pure: the environment is passed in. `$${` writes a literal `${`. Every missing variable
is reported with the key path of the string that names it; values are returned
alongside so messages can be scrubbed of them (they are never logged).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kmscore.config.problems import join_path

_VAR = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def substitute(
    data: Any, env: Mapping[str, str], path: str = ""
) -> tuple[Any, list[tuple[str, str]], dict[str, str]]:
    """(data with `${VAR}` replaced, [(key path, problem)], {value: variable name})."""
    problems: list[tuple[str, str]] = []
    used: dict[str, str] = {}

    def walk(value: Any, where: str) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, join_path(where, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, join_path(where, i)) for i, v in enumerate(value)]
        if not isinstance(value, str) or "$" not in value:
            return value

        def one(m: re.Match) -> str:
            if m.group(0) == "$${":
                return "${"
            name = m.group(1)
            if not _NAME.match(name):
                problems.append((where, f"bad variable reference ${{{name}}}: use ${{NAME}} with letters, digits and _"))
                return ""
            if name not in env:
                problems.append((where, f"environment variable ${{{name}}} is not set"))
                return ""
            used[env[name]] = name
            return env[name]

        return _VAR.sub(one, value)

    return walk(data, path), problems, used
