"""The sans-IO canonical form of request targets and hosts: a table, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.canonical import BadTarget, canonical_host, canonical_target, is_canonical_path, remove_dot_segments

TARGETS = [
    # raw target, canonical origin form (or the words of the refusal)
    (b"/", "/"),
    (b"/store/a", "/store/a"),
    (b"/store/a?x=1&y=%2F", "/store/a?x=1&y=%2F"),  # the query is not decoded
    (b"/store/a?", "/store/a?"),
    (b"/%73tore/a", "/store/a"),
    (b"/%7e%2D%5f%2E", "/~-_."),
    (b"/a%3bb/%c3%a9", "/a%3Bb/%C3%A9"),  # reserved and non-ASCII stay escaped, hex upper-cased
    (b"//store///a", "/store/a"),
    (b"/a/", "/a/"),
    (b"/a/./b/../c", "/a/c"),
    (b"/a/b/..", "/a/"),
    (b"/a/b/.", "/a/b/"),
    (b"/../../a", "/a"),
    (b"/%2e/%2E%2e/a", "/a"),
    (b"/a..b/.c/..d", "/a..b/.c/..d"),  # dots inside a segment are not dot segments
    (b"store/a", "not a path starting with /"),
    (b"*", "not a path starting with /"),
    (b"/a#b", "fragment"),
    (b"/a?b#c", "fragment"),
    (b"/a b", "space"),
    (b"/a\tb", "control"),
    (b"/caf\xc3\xa9", "non-ASCII"),
    (b"/a\\b", "backslash"),
    (b"/a%5cb", "encoded backslash"),
    (b"/a%2Fb", "encoded slash"),
    (b"/a%00", "NUL"),
    (b"/a%", "invalid percent escape"),
    (b"/a%g1", "invalid percent escape"),
    (b"/a%252F", "double-encoded"),
    (b"/a;b/c", "';'"),
    (b"/%C0%AE", "not UTF-8"),
    (b"/%FF", "not UTF-8"),
]


@pytest.mark.parametrize("raw, expected", TARGETS, ids=[t.decode("latin-1") for t, _ in TARGETS])
def test_canonical_target_table(raw, expected):
    if expected.startswith("/"):
        assert canonical_target(raw).origin_form == expected
    else:
        with pytest.raises(BadTarget) as e:
            canonical_target(raw)
        assert expected in str(e.value)
        assert e.value.status == 400


def test_semicolons_can_be_literal():
    assert canonical_target(b"/a;b/c", semicolons=True).path == "/a;b/c"


HOSTS = [
    ("example.com", "example.com"),
    ("Example.COM:8080", "example.com"),
    ("example.com.", "example.com"),
    ("[::1]:443", "::1"),
    ("127.0.0.1", "127.0.0.1"),
    ("a@example.com", None),
    ("ex%61mple.com", None),
    ("example.com:http", None),
    ("", None),
    ("[::1", None),
]


@pytest.mark.parametrize("raw, expected", HOSTS)
def test_canonical_host_table(raw, expected):
    if expected is None:
        with pytest.raises(BadTarget):
            canonical_host(raw)
    else:
        assert canonical_host(raw) == expected


def test_route_patterns_in_canonical_form():
    assert is_canonical_path("/store/*")
    assert not is_canonical_path("store/*")
    for bad in ("/a//b", "/a/./b", "/%73tore", "/a%2fb"):
        assert not is_canonical_path(bad), bad


SEGMENT = st.sampled_from(["a", "B", ".", "..", "", "%2e", "%2E%2e", "%41", "%3b", "~x", "%c3%a9"])


@given(st.lists(SEGMENT, max_size=8), st.booleans())
def test_canonical_form_is_a_fixed_point(segments, query):
    raw = ("/" + "/".join(segments) + ("?q=%2F" if query else "")).encode()
    once = canonical_target(raw)
    assert canonical_target(once.origin_form.encode()) == once
    assert "//" not in once.path and "/./" not in once.path + "/" and "/../" not in once.path + "/"


@given(st.lists(st.sampled_from(["a", "b", ".", "..", ""]), max_size=10))
def test_dot_segments_never_climb_above_the_root(segments):
    out = remove_dot_segments("/" + "/".join(segments))
    assert out.startswith("/") and ".." not in out.split("/")


ALPHABET = st.sampled_from(["/", "a", "Z", "0", ".", "-", "~", "%41", "%2e", "%2F", "%zz", ";", "\\", "?", "#", " ", "@", ":", "%"])


@given(st.lists(ALPHABET, min_size=1, max_size=12))
def test_fast_path_agrees_with_the_full_rules(parts):
    import re

    import sidecar.canonical as c

    raw = ("/" + "".join(parts)).encode()

    def outcome():
        try:
            return c.canonical_target(raw)
        except BadTarget as e:
            return str(e)

    fast = outcome()
    plain, c._PLAIN_PATH = c._PLAIN_PATH, re.compile(rb"(?!)")  # never matches: the full rules only
    try:
        assert outcome() == fast
    finally:
        c._PLAIN_PATH = plain
