"""`load_config(path)`: a TOML file in, a frozen `Deployment` out, or every problem at once.

Pure apart from reading the file: the environment and the front ends are parameters
(defaulting to `os.environ` and the installed entry points), so tests can pass their own.
Relative paths in `[kms]` resolve against the config file's folder; front-end models get
that folder as pydantic validation context (`info.context["config_dir"]`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from kmscore.config.envsubst import substitute
from kmscore.config.problems import (
    ConfigError,
    Problem,
    from_validation_error,
    join_path,
    redact,
    unknown_key_message,
)
from kmscore.config.schema import Deployment, KeyDecl, KmsSection, RootKeyFile
from kmscore.frontend import Frontend, load_frontends

CORE_SECTIONS = ("kms", "keys")


def load_config(
    path: str | os.PathLike,
    *,
    env: Mapping[str, str] | None = None,
    frontends: Sequence[Frontend] | None = None,
) -> Deployment:
    """Read and shape-check a deployment file; raise ConfigError listing every problem."""
    path = Path(path)
    file = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([Problem(file, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([Problem(file, "", f"cannot read: {getattr(e, 'strerror', None) or e}")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([Problem(file, "", f"not valid TOML: {e}")]) from None
    return parse_config(raw, path, env=os.environ if env is None else env, frontends=frontends)


def parse_config(
    raw: Mapping[str, Any],
    path: Path,
    *,
    env: Mapping[str, str],
    frontends: Sequence[Frontend] | None = None,
) -> Deployment:
    """The pure part of `load_config`: parsed TOML in, Deployment (or ConfigError) out."""
    file = str(path)
    base = Path(os.path.abspath(path)).parent  # the folder the file is named in (not a symlink target)
    owners = {f.config_key: f for f in (load_frontends() if frontends is None else frontends) if f.config_key}
    data, env_problems, secrets = substitute(dict(raw), env)
    problems = [Problem(file, where, msg) for where, msg in env_problems]

    for name in data:
        if name not in CORE_SECTIONS and name not in owners:
            allowed = [*CORE_SECTIONS, *owners]
            problems.append(Problem(file, name, unknown_key_message(name, allowed, "section")))

    kms = _validate(file, "kms", KmsSection, data.get("kms", {}), problems, base)
    keys = _validate_array(file, "keys", KeyDecl, data.get("keys", []), problems, base)
    problems.extend(_core_problems(file, kms, keys, env))

    sections = []
    with _working_folder(base):
        for key, frontend in owners.items():
            model = frontend.config_model
            if model is None:
                entries = []
            elif getattr(frontend, "config_table", False):  # one table, e.g. [serve]
                entries = [] if key not in data else [_validate(file, key, model, data[key], problems, base)]
            else:
                entries = _validate_array(file, key, model, data.get(key, []), problems, base)
            sections.append((key, tuple(entries)))

    if problems:
        raise ConfigError(redact(_after_env(problems, {w for w, _ in env_problems}, len(env_problems)), secrets))
    assert kms is not None
    home = None if kms.home is None else (base / Path(kms.home).expanduser()).resolve()
    source = kms.root_key_source()
    if source is not None and source.kind == "file":
        source = type(source)("file", str((base / Path(source.value).expanduser()).resolve()))
    return Deployment(
        path=path,
        kms=kms,
        home=home,
        root_key=source,
        keys=tuple(keys),  # type: ignore[arg-type]
        sections=tuple(sections),
        secrets=tuple(secrets.items()),
    )


def _core_problems(file: str, kms: KmsSection | None, keys: list[KeyDecl | None], env: Mapping[str, str]) -> list[Problem]:
    """What the models cannot see alone: an alias declared twice, an unset root key variable."""
    out = []
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key is not None and key.alias in seen:
            out.append(Problem(file, f"keys[{i}].alias", f"{key.alias!r} is already declared by keys[{seen[key.alias]}]"))
        elif key is not None:
            seen[key.alias] = i
    root = kms.root_key if kms is not None else None
    if root is not None and not isinstance(root, RootKeyFile) and not env.get(root.var):
        out.append(Problem(file, "kms.root_key.var", f"environment variable ${root.var} is not set"))
    if kms is not None and kms.url is not None:
        out.extend(_remote_problems(file, kms))
    return out


def _remote_problems(file: str, kms: KmsSection) -> list[Problem]:
    """A remote KMS's files: the access key file readable and private, the CA file a CA."""
    import ssl

    from kmscore.errors import KmsError
    from kmscore.remote import Credentials

    out = []
    try:
        Credentials.load(kms.access_key_file)  # type: ignore[arg-type]
    except KmsError as e:
        out.append(Problem(file, "kms.access_key_file", str(e)))
    if kms.ca_file is not None:
        try:
            ssl.create_default_context(cafile=kms.ca_file)
        except (OSError, ssl.SSLError) as e:
            out.append(Problem(file, "kms.ca_file", f"cannot use {kms.ca_file} as a CA file: "
                               f"{getattr(e, 'strerror', None) or e}"))
    return out


_cwd_lock = threading.Lock()


@contextlib.contextmanager
def _working_folder(folder: Path) -> Iterator[None]:
    """Run front-end validators from the config's folder.

    Front-end models turn relative paths absolute with `os.path.abspath` (fsmount's
    cipher_dir, mount_point), i.e. against the working folder. `kms up` and `kms check`
    already work from the config's folder, so this changes nothing there; for other
    callers it makes "relative to the config file" hold for every front end, also for
    models that do not read `info.context["config_dir"]`.
    """
    with _cwd_lock:
        before = os.getcwd()
        try:
            if Path(before) != folder:
                os.chdir(folder)
        except OSError:  # parse_config on a path that is not on disk: nothing to resolve against
            pass
        try:
            yield
        finally:
            os.chdir(before)


def _validate(
    file: str, where: str, model: type[BaseModel], value: Any, problems: list[Problem], base: Path
) -> Any:
    if not isinstance(value, dict):
        problems.append(Problem(file, where, f"expected a table ([{where}])"))
        return None
    try:
        return model.model_validate(value, context={"config_dir": str(base)})
    except ValidationError as e:
        problems.extend(from_validation_error(file, where, e, model))
        return None


def _validate_array(
    file: str, where: str, model: type[BaseModel], value: Any, problems: list[Problem], base: Path
) -> list[Any]:
    if not isinstance(value, list):
        problems.append(Problem(file, where, f"expected an array of tables ([[{where}]])"))
        return []
    return [_validate(file, join_path(where, i), model, item, problems, base) for i, item in enumerate(value)]


def _after_env(problems: list[Problem], unset: set[str], n_env: int) -> list[Problem]:
    """Drop follow-up errors about a value whose `${VAR}` was missing (it reads as '')."""
    return [
        p for i, p in enumerate(problems)
        if i < n_env or not any(p.path == u or p.path.startswith(u + ".") for u in unset)
    ]
