"""`kms demo upstream`: the quick start's application stand-in (kmscore.demo)."""

from __future__ import annotations

import argparse
import sys

from kmscore.errors import InvalidRequest


def register(sub: argparse._SubParsersAction, ctx) -> None:
    demo = sub.add_parser("demo", help="helpers for trying keyhold out").add_subparsers(
        dest="demo_command", metavar="DEMO", required=True)
    p = demo.add_parser(
        "upstream", help="a demo application that stores bodies and returns them",
        description="Listen on HOST:PORT; PUT/POST store a body under its path and answer with it as it "
        "arrived, GET returns it. Every request is printed, so you see what the application receives "
        "(ciphertext) next to what curl through the proxy gets (plaintext). Ctrl-C stops it.",
    )
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="default %(default)s")
    p.set_defaults(run=run_upstream)


def run_upstream(args: argparse.Namespace, ctx) -> int:
    from kmscore.demo import serve

    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidRequest(f"--listen takes HOST:PORT, got {args.listen!r}")

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        server = serve(host or "127.0.0.1", int(port), say)
    except OSError as e:
        raise InvalidRequest(f"cannot listen on {args.listen}: {e.strerror}") from None
    bound = f"{server.server_address[0]}:{server.server_address[1]}"
    ctx.info(f"demo upstream on http://{bound}/ (bodies kept in memory; Ctrl-C stops)")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
