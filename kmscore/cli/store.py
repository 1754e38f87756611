"""`kms store verify` and `kms store reanchor`: the key store's integrity (kmscore.storeguard).

Both open the store in "report" mode: a store that fails its checks is opened anyway
(never maintained), so they can say what is wrong, or accept it as it is.
"""

from __future__ import annotations

import argparse

from kmscore.cli.context import CliContext
from kmscore.cli.main import common
from kmscore.errors import InvalidRequest


def register(sub: argparse._SubParsersAction, ctx: CliContext) -> None:
    store = sub.add_parser("store", help="the key store's integrity").add_subparsers(
        dest="store_command", metavar="ACTION", required=True
    )
    p = common(store.add_parser(
        "verify", help="check every key row's MAC, the audit log and its anchor; exit 1 on any problem"
    ))
    p.set_defaults(run=run_verify, integrity="report")
    p = common(store.add_parser(
        "reanchor",
        help="accept the store as it is now (after restoring an older backup on purpose, or a lost anchor)",
    ))
    p.add_argument("--accept-rollback", action="store_true", required=True,
                   help="confirm: records between the anchor and the store as it is are given up")
    p.set_defaults(run=run_reanchor, integrity="report")


def run_verify(args: argparse.Namespace, ctx: CliContext) -> int:
    problems = ctx.kms.verify_store()
    text = "key store OK: every key row, the audit log and its anchor verify" if not problems else "\n".join(
        f"key store BROKEN: {p}" for p in problems
    )
    ctx.emit({"ok": not problems, "problems": problems}, text)
    return 1 if problems else 0


def run_reanchor(args: argparse.Namespace, ctx: CliContext) -> int:
    if not args.accept_rollback:  # pragma: no cover - argparse requires it
        raise InvalidRequest("give --accept-rollback to accept the store as it is")
    before, now = ctx.kms.reanchor_store()
    ctx.emit({"anchored_before": before, "anchored_now": now},
             f"key store accepted as it is: anchor moved from audit record {before} to {now}")
    return 0
