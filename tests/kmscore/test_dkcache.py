"""The data-key cache: caching, bounds, revocation (also from another process), reuse."""

from __future__ import annotations

import time

import pytest

from kmscore import Kms
from kmscore.dkcache import DataKeyCache, ReusePolicy
from kmscore.envelope import new_envelope, open_envelope
from kmscore.errors import InvalidRequest, KeyUnavailable


class Monotonic:
    """A monotonic clock the test moves by hand (the cache's `clock` seam)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def unwraps(kms: Kms) -> int:
    """How many DecryptDataKey calls reached the KMS (from its audit log)."""
    return sum(r["count"] for r in kms.audit_records() if r["operation"] == "DecryptDataKey" and r["outcome"] == "ok")


@pytest.fixture
def aes(kms):
    return kms.create_key(alias="app/c", spec="AES_256", usage="ENCRYPT_DECRYPT").key_id


def test_a_cached_dek_is_not_unwrapped_again(kms, aes):
    cache = DataKeyCache(kms)
    header, _ = new_envelope(kms, "app/c")
    first = open_envelope(cache, header)
    before = unwraps(kms)
    for _ in range(5):
        open_envelope(cache, header)
    assert unwraps(kms) == before and len(cache) == 1
    assert before >= 1 and first is not None


def test_size_and_age_are_bounded(kms, aes):
    clock = Monotonic()
    cache = DataKeyCache(kms, max_entries=2, max_age=60, clock=clock)
    headers = [new_envelope(kms, "app/c")[0] for _ in range(3)]
    for h in headers:
        open_envelope(cache, h)
    assert len(cache) == 2
    before = unwraps(kms)
    open_envelope(cache, headers[2])
    assert unwraps(kms) == before
    clock.now += 61
    open_envelope(cache, headers[2])
    assert unwraps(kms) == before + 1


def test_the_cache_never_shows_a_dek(kms, aes):
    cache = DataKeyCache(kms)
    h, _ = new_envelope(kms, "app/c")
    dek = cache.unwrap(h.wrapped_dek, {"keyhold:envelope": h.message_id.hex()})
    assert dek.hex() not in repr(cache) and dek.hex() not in repr(list(cache._entries.values()))


def test_a_disabled_key_stops_cached_deks_in_the_same_process(kms, aes):
    cache = DataKeyCache(kms, revocation_bound=kms.refresh_interval)  # no remembered answers
    h, _ = new_envelope(kms, "app/c")
    open_envelope(cache, h)
    kms.disable_key("app/c")
    with pytest.raises(KeyUnavailable):
        cache.check(aes)
    with pytest.raises(KeyUnavailable):
        open_envelope(cache, h)
    assert len(cache) == 0  # a refusal drops the CMK's DEKs
    kms.enable_key("app/c")
    cache.check(aes)
    open_envelope(cache, h)


def test_expired_imported_material_stops_cached_deks(kms, kh, clock):
    kms.create_key(alias="app/x", spec="AES_256", usage="ENCRYPT_DECRYPT", origin="EXTERNAL")
    kh.import_material(kms, "app/x", b"k" * 32, expires_at=clock.now + 3600)
    key_id = kms.describe_key("app/x").key_id
    cache = DataKeyCache(kms, revocation_bound=kms.refresh_interval)
    h, _ = new_envelope(kms, "app/x")
    open_envelope(cache, h)
    cache.check(key_id)
    clock.advance(seconds=3601)
    with pytest.raises(KeyUnavailable):
        cache.check(key_id)


@pytest.mark.parametrize("revoke", [["disable-key", "app/c"], ["schedule-key-deletion", "app/c", "--pending-days", "7"]])
def test_revocation_by_another_process_is_seen_within_the_bound(home, kh, revoke):
    """This process holds a cache with a DEK; a second process (the real `kms` CLI)
    revokes the CMK in the shared store. Once the bound has passed, check() refuses.
    (The bound is a guarantee, so waiting it out asserts no timing.)"""
    bound = 2.0
    with Kms(home, refresh_interval=0.5) as kms:
        key_id = kms.create_key(alias="app/c", spec="AES_256", usage="ENCRYPT_DECRYPT").key_id
        cache = DataKeyCache(kms, revocation_bound=bound)
        h, _ = new_envelope(kms, "app/c")
        open_envelope(cache, h)
        cache.check(key_id)  # remembered as usable now

        done = kh.kms_cli(home, *revoke)
        assert done.returncode == 0, done.stderr
        time.sleep(bound)
        with pytest.raises(KeyUnavailable):
            cache.check(key_id)
        with pytest.raises(KeyUnavailable):
            open_envelope(cache, h)


# -- reuse policy ------------------------------------------------------------------------------
def test_reuse_by_message_count(kms, aes):
    cache = DataKeyCache(kms, reuse=ReusePolicy(max_messages=2))
    wrapped = [new_envelope(cache, "app/c")[0].wrapped_dek for _ in range(5)]
    assert wrapped[0] == wrapped[1] != wrapped[2] == wrapped[3] != wrapped[4]


def test_reuse_by_bytes_and_age(kms, aes):
    clock = Monotonic()
    cache = DataKeyCache(kms, reuse=ReusePolicy(max_bytes=1000, max_age=10), clock=clock)
    a = new_envelope(cache, "app/c", expected_bytes=600)[0]
    b = new_envelope(cache, "app/c", expected_bytes=300)[0]
    c = new_envelope(cache, "app/c", expected_bytes=300)[0]  # 1200 > 1000: a new DEK
    assert a.wrapped_dek == b.wrapped_dek != c.wrapped_dek
    d = new_envelope(cache, "app/c")[0]
    clock.now += 11
    e = new_envelope(cache, "app/c")[0]
    assert c.wrapped_dek == d.wrapped_dek != e.wrapped_dek
    assert all(h.shared_dek for h in (a, b, c, d, e)) and len({h.message_id for h in (a, b, c, d, e)}) == 5


def test_reuse_stops_when_the_key_is_disabled(kms, aes):
    cache = DataKeyCache(kms, revocation_bound=kms.refresh_interval, reuse=ReusePolicy())
    new_envelope(cache, "app/c")
    kms.disable_key("app/c")
    with pytest.raises(KeyUnavailable):
        new_envelope(cache, "app/c")


def test_bad_limits_are_refused(kms):
    with pytest.raises(InvalidRequest):
        DataKeyCache(kms, max_entries=0)
    with pytest.raises(InvalidRequest):
        ReusePolicy(max_messages=0)
    with pytest.raises(InvalidRequest):
        DataKeyCache(kms).shared_datakey("app/c")
