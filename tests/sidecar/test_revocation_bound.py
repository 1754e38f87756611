"""The sidecar's data-key cache keeps the deployment's revocation bound, not a fixed 5 s
(found by the remote-facade work: `[kms] revocation_bound = 1` still let a disabled key's
cached data keys serve for 5 s)."""

from __future__ import annotations

from kmscore import Kms
from sidecar.config import ProxyEntry
from sidecar.engine import Engine


def _entry() -> ProxyEntry:
    return ProxyEntry.model_validate({"name": "p", "listen": "127.0.0.1:1", "upstream": "http://127.0.0.1:2",
                                      "workers": 1, "route": [{"match": {"path": "/x"}}]})


def test_the_cache_bound_is_the_kms_refresh_interval(tmp_path):
    with Kms(tmp_path / "home", refresh_interval=0.5) as kms:
        engine = Engine([_entry()], kms)
        assert engine.runtime.dkcache.revocation_bound == 0.5


def test_a_remote_kms_bound_is_kept():
    from kmscore.remote import Credentials, RemoteKms

    remote = RemoteKms("http://127.0.0.1:9", Credentials("KHAKNOTUSED", "x" * 40), revocation_bound=2.0)
    try:
        engine = Engine([_entry()], remote)  # no call is made: nothing listens there
        assert engine.runtime.dkcache.revocation_bound == 2.0
    finally:
        remote.close()
