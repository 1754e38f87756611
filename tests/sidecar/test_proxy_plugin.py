"""The sidecar as a keyhold front end: entry point, config section, `kms up` start."""

from __future__ import annotations

import pytest

from kmscore.frontend import load_frontends
from sidecar.config import ProxyEntry
from sidecar.errors import ConfigError
from sidecar.plugin import FRONTEND, start


def test_registered_as_front_end():
    found = {f.name: f for f in load_frontends()}
    assert found["sidecar"] is FRONTEND
    assert FRONTEND.config_key == "proxy" and FRONTEND.config_model is ProxyEntry
    assert FRONTEND.check is not None and FRONTEND.start is start


def test_one_engine_per_process(sidecar, kms):
    """mitmproxy's globals allow one Master per process: a second start is a clear error."""
    with pytest.raises(ConfigError, match="already runs"):
        start([ProxyEntry.model_validate({"upstream": "http://127.0.0.1:9", "listen": "127.0.0.1:1", "workers": 1})], kms)


def test_bad_reload_keeps_the_old_config(sidecar, client, upstream):
    before = list(sidecar.entries)
    bad = before[0].model_copy(update={"route": (
        before[0].route[0].model_copy(update={"request": before[0].route[0].request.model_copy(update={"key": "no/such"})}),
    )})
    with pytest.raises(Exception):
        sidecar.apply([bad, *before[1:]])
    assert sidecar.entries == before
    r = client.post("/fields/x", json={"user": {"ssn": "1"}})
    assert r.status_code == 200


def test_reload_onto_a_busy_port_rolls_back(sidecar, client):
    import socket

    before = list(sidecar.entries)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = before[1].model_copy(update={"listen": f"127.0.0.1:{s.getsockname()[1]}"})
        with pytest.raises(ConfigError, match="cannot listen"):
            sidecar.apply([before[0], busy])
    assert sidecar.entries == before
    import httpx

    assert httpx.post(sidecar.urls["strict"] + "/ok", content=b"x").status_code == 200
    assert client.post("/fields/x", json={"user": {"ssn": "1"}}).status_code == 200
