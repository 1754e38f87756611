"""`kms serve` and `kms access-key`: the server and the credentials it accepts."""

from __future__ import annotations

import argparse

from kmsserve.errors import ServeError


def register_cli(sub, ctx) -> None:
    p = sub.add_parser("serve", help="serve the KMS over the network (AWS KMS API, the reference cloud's API)",
                       description="Serve the key store over HTTPS to clients on other hosts.")
    p.add_argument("--listen", default="127.0.0.1:8443", metavar="HOST:PORT", help="where to listen (default %(default)s)")
    p.add_argument("--plain-http", action="store_true", help="no TLS (loopback only)")
    p.set_defaults(run=_serve)

    a = sub.add_parser("access-key", help="issue and manage the access keys of `kms serve`")
    asub = a.add_subparsers(dest="access_key_command", required=True)
    c = asub.add_parser("create", help="issue an access key (its secret is printed once)")
    c.add_argument("--name", required=True)
    c.add_argument("--policy", required=True, metavar="FILE", help="TOML or JSON policy (see docs/API.md)")
    c.add_argument("--json", action="store_true", help="print the id and secret as JSON")
    c.set_defaults(run=_create)


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ServeError(f"--listen: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _serve(args: argparse.Namespace, ctx) -> int:
    from kmsserve.server import run

    host, port = _hostport(args.listen)
    run(ctx.kms, host, port, plain_http=args.plain_http)
    return 0


def _create(args: argparse.Namespace, ctx) -> int:
    from kmsserve.auth.accesskeys import AccessKeys
    from kmsserve.auth.policy import Policy

    policy = Policy.load(args.policy)
    keys = AccessKeys(ctx.kms)
    try:
        key = keys.create(args.name, policy)
    finally:
        keys.close()
    ctx.emit({"access_key_id": key.access_key_id, "secret": key.secret, "name": key.name},
             f"access key id: {key.access_key_id}\nsecret:        {key.secret}\n(the secret is shown only now)")
    return 0
