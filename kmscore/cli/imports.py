"""Importing key material into external keys."""

from __future__ import annotations

import argparse
import datetime
import math

from kmscore.cli.context import CliContext, maybe_base64, write_file
from kmscore.cli.keys import report
from kmscore.cli.main import common
from kmscore.errors import InvalidRequest
from kmscore.specs import WrappingAlgorithm, WrappingKeySpec


MAX_EXPIRY_DAYS = 36500  # a hundred years; later means never, and never is no --expires


def _when(text: str | None) -> float | None:
    """An expiry: ISO 8601 date/time (UTC unless it says otherwise) or '+N' days."""
    if text is None:
        return None
    if text.startswith("+"):
        try:
            days = float(text[1:])
        except ValueError:
            days = None
        if days is not None:
            # float() takes "nan", "inf" and "1e400" (inf): none of them is a time
            if not math.isfinite(days) or not 0 < days <= MAX_EXPIRY_DAYS:
                raise InvalidRequest(f"expiry {ascii(text)}: +DAYS must be a number of days from 0 to {MAX_EXPIRY_DAYS}")
            return datetime.datetime.now(datetime.timezone.utc).timestamp() + days * 86400
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"expiry {ascii(text)} is not an ISO 8601 time (2027-01-31T12:00:00Z) or +DAYS") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def register(sub: argparse._SubParsersAction, ctx: CliContext) -> None:
    p = common(sub.add_parser("get-parameters-for-import", help="a wrapping public key and an import token (24 h)"))
    p.add_argument("key", metavar="KEY")
    p.add_argument("--wrapping-algorithm", default="RSAES_OAEP_SHA_256", type=str.upper, choices=[a.value for a in WrappingAlgorithm])
    p.add_argument("--wrapping-key-spec", default="RSA_2048", type=str.upper, choices=[s.value for s in WrappingKeySpec])
    p.add_argument("--public-key-out", metavar="FILE", help="write the wrapping public key (PEM) here")
    p.add_argument("--token-out", metavar="FILE", help="write the import token here")
    p.set_defaults(run=run_parameters)

    p = common(sub.add_parser("import-key-material", help="import wrapped key material into an external key"))
    p.add_argument("key", metavar="KEY")
    p.add_argument("--import-token", required=True, metavar="TOKEN|FILE")
    p.add_argument("--material", required=True, metavar="FILE", help="the wrapped material (raw or base64)")
    p.add_argument("--expires", metavar="WHEN", help="AES_256 only: ISO 8601 time or +DAYS")
    p.set_defaults(run=run_import)

    p = common(sub.add_parser("delete-imported-key-material", help="delete an external AES_256 key's material"))
    p.add_argument("key", metavar="KEY")
    p.set_defaults(run=lambda a, c: report(c, c.kms.delete_imported_key_material(a.key)))


def run_parameters(args: argparse.Namespace, ctx: CliContext) -> None:
    params = ctx.kms.get_parameters_for_import(args.key, args.wrapping_algorithm, args.wrapping_key_spec)
    if params.warning:
        ctx.info(f"warning: {params.warning}")
    if args.public_key_out:
        write_file(args.public_key_out, params.public_key_pem.encode(), 0o644)
    report = params.to_dict()
    if args.token_out:  # the token is a secret handle: once, in the 0600 file, not on stdout too
        write_file(args.token_out, params.import_token.encode(), 0o600)
        report.pop("import_token", None)
        report["import_token_file"] = args.token_out
    ctx.emit(report)


def run_import(args: argparse.Namespace, ctx: CliContext) -> None:
    from pathlib import Path

    from kmscore.cli.context import read_file

    token = args.import_token
    if Path(token).is_file():
        token = read_file(token).decode().strip()
    material = maybe_base64(read_file(args.material))
    report(ctx, ctx.kms.import_key_material(args.key, token, material, _when(args.expires)))
