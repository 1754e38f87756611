"""`kms proxy` / `kms-proxy`: run the sidecar from a deployment TOML or from quick flags.

    kms proxy --config deploy.toml
    kms proxy --listen 127.0.0.1:8081 --upstream http://127.0.0.1:8080 \\
              --encrypt-requests app/data --decrypt-responses

Runs in the foreground until SIGTERM/SIGINT, then stops listening and lets in-flight
requests finish (up to --drain seconds).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path


from sidecar.config import DEFAULT_KEY, ProxyEntry, check, parse_entries, warnings
from sidecar.errors import ConfigError


def register_cli(sub, ctx) -> None:
    p = sub.add_parser(
        "proxy",
        help="run the encrypting HTTP sidecar (reverse or forward proxy)",
        description="Encrypt, decrypt, sign and verify HTTP bodies by rule, failing closed.",
    )
    add_arguments(p)
    p.set_defaults(run=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="deployment TOML; runs every [[proxy]] entry")
    q = p.add_argument_group("quick single-route run (without --config)")
    q.add_argument("--listen", default="127.0.0.1:8081", help="host:port to listen on (default %(default)s)")
    q.add_argument("--upstream", help="reverse mode: the upstream URL, e.g. http://127.0.0.1:8080")
    q.add_argument("--forward", action="store_true", help="forward-proxy mode (clients set HTTP(S)_PROXY)")
    q.add_argument("--encrypt-requests", nargs="?", const=DEFAULT_KEY, metavar="KEY",
                   help=f"encrypt request bodies (default key {DEFAULT_KEY})")
    q.add_argument("--decrypt-responses", action="store_true", help="decrypt envelope / token response bodies")
    q.add_argument("--fields", action="append", metavar="PATH",
                   help="only these JSON fields (repeat), e.g. user.ssn or cards[*].number")
    q.add_argument("--sign-requests", metavar="KEY", help="sign requests (RFC 9421) with an HMAC/RSA/EC key")
    q.add_argument("--verify-requests", metavar="KEY", help="verify RFC 9421 signatures on requests")
    q.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics here")
    q.add_argument("--access-log", metavar="FILE", help="JSON access log (- for stderr)")
    q.add_argument("--upstream-ca", metavar="PEM", help="CA bundle trusted for upstream HTTPS")
    q.add_argument("--insecure-upstream", action="store_true", help="do not verify the upstream's certificate")
    p.add_argument("--drain", type=float, default=30.0, help="seconds to let requests finish on SIGTERM")
    p.add_argument("--workers", type=_positive, metavar="N",
                   help="engine processes per proxy (default: the config's `workers`, else one per CPU)")


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 256, got {text!r}")
    return n


def entries_from_args(args) -> list[ProxyEntry]:
    if args.config:
        return load_config(args.config)[0]
    if args.encrypt_requests and args.sign_requests or args.verify_requests and args.encrypt_requests:
        raise ConfigError("one request action per quick run: use --config for encrypt and sign together")
    request = None
    if args.encrypt_requests:
        request = {"action": "encrypt", "key": args.encrypt_requests}
    elif args.sign_requests:
        request = {"action": "sign", "key": args.sign_requests}
    elif args.verify_requests:
        request = {"action": "verify", "key": args.verify_requests}
    response = {"action": "decrypt"} if args.decrypt_responses else None
    if args.fields:
        for action in (request, response):
            if action is not None and action["action"] in ("encrypt", "decrypt"):
                action["fields"] = args.fields
    if response is not None and args.encrypt_requests:
        response["key"] = args.encrypt_requests
    raw = {
        "listen": args.listen,
        "mode": "forward" if args.forward else "reverse",
        "verify_upstream": not args.insecure_upstream,
        "route": [{"name": "cli", **({"request": request} if request else {}), **({"response": response} if response else {})}],
    }
    for key, value in (("upstream", args.upstream), ("metrics", args.metrics),
                       ("access_log", args.access_log), ("upstream_ca", args.upstream_ca)):
        if value:
            raw[key] = value
    if not args.forward and not args.upstream:
        raise ConfigError("give --upstream URL (reverse mode), --forward, or --config FILE")
    return parse_entries([raw])


def load_config(path: str):
    """The `[[proxy]]` entries of a deployment file, and the Deployment (or None).

    Uses kmscore's config loader (the same messages as `kms check`); without it, reads
    the `[[proxy]]` tables alone."""
    try:
        from kmscore.config import ConfigError as DeployConfigError
        from kmscore.config import load_config as load_deployment
    except ImportError:
        return _load_proxy_tables(path), None
    try:
        dep = load_deployment(path)
    except DeployConfigError as e:
        raise ConfigError(str(e)) from None
    entries = list(dep.entries("proxy"))
    if not entries:
        raise ConfigError(f"{path}: no [[proxy]] entries")
    return entries, dep


def _load_proxy_tables(path: str) -> list[ProxyEntry]:
    import tomllib

    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    if "proxy" not in data:
        raise ConfigError(f"{path}: no [[proxy]] entries")
    try:
        return parse_entries(data["proxy"])
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def checked(entries: list[ProxyEntry], kms, where: str = "") -> None:
    """Raise on errors; print warnings (`(path, message, "warning")`) and go on."""
    prefix = f"{where}proxy{'' if len(entries) > 1 else '[0].'}"
    problems = check(entries, kms)
    if problems:
        raise ConfigError("\n".join(f"{prefix}{path}: {msg}" for path, msg in problems))
    for path, msg in warnings(entries):
        print(f"kms proxy: {prefix}{path}: warning: {msg}", file=sys.stderr, flush=True)


def run(args, ctx) -> int:
    from sidecar.engine import Engine

    dep = None
    if args.config:
        entries, dep = load_config(args.config)
    else:
        entries = entries_from_args(args)
    if dep is not None and (dep.home is not None or dep.root_key is not None or dep.kms.url is not None):
        from kmscore.deploy import open_kms  # the KMS the file's [kms] section names

        kms = open_kms(dep, caller="kms proxy")
        ctx.close = _chain(ctx.close, kms.close)
    else:
        kms = ctx.kms
    if getattr(args, "workers", None):
        entries = [e.model_copy(update={"workers": args.workers}) for e in entries]
    checked(entries, kms, f"{args.config}: " if args.config else "")
    _log_to_stderr()
    from sidecar.pool import WorkerPool, pool_size

    engine = WorkerPool(entries, kms, drain=args.drain) if pool_size(entries) > 1 else Engine(entries, kms)
    stop: list[int] = []  # a handler only appends: taking a lock (Event.set) in one can deadlock
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop.append(signum))
    engine.start()
    try:
        for e in entries:
            target = e.upstream if e.mode == "reverse" else "forward proxy"
            workers = min(e.worker_count, pool_size(entries))
            print(f"kms proxy: {e.label}: listening on {e.listen} -> {target} ({len(e.route)} route(s), "
                  f"{workers} worker{'s' if workers > 1 else ''})", file=sys.stderr, flush=True)
        if any(e.mode == "forward" for e in entries):
            print(f"kms proxy: HTTPS clients must trust {engine.confdir}/mitmproxy-ca-cert.pem", file=sys.stderr, flush=True)
        poll = getattr(engine, "poll", None)
        while not stop:
            time.sleep(0.1)
            if poll is not None:
                poll()  # a worker that died is restarted
    finally:
        print("kms proxy: stopping (letting in-flight requests finish)", file=sys.stderr, flush=True)
        engine.stop(args.drain)
        for sig in (signal.SIGTERM, signal.SIGINT):
            # already stopping: a repeated signal while the interpreter exits (when Python has
            # put back the default actions) must not turn a clean exit into a kill
            signal.signal(sig, signal.SIG_IGN)
    return 0


def _log_to_stderr() -> None:
    """Refusals and failures (logger `keyhold.sidecar`) go to stderr, one line each; the
    per-request access log only where the config asks for it (`access_log`)."""
    import logging

    keyhold = logging.getLogger("keyhold")
    if not keyhold.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s kms proxy: %(message)s", "%Y-%m-%dT%H:%M:%S"))
        keyhold.addHandler(handler)
        keyhold.setLevel(logging.INFO)
    access = logging.getLogger("keyhold.sidecar.access")
    if access.level == logging.NOTSET:
        access.setLevel(logging.WARNING)


def _chain(first, second):
    def both():
        try:
            second()
        finally:
            first()

    return both


def main(argv: list[str] | None = None) -> int:
    """`kms-proxy`: the same as `kms proxy`, on its own."""
    from kmscore.cli.context import CliContext
    from kmscore.cli.main import KmsArgumentParser, run_command

    parser = KmsArgumentParser(prog="kms-proxy", description="keyhold's encrypting HTTP sidecar.")
    parser.add_argument("--home", help="KMS home folder (default: $KMS_HOME or ~/.local/share/keyhold)")
    parser.add_argument("--root-key-file", help="root key file")
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.command = "proxy"
    ctx = CliContext()
    ctx.args = args
    args.run = run
    return run_command(args, ctx, "kms-proxy")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
