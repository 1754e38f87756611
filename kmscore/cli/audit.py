"""`kms audit verify` and `kms audit list`."""

from __future__ import annotations

import argparse

from kmscore.cli.context import CliContext, printable
from kmscore.cli.main import common


def register(sub: argparse._SubParsersAction, ctx: CliContext) -> None:
    audit = sub.add_parser("audit", help="the audit log").add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    p = common(audit.add_parser("verify", help="check the hash chain; exit 1 at the first broken or missing record"))
    p.set_defaults(run=run_verify, integrity="report")  # open a tampered store to report on it
    p = common(audit.add_parser("list", help="print the newest records"))
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(run=run_list)


def run_verify(args: argparse.Namespace, ctx: CliContext) -> int:
    result = ctx.kms.verify_audit()
    text = f"audit log OK: {result.records} records" if result.ok else f"audit log BROKEN: {result.problem}"
    ctx.emit({"ok": result.ok, "records": result.records, "problem": result.problem or None}, text)
    return 0 if result.ok else 1


def run_list(args: argparse.Namespace, ctx: CliContext) -> int:
    records = ctx.kms.audit_records(args.limit)
    if args.json:
        ctx.emit(records)  # type: ignore[arg-type]
    else:
        for r in records:
            times = f" x{r['count']} until {r['last_time']}" if r["count"] > 1 else ""
            print(printable(f"{r['seq']:>6}  {r['time']}  {r['operation']:<28} {r['key_id'] or '-':<36}  {r['outcome']}{times}  [{r['caller']}]"))
    return 0
