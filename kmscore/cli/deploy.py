"""`kms up CONFIG` and `kms check CONFIG`: a whole deployment from one TOML file.

Both open the Kms that the config's `[kms]` section describes, not the global --home.
Relative paths in the file mean "next to the config file": the process works from the
config file's folder, as a systemd `WorkingDirectory=` would.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from kmscore.config import ConfigError, Deployment, NoKeyStore, Problem, check_deployment, load_config
from kmscore.errors import KmsError
from kmscore.home import resolve_home
from kmscore.store import DB_NAME
from kmscore.frontend import load_frontends


def register(sub: argparse._SubParsersAction, ctx) -> None:
    up = sub.add_parser(
        "up", help="run a deployment: keys, mounts and proxies from one config file",
        description="Ensure the [[keys]], mount every [[mount]], start every [[proxy]]; reload when the "
        "file changes or on SIGHUP; stop cleanly on SIGTERM or Ctrl-C.",
    )
    up.add_argument("config", metavar="CONFIG", help="deployment file (TOML), e.g. config/example.toml")
    up.add_argument("--json", action="store_true", help="log JSON lines (same as --log-format json)")
    up.set_defaults(run=run_up)
    chk = sub.add_parser(
        "check", help="validate a deployment file without starting anything",
        description="Check the file's shape and its keys, mounts and routes against the key store; "
        "print every problem as FILE: KEY PATH: MESSAGE and exit non-zero if there is one.",
    )
    chk.add_argument("config", metavar="CONFIG", help="deployment file (TOML)")
    chk.add_argument("--json", action="store_true", help="print the result (and every problem) as JSON")
    chk.set_defaults(run=run_check)
    st = sub.add_parser(
        "status", help="is a deployment up? keys usable, mounts mounted, proxies listening",
        description="Check a running deployment from outside (the same checks as /readyz); exit 0 when "
        "every check passes, 1 otherwise.",
    )
    st.add_argument("config", metavar="CONFIG", help="deployment file (TOML)")
    st.add_argument("--json", action="store_true", help="print the checks as JSON")
    st.set_defaults(run=run_status)


def _load(path: str):
    """The deployment, with the working folder moved next to it (relative paths)."""
    absolute = Path(path).absolute()
    frontends = load_frontends()
    if absolute.parent.is_dir():  # else load_config reports the missing file
        os.chdir(absolute.parent)
    return load_config(absolute, frontends=frontends), frontends


def store_exists(dep: Deployment) -> bool:
    return (resolve_home(dep.home) / DB_NAME).exists()


def _print_problems(problems, as_json: bool = False, config: str = "") -> int:
    if as_json:
        print(json.dumps({"config": config, "ok": False, "problems": [
            {"file": p.file, "path": p.path, "message": p.message} for p in problems]}, indent=2))
        return 2
    for p in problems:
        print(p, file=sys.stderr)
    print(f"kms: {len(problems)} problem{'s' if len(problems) != 1 else ''} found", file=sys.stderr)
    return 2


def run_check(args: argparse.Namespace, ctx) -> int:
    from kmscore.deploy import open_kms

    try:
        dep, frontends = _load(args.config)
    except ConfigError as e:
        return _print_problems(e.problems, args.json, args.config)
    if dep.kms.url is not None:  # a remote KMS: checked against the server, which must answer
        try:
            with open_kms(dep, caller="kms check") as kms:
                found = check_deployment(dep, kms, frontends, warnings=True)
        except KmsError as e:
            found = [Problem(dep.file, "kms.url", f"the remote KMS did not answer the checks: {e}")]
    elif store_exists(dep):
        with open_kms(dep, caller="kms check") as kms:
            found = check_deployment(dep, kms, frontends, warnings=True)
    else:  # a fresh host: check against an empty store, create nothing
        ctx.info(f"no key store in {dep.home or resolve_home()} yet: `kms up` will create it")
        found = check_deployment(dep, NoKeyStore(), frontends, warnings=True)
    problems = [p for p in found if p.is_error]
    for warning in (p for p in found if not p.is_error):
        print(warning, file=sys.stderr)
    if problems:
        return _print_problems(problems, args.json, args.config)
    if args.json:
        print(json.dumps({"config": args.config, "ok": True, "problems": [], "keys": len(dep.keys),
                          **{k: len(e) for k, e in dep.sections}}, indent=2))
        return 0
    tables = {f.config_key for f in frontends if getattr(f, "config_table", False)}  # [serve]: shown when present
    counts = ", ".join(f"{len(e)} {k}" for k, e in dep.sections if e or k not in tables)
    keys = f"{len(dep.keys)} key{'' if len(dep.keys) == 1 else 's'}"
    print(f"{args.config}: OK ({keys}{', ' + counts if counts else ''})")
    return 0


def run_status(args: argparse.Namespace, ctx) -> int:
    """The readiness checks, from another process (the CLI opens the store read-mostly)."""
    from kmscore.deploy import open_kms
    from kmscore.deploy.status import deployment_status, front_end_checks

    try:
        dep, _frontends = _load(args.config)
    except ConfigError as e:
        return _print_problems(e.problems, args.json, args.config)
    if dep.kms.url is not None or store_exists(dep):
        with open_kms(dep, caller="kms status") as kms:
            checks = deployment_status(dep, kms)
    else:
        checks = [{"check": "key store", "ok": False, "detail": f"no key store in {resolve_home(dep.home)}"},
                  *front_end_checks(dep)]
    ok = all(c["ok"] for c in checks)
    if args.json:
        print(json.dumps({"config": args.config, "ready": ok, "checks": checks}, indent=2))
    else:
        width = max(len(c["check"]) for c in checks)
        for c in checks:
            print(f"{'ok ' if c['ok'] else 'NO '} {c['check']:<{width}}  {c['detail']}")
        print(f"{args.config}: {'ready' if ok else 'NOT ready'}")
    return 0 if ok else 1


def run_up(args: argparse.Namespace, ctx) -> int:
    from kmscore.deploy import open_kms, run

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload asked for while starting must not kill us
    if args.json:
        from kmscore.logs import setup_logging

        setup_logging(getattr(args, "log_level", None), "json")
    try:
        dep, frontends = _load(args.config)
    except ConfigError as e:
        return _print_problems(e.problems, args.json, args.config)
    with open_kms(dep) as kms:
        for notice in kms.notices:
            logging.getLogger("keyhold.up").info(notice)
        try:
            return run(dep, kms, frontends)
        except ConfigError as e:
            return _print_problems(e.problems)
