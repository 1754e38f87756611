"""Key lifecycle commands: init, create-key, describe-key, list-keys, state, aliases, rotation."""

from __future__ import annotations

import argparse

from kmscore.cli.context import CliContext, printable
from kmscore.cli.main import common
from kmscore.metadata import KeyMetadata
from kmscore.specs import KeySpec, KeyUsage, Origin

SUMMARY_FIELDS = ("key_id", "alias", "state", "spec", "usage", "origin")


def report(ctx: CliContext, meta: KeyMetadata) -> None:
    ctx.emit(meta.to_dict())


def register(sub: argparse._SubParsersAction, ctx: CliContext) -> None:
    p = common(sub.add_parser("init", help="create the KMS home, root key file and key store"), json=False)
    p.set_defaults(run=run_init)

    p = common(sub.add_parser("create-key", help="create a customer master key"))
    p.add_argument("--alias", help="a name such as app/db (not ending in /default)")
    p.add_argument("--spec", default="AES_256", type=str.upper, choices=[s.value for s in KeySpec])
    p.add_argument("--usage", type=str.upper, choices=[u.value for u in KeyUsage], help="RSA: SIGN_VERIFY (default) or ENCRYPT_DECRYPT")
    p.add_argument("--origin", default="KMS", type=str.upper, choices=[o.value for o in Origin], help="EXTERNAL: you import the material")
    p.add_argument("--description", default="")
    p.add_argument("--rotation-days", type=int, help="rotate automatically every 30-365 days (AES_256 only)")
    p.set_defaults(run=lambda a, c: report(c, c.kms.create_key(a.alias, a.spec, a.usage, a.origin, a.description, a.rotation_days)))

    p = common(sub.add_parser("describe-key", help="show a key's metadata"))
    p.add_argument("key", metavar="KEY")
    p.set_defaults(run=lambda a, c: report(c, c.kms.describe_key(a.key)))

    p = common(sub.add_parser("list-keys", help="list every key"))
    p.set_defaults(run=run_list)

    p = common(sub.add_parser(
        "maintain", help="destroy keys that are due, delete expired material, merge dead processes' audit journals",
        description="What every process does when it opens the store and every minute while it runs; run it "
        "from a timer (docs/OPERATIONS.md) so expired material is deleted even when no process opens the store.",
    ), json=False)
    p.set_defaults(run=run_maintain)

    for name, method, helptext in (
        ("enable-key", "enable_key", "enable a disabled key"),
        ("disable-key", "disable_key", "disable a key (not default keys)"),
        ("cancel-key-deletion", "cancel_key_deletion", "cancel a scheduled deletion (the key becomes Disabled)"),
        ("disable-key-rotation", "disable_key_rotation", "stop automatic rotation"),
        ("rotate-key", "rotate_key", "make a new key version now (KMS-generated AES_256 keys)"),
    ):
        p = common(sub.add_parser(name, help=helptext))
        p.add_argument("key", metavar="KEY")
        p.set_defaults(run=lambda a, c, m=method: report(c, getattr(c.kms, m)(a.key)))

    p = common(sub.add_parser("schedule-key-deletion", help="destroy a key after 7-1096 days"))
    p.add_argument("key", metavar="KEY")
    p.add_argument("--pending-days", type=int, default=30)
    p.set_defaults(run=lambda a, c: report(c, c.kms.schedule_key_deletion(a.key, a.pending_days)))

    p = common(sub.add_parser("enable-key-rotation", help="rotate automatically every 30-365 days"))
    p.add_argument("key", metavar="KEY")
    p.add_argument("--interval-days", type=int, default=365)
    p.set_defaults(run=lambda a, c: report(c, c.kms.enable_key_rotation(a.key, a.interval_days)))

    p = common(sub.add_parser("update-key-alias", help="give a key a new alias"))
    p.add_argument("key", metavar="KEY")
    p.add_argument("alias", metavar="NEW_ALIAS")
    p.set_defaults(run=lambda a, c: report(c, c.kms.update_key_alias(a.key, a.alias)))

    p = common(sub.add_parser("update-key-description", help="change a key's description"))
    p.add_argument("key", metavar="KEY")
    p.add_argument("description")
    p.set_defaults(run=lambda a, c: report(c, c.kms.update_key_description(a.key, a.description)))


def run_init(args: argparse.Namespace, ctx: CliContext) -> int:
    store = ctx.home_choice().store
    existed = store.exists()
    if not ctx.kms.notices and existed:  # opening creates what is missing and reports it
        ctx.info(f"key store {store} already exists; nothing to do")
    return 0


def run_list(args: argparse.Namespace, ctx: CliContext) -> int:
    keys = ctx.kms.list_keys()
    if args.json:
        ctx.emit([k.to_dict() for k in keys])  # type: ignore[arg-type]
        return 0
    rows = [[str(k.to_dict()[f] or "-") for f in SUMMARY_FIELDS] for k in keys]
    header = [f.upper() for f in SUMMARY_FIELDS]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(printable("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()))
    return 0


def run_maintain(args: argparse.Namespace, ctx: CliContext) -> int:
    ctx.kms.maintain()  # opening the Kms already ran it once; a second pass is a no-op
    ctx.info("maintenance done")
    return 0
