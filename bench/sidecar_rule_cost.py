"""Where a request's CPU goes in the sidecar's own addons: the whole hook chain (Routing,
Guard, Transform, Signing, Framing, Metrics, each wrapped in FailClosed, as the engine
loads them) on real mitmproxy flow objects (mitmproxy.test.tflow) with a 4 KiB JSON
body, for the encrypt and fields rules and a route without a rule, against a real Kms.

    .venv/bin/python bench/sidecar_rule_cost.py [--flows 3000] [--rounds 3] [--profile encrypt|fields]

Prints thread CPU microseconds per request (time.thread_time: preemption by other
processes does not inflate it) and, with --profile, the top functions by cumulative
time (cProfile). mitmproxy's own work per request (parsing, connections, the event loop)
is not in these figures: bench/sidecar_http.py measures the whole. Timings are printed,
never asserted.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import tempfile
import time

from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

from kmscore import Kms
from kmscore.dkcache import DataKeyCache
from sidecar.addons import Metrics, Routing, Runtime, Signing, Transform
from sidecar.addons.failclosed import FailClosed
from sidecar.addons.guard import Framing, Guard
from sidecar.config import ProxyEntry
from sidecar.engine import mode_spec
from sidecar.rules import compile_entry

BODY = json.dumps({"user": {"name": "Ada", "ssn": "123-45-6789"},
                   "cards": [{"number": "4111111111111111"}], "pad": "x" * 3900}).encode()
RULES = {
    "encrypt": {"action": "encrypt", "key": "bench/data"},
    "fields": {"action": "encrypt", "key": "bench/data", "fields": ["user.ssn", "cards[*].number"]},
    "none": None,
}
HOOKS = ("requestheaders", "request", "responseheaders", "response")


def chain(rt: Runtime) -> list:
    addons = (Routing(rt), Guard(rt, lambda flow, data: None), Transform(rt), Signing(rt), Framing(rt), Metrics())
    return [FailClosed(a, rt.abort) for a in addons]


def make_flows(n: int, spec: str) -> list:
    out = []
    mode = ProxyMode.parse(spec)
    for _ in range(n):
        f = tflow.tflow()
        f.client_conn.proxy_mode = mode
        f.request.method = "POST"
        f.request.path = "/api/users"
        f.request.headers["content-type"] = "application/json"
        f.request.content = BODY
        resp = tflow.tresp()
        resp.headers["content-type"] = "application/json"
        resp.content = b'{"ok":true}'
        out.append((f, resp))
    return out


def run(addons, flows) -> float:
    """Thread CPU per flow, the collector paused (the flows held here, not the sidecar's
    work, would make its passes long)."""
    hooks = [[getattr(a, h) for a in addons if hasattr(a, h)] for h in HOOKS]
    gc.collect()
    gc.disable()
    try:
        start = time.thread_time()
        for f, resp in flows:
            for calls in hooks[:2]:
                for call in calls:
                    call(f)
            f.response = resp  # what the upstream answered
            for calls in hooks[2:]:
                for call in calls:
                    call(f)
        return (time.thread_time() - start) / len(flows) * 1e6
    finally:
        gc.enable()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", choices=sorted(RULES))
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="keyhold-bench-")
    kms = Kms(home, caller="bench")
    kms.create_key("bench/data", "AES_256")
    tables, specs = {}, {}
    for port, (name, rule) in enumerate(RULES.items(), start=1):
        # one listen address each: flows find their table by the mode spec, which names it
        entry = ProxyEntry.model_validate({"name": name, "listen": f"127.0.0.1:{port}", "upstream": "http://127.0.0.1:9",
                                           "route": [{"request": rule}] if rule else [{}]})
        specs[name] = mode_spec(entry)
        tables[specs[name]] = compile_entry(entry, kms)
    assert len(tables) == len(RULES), "two setups share a mode spec: one would measure the other's rule"
    rt = Runtime(kms=kms, tables=tables, dkcache=DataKeyCache(kms))
    addons = chain(rt)
    for name in RULES:
        run(addons, make_flows(200, specs[name]))  # warm-up: key loads, caches, label series
    if args.profile:
        flows = make_flows(args.flows, specs[args.profile])
        prof = cProfile.Profile()
        prof.enable()
        run(addons, flows)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        return
    for _ in range(args.rounds):
        print("  ".join(f"{name}: {run(addons, make_flows(args.flows, specs[name])):6.1f} us/request"
                        for name in RULES))


if __name__ == "__main__":
    main()
