"""`kms serve` and `kms access-key`: the server and the credentials it accepts.

Every change to an access key reaches a running server at its next request (it re-reads
the access-key file when another process committed to it) and is recorded in the audit
log as `AccessKeyChange` (`ok: disable KHAK… (name), generation 12`). A secret is printed
once, by `create` and `rotate`, and never again.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from datetime import datetime, timezone

from kmscore.errors import InvalidRequest, KmsError
from kmsserve.errors import ServeError

AUDIT_CALLER = "kms access-key"


def _errors(run):
    """A ServeError is one `kms: error:` line like any other (exit 2 for a bad policy or
    option, 1 for what the host refused: a taken port, an unusable certificate)."""

    @functools.wraps(run)
    def call(args, ctx):
        from kmsserve.auth.policy import PolicyError

        try:
            return run(args, ctx)
        except PolicyError as e:
            raise InvalidRequest(str(e)) from None
        except ServeError as e:
            raise KmsError(str(e)) from None

    return call


def register_cli(sub, ctx) -> None:
    p = sub.add_parser("serve", help="serve the KMS over the network (AWS KMS API, the reference cloud's API)",
                       description="Serve the key store over HTTPS to clients on other hosts (docs/API.md). "
                       "Without --cert/--key a self-signed certificate is made in the KMS home on first "
                       "start; clients pin its SHA-256 fingerprint. Stops cleanly on SIGTERM or Ctrl-C.")
    p.add_argument("--listen", metavar="HOST:PORT", help="where to listen (default 127.0.0.1:8443, or --deployment's [serve])")
    p.add_argument("--cert", metavar="FILE", help="TLS certificate (PEM, may hold the chain)")
    p.add_argument("--key", metavar="FILE", help="TLS private key (PEM, mode 0600)")
    p.add_argument("--plain-http", action="store_true", default=None, help="no TLS (loopback addresses only)")
    p.add_argument("--request-timeout", type=float, metavar="SECONDS",
                   help="a request's headers, and then its body, must arrive within this (default 10)")
    p.add_argument("--print-fingerprint", action="store_true",
                   help="print the SHA-256 fingerprint of the certificate it serves (making the self-signed "
                   "one if there is none yet) and exit")
    p.set_defaults(run=_errors(_serve))

    a = sub.add_parser("access-key", help="issue and manage the access keys of `kms serve`",
                       description="Access keys sign requests to `kms serve`; each has a policy (docs/API.md, "
                       "\"Policies\"). ACCESS_KEY is an access key id (KHAK...) or its name.")
    asub = a.add_subparsers(dest="access_key_command", metavar="ACTION", required=True)
    c = asub.add_parser("create", help="issue an access key (its secret is printed once)")
    c.add_argument("--name", required=True, help="a name for people: the application or host (the id is what identifies it)")
    c.add_argument("--policy", required=True, metavar="FILE", help="TOML or JSON policy (see docs/API.md)")
    c.add_argument("--json", action="store_true", help="print the id and secret as JSON")
    c.set_defaults(run=_errors(_create))
    ls = asub.add_parser("list", help="every access key: id, name, enabled, created (never a secret)")
    ls.add_argument("--json", action="store_true", help="print them as JSON (with their policies)")
    ls.set_defaults(run=_errors(_list))
    for name, helptext, run in (
        ("show", "one access key and its policy (never its secret)", _show),
        ("disable", "refuse the access key's requests from now on (reversible: enable)", _disable),
        ("enable", "accept the access key's requests again", _enable),
        ("delete", "delete the access key for good", _delete),
        ("rotate", "a new secret, printed once; the old secret stops working at once", _rotate),
    ):
        s = asub.add_parser(name, help=helptext)
        s.add_argument("access_key", metavar="ACCESS_KEY")
        s.add_argument("--json", action="store_true", help="print the result as JSON")
        s.set_defaults(run=_errors(run))
    sp = asub.add_parser("set-policy", help="replace the access key's policy (applies at the next request)")
    sp.add_argument("access_key", metavar="ACCESS_KEY")
    sp.add_argument("--policy", required=True, metavar="FILE", help="TOML or JSON policy (see docs/API.md)")
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    sp.set_defaults(run=_errors(_set_policy))
    ra = asub.add_parser("reanchor", help="accept access-keys.db as it is, after a deliberate restore from a backup",
                         description="After access-keys.db was restored from an older copy, every access key is "
                         "refused (the audit log has seen newer changes). List what the copy holds, then accept it; "
                         "disable what should not be there.")
    ra.add_argument("--json", action="store_true", help="print the result as JSON")
    ra.set_defaults(run=_errors(_reanchor))
    chk = asub.add_parser("check-policy", help="validate a policy file (as create and set-policy do)")
    chk.add_argument("policy", metavar="FILE")
    chk.set_defaults(run=_errors(_check_policy))


def serve_settings(args: argparse.Namespace, ctx):
    """The options given, else `--deployment`'s `[serve]` table, else the defaults: the
    same server as `kms up` would run from that file, in the foreground."""
    from kmsserve.server import ServeSettings

    given = {"listen": args.listen, "cert": args.cert, "key": args.key, "plain_http": args.plain_http,
             "request_timeout": args.request_timeout}
    base = ServeSettings()
    deployment = ctx.deployment_file()
    if deployment:
        entries = ctx.deployment(deployment).entries("serve")
        if entries:
            base = entries[0].settings()
    if args.cert or args.key:  # a certificate on the command line replaces the file's pair whole
        base = dataclasses.replace(base, cert=None, key=None)
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def _serve(args: argparse.Namespace, ctx) -> int:
    from kmsserve.server import run

    settings = serve_settings(args, ctx)
    if bool(settings.cert) != bool(settings.key):
        raise ServeError("a TLS certificate needs its key and a key its certificate: give both --cert and --key")
    if args.print_fingerprint:
        if settings.plain_http:
            raise ServeError("--print-fingerprint: with plain HTTP there is no certificate")
        from kmsserve import tls
        from kmsserve.server import parse_listen

        host, _port = parse_listen(settings.listen)
        if not (settings.cert and settings.key) and getattr(ctx.kms, "home", None) is None:
            raise ServeError("the self-signed certificate lives in the KMS home: run this on the KMS host")
        cert = (tls.load(settings.cert, settings.key) if settings.cert and settings.key
                else tls.self_signed(ctx.kms.home, host))
        ctx.emit({"fingerprint": cert.fingerprint, "certificate": str(cert.cert_file)}, cert.fingerprint)
        return 0
    run(ctx.kms, settings)
    return 0


def _keys(ctx):
    from kmsserve.auth.accesskeys import AccessKeys

    return AccessKeys(ctx.kms)


def _record(ctx, change: str, key, generation: int) -> None:
    """The change in the audit log, with the access keys' new head generation: what lets
    a server tell that the file was put back from an older copy (kmsserve.auth.accesskeys)."""
    from kmsserve.auth.accesskeys import AUDIT_OPERATION

    ctx.kms.audit_event(AUDIT_OPERATION, None, f"ok: {change} {key.access_key_id} ({key.name}), generation {generation}",
                        caller=AUDIT_CALLER)


def _when(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _summary(key) -> str:
    return f"{key.access_key_id}  {key.name}  {'enabled' if key.enabled else 'DISABLED'}  created {_when(key.created_at)}"


def _policy_lines(key) -> list[str]:
    out = []
    for s in key.policy.allow:
        out.append(f"  allow {', '.join(s.operations)} on {', '.join(s.keys)}")
    return out or ["  (allows nothing)"]


def _create(args: argparse.Namespace, ctx) -> int:
    from kmsserve.auth.policy import Policy

    policy = Policy.load(args.policy)
    keys = _keys(ctx)
    try:
        key = keys.create(args.name, policy)
    finally:
        keys.close()
    _record(ctx, "create", key, keys.generation)
    ctx.emit({"access_key_id": key.access_key_id, "secret": key.secret, "name": key.name},
             f"access key id: {key.access_key_id}\nsecret:        {key.secret}\n(the secret is shown only now)")
    return 0


def _list(args: argparse.Namespace, ctx) -> int:
    keys = _keys(ctx)
    try:
        found = keys.all()
    finally:
        keys.close()
    if args.json:
        ctx.emit([k.public() for k in found])  # type: ignore[arg-type]
    elif not found:
        print("no access keys (kms access-key create --name NAME --policy FILE)")
    else:
        for k in found:
            print(_summary(k))
    return 0


def _one(args, ctx, action):
    """(the action's result, the head generation it wrote)."""
    keys = _keys(ctx)
    try:
        return action(keys), keys.generation
    finally:
        keys.close()


def _show(args: argparse.Namespace, ctx) -> int:
    key, _ = _one(args, ctx, lambda keys: keys.require(args.access_key))
    rotated = f"\nrotated {_when(key.rotated_at)}" if key.rotated_at else ""
    ctx.emit(key.public(), "\n".join([_summary(key) + rotated, "policy:", *_policy_lines(key)]))
    return 0


def _changed(ctx, change: str, done, text: str, args) -> int:
    key, generation = done
    _record(ctx, change, key, generation)
    ctx.emit(key.public(), f"{key.access_key_id} ({key.name}): {text}")
    return 0


def _disable(args, ctx) -> int:
    done = _one(args, ctx, lambda keys: keys.set_enabled(args.access_key, False))
    return _changed(ctx, "disable", done, "disabled (its requests are refused from now on)", args)


def _enable(args, ctx) -> int:
    done = _one(args, ctx, lambda keys: keys.set_enabled(args.access_key, True))
    return _changed(ctx, "enable", done, "enabled", args)


def _delete(args, ctx) -> int:
    key, generation = _one(args, ctx, lambda keys: keys.delete(args.access_key))
    _record(ctx, "delete", key, generation)
    ctx.emit({"access_key_id": key.access_key_id, "name": key.name, "deleted": True},
             f"{key.access_key_id} ({key.name}): deleted")
    return 0


def _rotate(args, ctx) -> int:
    key, generation = _one(args, ctx, lambda keys: keys.rotate(args.access_key))
    _record(ctx, "rotate", key, generation)
    ctx.emit({"access_key_id": key.access_key_id, "secret": key.secret, "name": key.name},
             f"access key id: {key.access_key_id}\nnew secret:    {key.secret}\n"
             "(shown only now; the old secret no longer works)")
    return 0


def _set_policy(args, ctx) -> int:
    from kmsserve.auth.policy import Policy

    policy = Policy.load(args.policy)
    done = _one(args, ctx, lambda keys: keys.set_policy(args.access_key, policy))
    return _changed(ctx, "set-policy", done, "new policy:\n" + "\n".join(_policy_lines(done[0])), args)


def _reanchor(args, ctx) -> int:
    count, generation = _one(args, ctx, lambda keys: keys.reanchor())
    from kmsserve.auth.accesskeys import AUDIT_OPERATION

    ctx.kms.audit_event(AUDIT_OPERATION, None, f"ok: reanchor ({count} access keys accepted as they are), "
                        f"generation {generation}", caller=AUDIT_CALLER)
    ctx.emit({"access_keys": count, "generation": generation},
             f"accepted access-keys.db as it is: {count} access key{'s' if count != 1 else ''} "
             "(check them: kms access-key list)")
    return 0


def _check_policy(args, ctx) -> int:
    from kmsserve.auth.policy import Policy

    policy = Policy.load(args.policy)
    print(f"{args.policy}: OK ({len(policy.allow)} statement{'s' if len(policy.allow) != 1 else ''})")
    return 0
