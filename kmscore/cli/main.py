"""`kms`: the entry point. Sub-commands live in sibling modules, one group per module,
plus whatever installed front ends register (see kmscore.frontend).

Conventions every command shares (docs/OPERATIONS.md, "Command-line conventions"):
global options work before or after the sub-command; a usage mistake is one
`kms: error:` line (with a "did you mean" when a name is close); exit codes come from
one table (EXIT_CODES); `--version`; `kms completion bash|zsh`.

Start-up is part of every command's time (issue 14: on a 1 GiB `encrypt-file` it was
most of the gap to `cp`), so this module and the command modules import only what
parsing needs; each command imports the rest when it runs. Front ends, the entry-point
scan and `up`/`check` load only for their own commands, `--help` and usage mistakes.
"""

from __future__ import annotations

import argparse
import importlib
import re
import signal
import sys
from typing import NoReturn

from kmscore.cli.context import CliContext
from kmscore.errors import KmsError

CORE_MODULES = (
    "kmscore.cli.keys",
    "kmscore.cli.crypto",
    "kmscore.cli.imports",
    "kmscore.cli.audit",
    "kmscore.cli.envelope",
    "kmscore.cli.store",  # km-integrity: kms store verify / reanchor
)
LAZY_MODULES = ("kmscore.cli.deploy", "kmscore.cli.shell", "kmscore.cli.demo")

# Exit codes: one table for every command (KmsError subclasses carry theirs).
EXIT_CODES = (
    (0, "success"),
    (1, "a general error (a file could not be read or written, a key already exists)"),
    (2, "usage: a mistyped command or option, an invalid value, an invalid deployment file"),
    (3, "no such key"),
    (4, "the key's type, spec or usage does not allow the operation"),
    (5, "the key is disabled, pending deletion or has no material"),
    (6, "a ciphertext, signature or token did not verify"),
    (7, "key material could not be imported"),
    (8, "the key store, its home or the root key cannot be used"),
    (9, "the audit log is broken or cannot be written"),
    (10, "the remote KMS ([kms] url) cannot be reached"),
    (11, "the remote KMS refused the access key or its policy refused the call"),
    (70, "an internal error (a bug: please report it)"),
    (130, "interrupted (Ctrl-C)"),
)


def version() -> str:
    """The installed distribution's version (importlib.metadata: only for `--version`)."""
    try:
        from importlib.metadata import version as dist_version

        return dist_version("keyhold")
    except Exception:  # noqa: BLE001 - running from a source tree without metadata
        return "unknown"


class VersionAction(argparse.Action):
    """`--version`, looked up only when asked for (argparse's own action wants the text
    when the parser is built, i.e. an importlib.metadata scan on every command)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default,
                         help=help or "show program's version number and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> NoReturn:
        print(f"kms (keyhold) {version()}")
        parser.exit()


class KmsArgumentParser(argparse.ArgumentParser):
    """argparse, but a mistake is one `kms: error:` line, with a close match suggested.
    No abbreviated options: `--log` must mean `mount --log`, not a guess at `--log-level`."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        root = self.prog.split()[0]
        self.exit(2, f"{root}: error: {self.prog.partition(' ')[2] + ': ' if ' ' in self.prog else ''}"
                     f"{suggest(message, self)} (see `{self.prog} --help`)\n")


_INVALID_CHOICE = re.compile(r"argument (?P<arg>[^:]+): invalid choice: '(?P<value>[^']*)' \(choose from (?P<choices>.*)\)")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (?P<args>.*)")


def suggest(message: str, parser: argparse.ArgumentParser) -> str:
    """Rewrite argparse's messages into short ones that name the closest valid spelling."""
    import difflib

    m = _INVALID_CHOICE.fullmatch(message)
    if m:
        choices = re.findall(r"'([^']*)'", m["choices"])
        what = "unknown command" if m["arg"].isupper() else f"invalid {m['arg']} value"  # sub-commands: upper-case metavars
        close = difflib.get_close_matches(m["value"], choices, n=1, cutoff=0.7)
        if close:
            return f"{what} {m['value']!r}; did you mean {close[0]!r}?"
        if len(choices) > 12:
            return f"{what} {m['value']!r}"
        return f"{what} {m['value']!r}; choose from {', '.join(choices)}"
    m = _UNRECOGNIZED.fullmatch(message)
    if m:
        first = m["args"].split()[0]
        options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
        close = difflib.get_close_matches(first.split("=")[0], options, n=1, cutoff=0.7) if first.startswith("-") else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unrecognized argument{'s' if ' ' in m['args'] else ''}: {m['args']}{hint}"
    return message


def add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every command takes. On sub-commands they default to SUPPRESS, so a
    value given before the sub-command is not reset by the sub-parser."""
    d = {} if top else {"default": argparse.SUPPRESS}
    taken = set(parser._option_string_actions)

    def add(*names: str, **kw) -> None:
        names = tuple(n for n in names if n not in taken)
        if names and names[0].startswith("--"):
            parser.add_argument(*names, **{**kw, **d})

    add("--home", metavar="DIR", help="KMS home folder (default: $KMS_HOME, else ~/.local/share/keyhold)")
    add("--deployment", metavar="CONFIG", help="use the key store and root key of this deployment file's [kms]")
    add("--create-home", action="store_true", help="create the home named by --home/$KMS_HOME if missing (as `kms init`)")
    add("--root-key-file", metavar="FILE", help="root key file (default: $KMS_ROOT_KEY_FILE, $KMS_ROOT_KEY, $KMS_PASSPHRASE or HOME/root.key)")
    add("--passphrase-file", metavar="FILE", help="read the root passphrase from FILE (never from the command line)")
    add("--passphrase-fd", metavar="N", type=int, help="read the root passphrase from file descriptor N")
    add("--log-level", type=str.lower, choices=("debug", "info", "warning", "error"), help="log level (default info)")
    add("--log-format", type=str.lower, choices=("text", "json"), help="log line format (default text)")
    add("--quiet", "-q", action="store_true", help="print results and errors only: no notices, no progress")
    add("--verbose", "-v", action="store_true", help="more detail (debug logs)")


def _each_parser(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield child
                yield from _each_parser(child)


class _Skipped:
    """Stands in for the parser of a command that is not being run: takes every call
    (add_argument, set_defaults, add_subparsers, ...) and builds nothing."""

    def __getattr__(self, name: str):
        return self._ignore

    def _ignore(self, *args, **kwargs) -> "_Skipped":
        return self


class _OnlyCommand:
    """The sub-parsers action as the command modules see it when the command line names
    `command`: only that command's parser is built, the others are `_Skipped` (argparse
    spent ~40 ms under cProfile building the core's 38 parsers with their global options)."""

    def __init__(self, sub: argparse._SubParsersAction, command: str) -> None:
        self._sub, self._command = sub, command

    def add_parser(self, name: str, **kwargs):
        if self._command == name or self._command in kwargs.get("aliases", ()):
            return self._sub.add_parser(name, **kwargs)
        return _Skipped()

    def __getattr__(self, name: str):
        return getattr(self._sub, name)


def build_parser(ctx: CliContext, command: str | None = None, *, everything: bool = False) -> argparse.ArgumentParser:
    """The parser for a command line naming `command`: only that command's parser when
    it is a core command; front ends and `up`/`check` are loaded only when the command is
    none of the core's (or None: `--help`, a missing command; or `everything`)."""
    parser = KmsArgumentParser(
        prog="kms",
        description="keyhold: a self-hosted key management service.",
        epilog="KEY is a key id or an alias. Run `kms COMMAND --help` for a command's options. "
        "Exit codes: " + ", ".join(f"{c} {t.split(' (')[0]}" for c, t in EXIT_CODES) + ".",
    )
    parser.add_argument("--version", action=VersionAction)
    add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=KmsArgumentParser)
    if command == "--version":  # argparse stops at the flag: no command is needed
        return parser
    core = [importlib.import_module(name) for name in CORE_MODULES]
    if not everything and command is not None:
        for module in core:
            module.register(_OnlyCommand(sub, command), ctx)
    if everything or command is None or command not in sub.choices:  # a front end's command, or a typo
        from kmscore.frontend import load_frontends

        for module in core:
            module.register(sub, ctx)
        for name in LAZY_MODULES:
            importlib.import_module(name).register(sub, ctx)
        for frontend in load_frontends():
            frontend.register_cli(sub, ctx)
    for child in _each_parser(parser):
        add_global_options(child, top=False)
    return parser


def requested_command(argv: list[str]) -> str | None:
    """The sub-command named on the command line, skipping the global options; "--version"
    when that flag comes first (argparse acts on it and exits before any command)."""
    with_value = {"--home", "--deployment", "--root-key-file", "--passphrase-file", "--passphrase-fd",
                  "--log-level", "--log-format"}
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in with_value:
            skip = True
        elif arg in ("-h", "--help"):
            return None
        elif arg == "--version":
            return arg
        elif not arg.startswith("-"):
            return arg
    return None


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    ctx = CliContext()
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(ctx, requested_command(argv))
    args = parser.parse_args(argv)
    ctx.args = args
    ctx.parser = parser
    return run_command(args, ctx)


def run_command(args: argparse.Namespace, ctx: CliContext, prog: str = "kms") -> int:
    """Run a parsed command: every error becomes `prog: error: ...` lines and an exit
    code, never a traceback. Shared by `kms`, `kms-mount` and `kms-proxy`."""
    try:
        ctx.setup_logging()
        return int(args.run(args, ctx) or 0)
    except KmsError as e:
        for line in str(e).splitlines() or [type(e).__name__]:
            print(f"{prog}: error: {line}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as e:  # an optional part that is not installed
        print(f"{prog}: error: {missing_module_message(e.name)}", file=sys.stderr)
        return 1
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


OPTIONAL_PARTS = {"mitmproxy": "the sidecar needs mitmproxy 12: pip install 'keyhold[sidecar]' (Python >= 3.12)"}


def missing_module_message(name: str | None) -> str:
    top = (name or "").split(".")[0]
    return f"the Python package {top!r} is not installed; " + OPTIONAL_PARTS.get(top, "reinstall keyhold")


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
