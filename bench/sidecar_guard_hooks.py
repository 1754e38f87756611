"""Cost per request of the transport guard (Guard + Framing hooks), bare and wrapped in
FailClosed, on real mitmproxy flow objects (mitmproxy.test.tflow) routed to an encrypt rule.

    .venv/bin/python bench/sidecar_guard_hooks.py [--flows 20000] [--rounds 3]

Prints microseconds per request; compare with the ~1.5 ms a request costs the sidecar
(bench/sidecar_http.py). Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import time

from mitmproxy.test import tflow

from sidecar.addons.failclosed import FailClosed
from sidecar.addons.guard import Framing, Guard
from sidecar.addons.routing import METADATA, FlowState, Runtime
from sidecar.config import ProxyEntry
from sidecar.rules import compile_entry


def flows(n: int, table) -> list:
    out = []
    for _ in range(n):
        f = tflow.tflow(resp=True)
        f.request.path = "/store/a"
        f.metadata[METADATA] = FlowState("bench", table, table.routes[0], "http://x/store/a")
        out.append(f)
    return out


def per_request(guard, framing, batch) -> float:
    start = time.perf_counter()
    for f in batch:
        guard.requestheaders(f)
        framing.requestheaders(f)
        guard.responseheaders(f)
        framing.responseheaders(f)
        framing.response(f)
    return (time.perf_counter() - start) / len(batch) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    entry = ProxyEntry.model_validate({"listen": "127.0.0.1:1", "upstream": "http://127.0.0.1:2", "route": [
        {"match": {"path": "/store/*"}, "request": {"action": "encrypt", "key": "bench"},
         "response": {"action": "decrypt", "key": "bench"}}]})
    table = compile_entry(entry)
    rt = Runtime(kms=None, tables={"bench": table})
    for _ in range(args.rounds):
        bare = per_request(Guard(rt), Framing(rt), flows(args.flows, table))
        wrapped = per_request(FailClosed(Guard(rt), lambda f: None), FailClosed(Framing(rt), lambda f: None),
                              flows(args.flows, table))
        print(f"guard+framing: {bare:5.1f} us/request   wrapped in FailClosed: {wrapped:5.1f} us/request")


if __name__ == "__main__":
    main()
