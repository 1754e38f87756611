"""The sans-IO parts: field paths, token wrapping, RFC 9421 / 9530 serialization."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar import fields, httpsig, tokens
from sidecar.errors import BadBody

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.mark.parametrize("text, steps", [
    ("user.ssn", ("user", "ssn")),
    ("cards[*].number", ("cards", "[*]", "number")),
    ("a[0][12].b", ("a", 0, 12, "b")),
    ("$meta.x_y-z", ("$meta", "x_y-z")),
])
def test_parse_paths(text, steps):
    assert fields.parse(text).steps == steps


@pytest.mark.parametrize("bad", ["", ".a", "a.", "a..b", "a[", "a[x]", "a[01]", "a b", "[0]", "a.[0]", "a[*]x"])
def test_bad_paths_are_named(bad):
    with pytest.raises(fields.PathSyntaxError, match="field path|non-empty"):
        fields.parse(bad)


def test_rewrite_selects_exactly():
    doc = {"cards": [{"number": 1}, {"x": 2}, {"number": 3}], "user": {"ssn": "s"}, "other": [1]}
    n = fields.rewrite(doc, fields.parse("cards[*].number"), lambda v: -v)
    assert n == 2 and doc["cards"] == [{"number": -1}, {"x": 2}, {"number": -3}]
    assert fields.rewrite(doc, fields.parse("cards[1].number"), str) == 0
    assert fields.rewrite(doc, fields.parse("user.ssn.deeper"), str) == 0
    with pytest.raises(BadBody):
        fields.rewrite(doc, fields.parse("missing"), str, required=True)


@given(json_values)
def test_value_encoding_round_trips_types(value):
    assert tokens.decode_value(tokens.encode_value(value)) == value


@given(st.binary(min_size=1, max_size=200))
def test_token_wrap_round_trip(blob):
    t = tokens.wrap(blob)
    assert t.startswith("khf1.") and "=" not in t and tokens.is_token(t)
    assert tokens.unwrap(t) == blob


@given(st.text(max_size=40))
def test_unwrap_never_crashes(text):
    try:
        tokens.unwrap(text)
    except BadBody:
        pass


def test_token_round_trip_through_kms(kms):
    t = tokens.seal(kms, "app/data", "user.ssn", {"n": [1, 2.5, None]})
    assert tokens.open_(kms, "user.ssn", t) == {"n": [1, 2.5, None]}
    with pytest.raises(BadBody, match="failed authentication"):
        tokens.open_(kms, "user.name", t)


@given(st.binary(max_size=300))
def test_content_digest_round_trip(body):
    v = httpsig.content_digest(body)
    assert httpsig.check_content_digest(v, body)
    assert not httpsig.check_content_digest(v, body + b"x")
    assert httpsig.check_content_digest(v + ", " + httpsig.content_digest(body, "sha-512"), body)


@given(
    st.lists(st.sampled_from(["@method", "@target-uri", "content-type", "x-a", "@status"]), unique=True, max_size=5),
    st.integers(0, 2**40), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
)
def test_signature_input_round_trip(components, created, keyid):
    inp = httpsig.SignatureInput(tuple(components), (("created", created), ("keyid", keyid), ("alg", "hmac-sha256")))
    assert httpsig.parse_signature_input("sig1=" + inp.serialize())["sig1"] == inp
    sig_in, sig = httpsig.headers_for("sig1", inp, b"\x00\xff" * 5)
    assert httpsig.parse_signature(sig) == {"sig1": b"\x00\xff" * 5}


@given(st.text(max_size=60))
def test_parsers_raise_only_format_errors(text):
    for parse in (httpsig.parse_signature_input, httpsig.parse_signature):
        try:
            parse(text)
        except httpsig.SignatureFormatError:
            pass


def test_ecdsa_encodings(kms):
    der = kms.sign("app/ec", b"\x00" * 32, "ECDSA_SHA_256", "DIGEST")
    raw = httpsig.ecdsa_raw(der, 32)
    assert len(raw) == 64 and httpsig.ecdsa_der(raw, 32) == der
    with pytest.raises(httpsig.SignatureFormatError):
        httpsig.ecdsa_der(raw[:-1], 32)


def test_parse_library_style_headers():
    value = 'pyhms=("@method" "@authority");created=1;keyid="k";alg="ecdsa-p256-sha256", sig2=("@status");tag="x"'
    parsed = httpsig.parse_signature_input(value)
    assert parsed["pyhms"].components == ("@method", "@authority")
    assert parsed["sig2"].param("tag") == "x"
    assert httpsig.parse_signature("a=:" + base64.b64encode(b"x").decode() + ":;p=1, b=::") == {"a": b"x", "b": b""}


VECTOR_TOKEN = "khf1.AQARIjNEVWZ3iJmqu8zd7v8AAAABAAECAwQFBgcICQoLZTLhI-jV9za8cKW7k6LCsBqtM-UEifB69pz69n8"


def test_documented_token_vector_with_cryptography_only():
    """docs/formats/sidecar.md: a third party decrypts a field token from the spec alone."""
    import json
    import struct
    import uuid

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    blob = tokens.unwrap(VECTOR_TOKEN)
    version, key_id, key_version = struct.unpack(">B16sI", blob[:21])
    assert (version, uuid.UUID(bytes=key_id), key_version) == (1, uuid.UUID("00112233-4455-6677-8899-aabbccddeeff"), 1)
    path = b"user.ssn"
    context = struct.pack(">H", 1) + struct.pack(">H", 13) + b"keyhold:field" + struct.pack(">H", len(path)) + path
    assert context.hex() == "0001000d6b6579686f6c643a6669656c640008757365722e73736e"
    plain = AESGCM(bytes(range(32))).decrypt(blob[21:33], blob[33:], blob[:21] + context)
    assert json.loads(plain) == "078-05-1120"


@given(st.text(max_size=30))
def test_path_parser_raises_only_syntax_errors(text):
    try:
        p = fields.parse(text)
    except fields.PathSyntaxError:
        return
    assert fields.parse(p.text) == p


@given(json_values, st.sampled_from(["a", "a.b", "a[*]", "a[0].b", "a[*].b[*]"]))
def test_rewrite_twice_with_inverse_restores(doc, path_text):
    import copy

    path = fields.parse(path_text)
    original = copy.deepcopy(doc)
    fields.rewrite(doc, path, lambda v: ["wrapped", v])
    fields.rewrite(doc, path, lambda v: v[1])
    assert doc == original
