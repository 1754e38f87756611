"""The sidecar on several cores (issue 14): a `WorkerPool` of real engine processes behind
one listening address, against the recording upstream.

Which worker served a request is read from the access log (`pid`); each request opens a
connection of its own, and the kernel spreads connections over the workers by hash, so
40 connections reach both of 2 workers except with probability 2^-39.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from conftest import LIMIT, error_of, free_port, routes
from test_signing import ec_signer, signed_request  # noqa: F401  (ec_signer is a fixture)

from sidecar.config import ProxyEntry, check
from sidecar.errors import ConfigError
from sidecar.pool import WorkerPool

CONNECTIONS = 40
BOUND = 30.0


def poll_until(condition, what: str, bound: float = BOUND):
    deadline = time.monotonic() + bound
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {bound:.0f} s: {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def pool(kms, upstream, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("pool")
    main = ProxyEntry.model_validate({
        "name": "main", "listen": f"127.0.0.1:{free_port()}", "upstream": upstream.url, "workers": 2,
        "limits": {"max_buffered_body": LIMIT}, "metrics": f"127.0.0.1:{free_port()}", "route": routes(),
        "access_log": str(logdir / "access.log"),
    })
    assert check([main], kms) == []
    p = WorkerPool([main], kms, drain=5)
    p.start()
    p.url = f"http://{main.listen}"
    p.metrics_url = f"http://{main.metrics}/metrics"
    p.access_log = logdir / "access.log"
    yield p
    pids = p.pids
    p.stop()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"worker {pid} outlived the pool"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def served_by(pool, path: str, n: int = CONNECTIONS) -> set[int]:
    """The worker pids that logged the `n` requests to `path` (waiting for every line)."""
    def read():
        pids = [rec["pid"] for rec in map(json.loads, pool.access_log.read_text().splitlines())
                if rec["path"] == path]
        return pids if len(pids) >= n else None

    return set(poll_until(read, f"{n} requests to {path} in the access log"))


def unique(path: str) -> str:
    return f"{path}/{os.urandom(6).hex()}"


def fresh_connections(url: str, path: str, n: int = CONNECTIONS, **kw) -> list[httpx.Response]:
    out = []
    for _ in range(n):
        with httpx.Client(timeout=30) as c:  # one connection each
            out.append(c.post(url + path, **kw))
    return out


def test_every_worker_serves_the_one_route_table(pool, upstream):
    upstream.clear()
    path = unique("/fields")
    rs = fresh_connections(pool.url, path, json={"user": {"ssn": "123-45-6789"}, "n": 1})
    assert all(r.status_code == 200 for r in rs)
    assert all(r.json()["user"]["ssn"] == "123-45-6789" for r in rs)  # decrypted on the way back
    assert len(upstream.received) == CONNECTIONS
    assert all(b"123-45-6789" not in rec.body and b"khf1." in rec.body for rec in upstream.received)
    assert served_by(pool, path) == set(pool.pids) and len(pool.pids) == 2


def _requests_total(text: str, rule: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("keyhold_sidecar_requests_total{") and f'rule="{rule}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_sum_the_workers(pool, upstream):
    before = _requests_total(httpx.get(pool.metrics_url).text, "body")
    path = unique("/body")
    rs = fresh_connections(pool.url, path, content=b"x" * 100)
    assert all(r.status_code == 200 and r.content == b"x" * 100 for r in rs)
    assert len(served_by(pool, path)) == 2
    poll_until(lambda: _requests_total(httpx.get(pool.metrics_url).text, "body") == before + CONNECTIONS,
               "the /metrics count of every worker's requests")


def _with_route(entries, route: dict):
    first = entries[0]
    return [first.model_copy(update={"route": (ProxyEntry.model_validate(
        {"upstream": "http://x", "route": [route]}).route[0], *first.route)}), *entries[1:]]


NEW_ROUTE = {"name": "new-secret", "match": {"path": "/new-secret*"}, "request": {"action": "encrypt", "key": "app/data"}}


def test_a_reload_reaches_every_worker(pool, upstream):
    before = list(pool.entries)
    pool.apply(_with_route(before, NEW_ROUTE))
    try:
        upstream.clear()
        path = unique("/new-secret")
        rs = fresh_connections(pool.url, path, content=b"MARKER-new")
        assert all(r.status_code == 200 for r in rs)
        assert all(b"MARKER-new" not in rec.body for rec in upstream.received)
        assert served_by(pool, path) == set(pool.pids)
    finally:
        pool.apply(before)
    upstream.clear()
    path = unique("/new-secret")
    fresh_connections(pool.url, path, content=b"MARKER-old")
    assert all(rec.body == b"MARKER-old" for rec in upstream.received)  # the route is gone everywhere
    assert served_by(pool, path) == set(pool.pids)


def test_a_reload_that_one_worker_does_not_take_reaches_none(pool, upstream):
    """One worker stopped (SIGSTOP) cannot answer the prepare: the reload is refused and the
    other worker, which had prepared it, keeps the running routes too."""
    before, stuck = list(pool.entries), pool.pids[1]
    pool.reply_timeout = 2.0  # a bound for the test, not a measured time
    os.kill(stuck, signal.SIGSTOP)
    try:
        with pytest.raises(ConfigError, match="no worker changed"):
            pool.apply(_with_route(before, {**NEW_ROUTE, "request": None,
                                            "match": {"path": "/body*"}}))  # would stop encrypting /body
    finally:
        os.kill(stuck, signal.SIGCONT)
        pool.reply_timeout = 15.0
    assert pool.entries == before
    upstream.clear()
    path = unique("/body")
    rs = fresh_connections(pool.url, path, content=b"MARKER-body")
    assert all(r.status_code == 200 and r.content == b"MARKER-body" for r in rs)  # decrypted back
    assert all(b"MARKER-body" not in rec.body for rec in upstream.received)  # still encrypted by both
    assert served_by(pool, path) == set(pool.pids)
    pool.apply(before)  # the channel still works after the late reply was dropped


def test_a_reload_that_cannot_listen_changes_nothing(pool, upstream):
    import socket

    before = list(pool.entries)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = "127.0.0.1:%d" % busy.getsockname()[1]
        extra = ProxyEntry.model_validate({"name": "extra", "listen": taken, "upstream": upstream.url, "workers": 2})
        with pytest.raises(ConfigError, match="already in use"):
            pool.apply([*_with_route(before, NEW_ROUTE), extra])
    assert pool.entries == before
    upstream.clear()
    r = httpx.post(pool.url + "/new-secret", content=b"plain")
    assert r.status_code == 200 and upstream.last().body == b"plain"  # the new route never came


def test_a_replayed_signature_is_refused_by_every_worker(pool, upstream, ec_signer):
    body = b'{"amount":12}'
    req = signed_request(pool.url, "/verify/ec", body, *ec_signer)
    upstream.clear()
    rs = [httpx.Client(timeout=30).send(httpx.Request(req.method, req.url, content=body, headers=req.headers))
          for _ in range(CONNECTIONS)]
    assert sorted(r.status_code for r in rs) == [200] + [401] * (CONNECTIONS - 1)
    assert all(error_of(r)["reason"] == "replayed" for r in rs if r.status_code == 401)
    assert len(upstream.received) == 1
    assert served_by(pool, "/verify/ec") == set(pool.pids)  # both workers saw the replays


def test_a_killed_worker_is_restarted_and_no_connection_goes_unserved(pool, upstream):
    victim = pool.pids[0]
    os.kill(victim, signal.SIGKILL)
    poll_until(lambda: (pool.poll(), victim not in pool.pids and len(pool.pids) == 2)[1], "a new worker")
    upstream.clear()
    path = unique("/fields")
    rs = fresh_connections(pool.url, path, json={"user": {"ssn": "9"}})
    assert all(r.status_code == 200 for r in rs)
    assert all(b'"9"' not in rec.body for rec in upstream.received)
    assert served_by(pool, path) == set(pool.pids)



# -- the processes: `kms up` and `kms proxy` stop every worker ------------------------------
def _config(upstream, listen: str) -> str:
    return f'''
[[proxy]]
listen = "{listen}"
upstream = "{upstream.url}"
workers = 2

[[proxy.route]]
match = {{ path = "/body*" }}
request = {{ action = "encrypt", key = "app/data" }}
'''


def _gone(pids: list[int]) -> bool:
    return all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in pids)


def _serves(url: str, upstream) -> bool:
    upstream.clear()
    r = httpx.post(url + "/body", content=b"MARKER", timeout=30)
    return r.status_code == 200 and b"MARKER" not in upstream.last().body


@pytest.mark.parametrize("how", ["kms up + SIGTERM", "kms proxy + SIGINT", "kms proxy + SIGKILL"])
def test_stopping_the_parent_stops_every_worker(kms, upstream, tmp_path, how):
    from transport_proc import start_proxy, start_up

    listen = f"127.0.0.1:{free_port()}"
    if how.startswith("kms up"):
        p = start_up(tmp_path / "deploy.toml", kms.home, _config(upstream, listen))
    else:
        p = start_proxy(tmp_path / "deploy.toml", kms.home, _config(upstream, listen), workers=2)
    workers: list[int] = []
    try:
        workers += poll_until(lambda: (lambda c: c if len(c) == 2 else None)(p.children()), "2 workers")
        assert _serves(f"http://{listen}", upstream)
        sig = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT, "SIGKILL": signal.SIGKILL}[how.split()[-1]]
        p.proc.send_signal(sig)
        p.proc.wait(60)
        if sig != signal.SIGKILL:
            assert p.proc.returncode == 0, p.log
        poll_until(lambda: _gone(workers), "every worker gone after its parent")
        with pytest.raises(httpx.ConnectError):
            httpx.post(f"http://{listen}/body", content=b"MARKER", timeout=5)
    finally:
        p.stop()
        for pid in workers:
            if not _gone([pid]):
                os.kill(pid, signal.SIGKILL)


def test_changing_the_number_of_workers_needs_a_restart(pool):
    before = list(pool.entries)
    with pytest.raises(ConfigError, match="needs a restart"):
        pool.apply([e.model_copy(update={"workers": 3}) for e in before])
    assert pool.entries == before and len(pool.pids) == 2


def test_workers_must_be_a_positive_count(tmp_path):
    import subprocess
    import sys

    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ProxyEntry.model_validate({"upstream": "http://127.0.0.1:9", "workers": 0})
    r = subprocess.run([str(Path(sys.executable).parent / "kms"), "proxy", "--upstream", "http://127.0.0.1:9",
                        "--workers", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--workers" in r.stderr and "Traceback" not in r.stderr
