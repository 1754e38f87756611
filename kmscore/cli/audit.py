"""`kms audit verify` and `kms audit list`."""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from kmscore.cli.context import CliContext, printable
from kmscore.cli.main import common
from kmscore.errors import NotFound

if TYPE_CHECKING:
    from kmscore.facade import Kms


def register(sub: argparse._SubParsersAction, ctx: CliContext) -> None:
    audit = sub.add_parser("audit", help="the audit log").add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    p = common(audit.add_parser("verify", help="check the hash chain; exit 1 at the first broken or missing record"))
    p.set_defaults(run=run_verify, integrity="report")  # open a tampered store to report on it
    p = common(audit.add_parser("list", help="print the newest records (filters combine)"))
    p.add_argument("--limit", type=positive, default=50, help="how many of the newest matching records (default 50)")
    p.add_argument("--all", action="store_true", help="every matching record (instead of --limit)")
    p.add_argument("--key", metavar="KEY", help="records of this key (id or alias)")
    p.add_argument("--operation", metavar="OP", help="e.g. Encrypt, DisableKey")
    p.add_argument("--outcome", metavar="OUTCOME", help="e.g. ok, invalid, denied: ...")
    p.add_argument("--since", type=since, metavar="WHEN",
                   help="records from WHEN on: an ISO time (2026-12-01T10:00:00Z, 2026-12-01) or an age (30m, 12h, 7d)")
    p.set_defaults(run=run_list)


AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {text!r} (use --all for every record)")
    return value


def since(text: str) -> float:
    """An age (`12h`) or an ISO date/time (UTC unless it says otherwise) as a Unix time."""
    number, unit = text[:-1], text[-1:].lower()
    if unit in AGE_UNITS and number.isdigit():
        return time.time() - int(number) * AGE_UNITS[unit]
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (e.g. 2026-12-01T10:00:00Z or 12h)") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def run_verify(args: argparse.Namespace, ctx: CliContext) -> int:
    result = ctx.kms.verify_audit()
    text = f"audit log OK: {result.records} records" if result.ok else f"audit log BROKEN: {result.problem}"
    ctx.emit({"ok": result.ok, "records": result.records, "problem": result.problem or None}, text)
    return 0 if result.ok else 1


def run_list(args: argparse.Namespace, ctx: CliContext) -> int:
    records = ctx.kms.audit_records(None if args.all else args.limit, key=args.key, operation=args.operation,
                                    outcome=args.outcome, since=args.since)
    aliases = aliases_of(ctx.kms, {r["key_id"] for r in records})
    for r in records:
        r["alias"] = aliases.get(r["key_id"])
    if args.json:
        ctx.emit(records)  # type: ignore[arg-type]
    else:
        for r in records:
            times = f" x{r['count']} until {r['last_time']}" if r["count"] > 1 else ""
            key = r["alias"] or r["key_id"] or "-"
            print(printable(f"{r['seq']:>6}  {r['time']}  {r['operation']:<28} {key:<36}  {r['outcome']}{times}  [{r['caller']}]"))
    return 0


def aliases_of(kms: Kms, key_ids: set[str | None]) -> dict[str, str | None]:
    """The alias of each key id, read with `Kms.key_name`, which is not audited (not
    `list_keys`, which records a ListKeys): reading the log is no key operation and writes
    nothing to it. Whoever reads it holds the store and its root key already, so a record
    of the read would guard nothing; it would only shift what the next read shows, and
    make the log unreadable on a full disk, when it is needed most."""
    aliases: dict[str, str | None] = {}
    for key_id in key_ids - {None}:
        try:
            aliases[key_id] = kms.key_name(key_id)[1]
        except NotFound:  # a destroyed key: its records keep its id
            aliases[key_id] = None
    return aliases
