"""`kms completion bash|zsh`: shell completion generated from the parser itself (shtab),
so it never drifts from the commands and options that exist."""

from __future__ import annotations

import argparse

SHELLS = ("bash", "zsh")


def register(sub: argparse._SubParsersAction, ctx) -> None:
    p = sub.add_parser(
        "completion", help="print a bash or zsh completion script",
        description="Print a completion script for SHELL. Install it with e.g.\n"
        "  kms completion bash > /etc/bash_completion.d/kms\n"
        "  kms completion zsh > \"${fpath[1]}/_kms\"",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash or zsh")
    p.set_defaults(run=run_completion)


def run_completion(args: argparse.Namespace, ctx) -> int:
    import shtab

    from kmscore.cli.main import build_parser

    parser = build_parser(ctx, everything=True)  # every front end's commands too
    print(shtab.complete(parser, shell=args.shell))
    return 0
