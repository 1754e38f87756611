"""`kms`: the entry point. Sub-commands live in sibling modules, one group per module,
plus whatever installed front ends register (see kmscore.frontend)."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from kmscore.cli.context import CliContext
from kmscore.errors import KmsError
from kmscore.frontend import load_frontends

CORE_MODULES = (
    "kmscore.cli.keys",
    "kmscore.cli.crypto",
    "kmscore.cli.imports",
    "kmscore.cli.audit",
    "kmscore.cli.envelope",
    "kmscore.cli.store",  # km-integrity: kms store verify / reanchor
)
DEPLOY_MODULE = "kmscore.cli.deploy"
GLOBAL_OPTIONS_WITH_VALUE = ("--home", "--root-key-file")


def requested_command(argv: list[str]) -> str | None:
    """The sub-command named on the command line, skipping the global options."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in GLOBAL_OPTIONS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(ctx: CliContext, command: str | None = None) -> argparse.ArgumentParser:
    """The parser; front ends and `up`/`check` are loaded only when the command needs them
    (loading them costs most of a core command's start-up time)."""
    parser = argparse.ArgumentParser(
        prog="kms",
        description="keyhold: a self-hosted key management service.",
        epilog="KEY is a key id or an alias. Run `kms COMMAND --help` for a command's options.",
    )
    parser.add_argument("--home", help="KMS home folder (default: $KMS_HOME or ~/.local/share/keyhold)")
    parser.add_argument("--root-key-file", help="root key file (default: $KMS_ROOT_KEY, $KMS_PASSPHRASE or HOME/root.key)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in CORE_MODULES:
        importlib.import_module(name).register(sub, ctx)
    if command is None or command not in sub.choices:
        importlib.import_module(DEPLOY_MODULE).register(sub, ctx)
        for frontend in load_frontends():
            frontend.register_cli(sub, ctx)
    return parser


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    ctx = CliContext()
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(ctx, requested_command(argv))
    args = parser.parse_args(argv)
    ctx.args = args
    return run_command(args, ctx)


def run_command(args: argparse.Namespace, ctx: CliContext, prog: str = "kms") -> int:
    """Run a parsed command: every error becomes `prog: error: ...` lines and an exit
    code, never a traceback. Shared by `kms`, `kms-mount` and `kms-proxy`."""
    try:
        return int(args.run(args, ctx) or 0)
    except KmsError as e:
        for line in str(e).splitlines() or [type(e).__name__]:
            print(f"{prog}: error: {line}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        print(f"{prog}: error: {e.strerror or e}{': ' + str(e.filename) if e.filename else ''}", file=sys.stderr)
        return 1
    except Exception as e:  # never a traceback at a user
        print(f"{prog}: internal error: {type(e).__name__}: {e} (please report this)", file=sys.stderr)
        return 70
    finally:
        try:
            ctx.close()
        except KmsError:
            pass


def common(parser: argparse.ArgumentParser, *, json: bool = True, io: bool = False) -> argparse.ArgumentParser:
    """Options shared by many commands."""
    if json:
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
    if io:
        parser.add_argument("--in", dest="in_", metavar="FILE", help="read data from FILE (default: stdin)")
        parser.add_argument("--out", metavar="FILE", help="write the result to FILE (default: stdout)")
        parser.add_argument("--base64", action="store_true", help="print binary output as base64")
    return parser


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
