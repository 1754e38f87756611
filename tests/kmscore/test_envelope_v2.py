"""Envelope format version 2: authenticated metadata (a body's Content-Type/-Encoding).

`ThirdPartyV2` is written from docs/FORMAT.md alone (struct, uuid, cryptography): it
decrypts the frozen version-2 files, the version-2 vectors printed in docs/FORMAT.md and
envelopes a real Kms makes now; keyhold reads and reproduces the frozen files byte for
byte; any change to the metadata fails every frame. Version 1 keeps decoding
(test_envelope_vectors.py, frozen files envelope-v1-*.json).
"""

from __future__ import annotations

import json
import os
import re
import struct
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from kmscore.envelope import (
    EnvelopeError,
    FrameAuthError,
    FrameCipher,
    Header,
    StreamDecryptor,
    StreamEncryptor,
    UnsupportedVersion,
    decode_metadata,
    encode_metadata,
    header_length,
    new_envelope,
    open_envelope,
    rewrap,
)

VECTORS = Path(__file__).parent / "vectors"
DOC = Path(__file__).parents[2] / "docs" / "FORMAT.md"
FROZEN_V2 = sorted(VECTORS.glob("envelope-v2-*.json"))


class ThirdPartyV2:
    """An independent decoder of envelope versions 1 and 2, per docs/FORMAT.md."""

    @staticmethod
    def pairs(data: bytes) -> dict[str, str]:
        if not data:
            return {}
        (count,), pos, out = struct.unpack(">H", data[:2]), 2, {}
        for _ in range(count):
            (klen,) = struct.unpack(">H", data[pos : pos + 2])
            key = data[pos + 2 : pos + 2 + klen].decode()
            pos += 2 + klen
            (vlen,) = struct.unpack(">H", data[pos : pos + 2])
            out[key] = data[pos + 2 : pos + 2 + vlen].decode()
            pos += 2 + vlen
        assert pos == len(data)
        return out

    @staticmethod
    def encode_context(context: dict[str, str]) -> bytes:
        pairs = sorted((k.encode(), v.encode()) for k, v in context.items())
        out = struct.pack(">H", len(pairs))
        for k, v in pairs:
            out += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
        return out

    @classmethod
    def decrypt(cls, env: bytes, cmk: bytes | None = None, dek: bytes | None = None) -> tuple[bytes, dict]:
        magic, version, flags, reserved, frame_size, message_id = struct.unpack(">4sBBHI16s", env[:28])
        assert (magic, flags & ~1, reserved) == (b"KHEV", 0, 0) and version in (1, 2)
        pos, metadata = 28, {}
        if version == 2:
            (m,) = struct.unpack(">H", env[28:30])
            metadata = cls.pairs(env[30 : 30 + m])
            pos = 30 + m
        bound = env[:pos]  # what every frame's AAD starts with
        (w,) = struct.unpack(">H", env[pos : pos + 2])
        wrapped = env[pos + 2 : pos + 2 + w]
        if dek is None:
            context = {"keyhold:envelope": "shared" if flags & 1 else message_id.hex()}
            kid_blob = wrapped[:21]
            dek = AESGCM(cmk).decrypt(wrapped[21:33], wrapped[33:], kid_blob + cls.encode_context(context))
        body = env[pos + 2 + w :]
        span = frame_size + 28
        n = max(1, -(-len(body) // span))
        aead, out = AESGCM(dek), []
        for i in range(n):
            frame = body[i * span : (i + 1) * span]
            out.append(aead.decrypt(frame[:12], frame[12:], bound + struct.pack(">QB", i, 1 if i == n - 1 else 0)))
        return b"".join(out), metadata


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_there_are_frozen_v2_vectors():
    assert {p.name for p in FROZEN_V2} >= {
        "envelope-v2-typed.json", "envelope-v2-gzip-two-frames.json", "envelope-v2-untyped-empty.json"}


@pytest.mark.parametrize("path", FROZEN_V2, ids=lambda p: p.stem)
def test_third_party_decrypts_frozen_v2_vectors(path):
    v = load(path)
    env = bytes.fromhex(v["envelope"])
    assert env[4] == 2 == v["format_version"]
    for keys in ({"cmk": bytes.fromhex(v["cmk_material"])}, {"dek": bytes.fromhex(v["dek"])}):
        plain, metadata = ThirdPartyV2.decrypt(env, **keys)
        assert plain == bytes.fromhex(v["plaintext"]) and metadata == v["metadata"]
    assert ThirdPartyV2.encode_context(v["metadata"]).hex() == v["encoded_metadata"] or not v["metadata"]


@pytest.mark.parametrize("path", FROZEN_V2, ids=lambda p: p.stem)
def test_keyhold_decrypts_and_reproduces_frozen_v2_vectors(path):
    v = load(path)
    env = bytes.fromhex(v["envelope"])
    dek = bytes.fromhex(v["dek"])
    header = Header.decode(env)
    assert (header.version, header.metadata, header.message_id.hex()) == (2, v["metadata"], v["message_id"])
    assert header.metadata_bytes.hex() == v["encoded_metadata"] and header_length(env) == header.size
    dec = StreamDecryptor(FrameCipher(dek, header))
    assert bytes(dec.update(env[header.size :])) + bytes(dec.finalize()) == bytes.fromhex(v["plaintext"])
    nonces, pos = bytes.fromhex(v["frame_nonces"]), [0]

    def replay(n: int) -> bytes:
        pos[0] += n
        return nonces[pos[0] - n : pos[0]]

    enc = StreamEncryptor(FrameCipher(dek, header, random=replay))
    assert header.encode() + bytes(enc.update(bytes.fromhex(v["plaintext"]))) + bytes(enc.finalize()) == env


def test_the_v2_vectors_in_format_md_are_the_frozen_ones():
    found = re.findall(r"<!-- vector (v2-[\w-]+):(\w+) -->\s*```hex\n(.*?)```", DOC.read_text(), re.S)
    assert {f"{n}:{f}" for n, f, _ in found} >= {"v2-typed:envelope", "v2-typed:dek", "v2-typed:encoded_metadata"}
    for name, field, hexdata in found:
        assert load(VECTORS / f"envelope-{name}.json")[field] == re.sub(r"\s", "", hexdata), f"{name}:{field}"
    env = bytes.fromhex(re.sub(r"\s", "", next(h for n, f, h in found if (n, f) == ("v2-typed", "envelope"))))
    cmk = bytes.fromhex(load(VECTORS / "envelope-v2-typed.json")["cmk_material"])
    assert ThirdPartyV2.decrypt(env, cmk=cmk) == (b'{"hello":"keyhold"}\n', {"content-type": "application/json; charset=utf-8"})


@pytest.mark.parametrize("path", FROZEN_V2[:2], ids=lambda p: p.stem)
def test_a_changed_metadata_byte_fails_every_frame(path):
    """The metadata is in every frame's AAD: a path that rewrites the content type (same
    length, so the layout still parses) makes the envelope undecryptable."""
    v = load(path)
    env = bytearray(bytes.fromhex(v["envelope"]))
    header = Header.decode(bytes(env))
    at = bytes(env).index(b"/", 30)  # inside a metadata value: "application/json" -> "application_json"
    env[at] = ord("_")
    forged = Header.decode(bytes(env))
    assert forged.metadata != header.metadata
    cipher = FrameCipher(bytes.fromhex(v["dek"]), forged)
    with pytest.raises(FrameAuthError):
        dec = StreamDecryptor(cipher)
        dec.update(bytes(env[forged.size :]))
        dec.finalize()
    with pytest.raises(Exception):
        ThirdPartyV2.decrypt(bytes(env), dek=bytes.fromhex(v["dek"]))


def test_version_one_headers_have_no_metadata_and_unknown_versions_are_refused():
    with pytest.raises(EnvelopeError):
        Header(1, 0, 1024, os.urandom(16), b"w" * 81, {"content-type": "text/plain"})
    with pytest.raises(UnsupportedVersion, match="versions 1 and 2"):
        Header(3, 0, 1024, os.urandom(16), b"w" * 81)
    v1 = Header(1, 0, 1024, os.urandom(16), b"w" * 81)
    assert v1.bound == v1.fixed and v1.size == 30 + 81  # version 1 is byte-for-byte what it was


def test_v2_header_decodes_from_a_stream_fed_byte_by_byte(kms):
    kms.create_key(alias="app/v2", spec="AES_256")
    meta = {"content-type": "image/png", "content-encoding": "br"}
    header, cipher = new_envelope(kms, "app/v2", 1024, metadata=meta)
    plain = os.urandom(3000)
    enc = StreamEncryptor(cipher)
    env = header.encode() + enc.update(plain) + enc.finalize()
    dec = StreamDecryptor(lambda h: open_envelope(kms, h))
    out = b"".join(dec.update(env[i : i + 1]) for i in range(len(env))) + dec.finalize()
    assert out == plain and dec.header.metadata == meta and dec.header.version == 2
    # a re-wrap (new CMK version) keeps the frames valid: the wrapped DEK is not in the AAD
    kms.rotate_key("app/v2")
    again = rewrap(kms, header)
    assert again.metadata == meta and again.bound == header.bound
    dec = StreamDecryptor(open_envelope(kms, again))
    assert dec.update(env[header.size :]) + dec.finalize() == plain


def test_third_party_decrypts_a_v2_envelope_a_real_kms_makes(kms, kh):
    cmk = os.urandom(32)
    kms.create_key(alias="app/v2ext", spec="AES_256", usage="ENCRYPT_DECRYPT", origin="EXTERNAL")
    kh.import_material(kms, "app/v2ext", cmk)
    header, cipher = new_envelope(kms, "app/v2ext", 4096, metadata={"content-type": "text/plain; charset=utf-8"})
    plain = os.urandom(10000)
    enc = StreamEncryptor(cipher)
    env = header.encode() + enc.update(plain) + enc.finalize()
    assert ThirdPartyV2.decrypt(env, cmk=cmk) == (plain, {"content-type": "text/plain; charset=utf-8"})
    assert str(uuid.UUID(bytes=header.wrapped_dek[1:17])) == kms.describe_key("app/v2ext").key_id


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(text.filter(bool), text, max_size=6))
def test_metadata_round_trips_canonically(meta):
    data = encode_metadata(meta)
    assert decode_metadata(data) == meta and encode_metadata(decode_metadata(data)) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_metadata_decoder_accepts_only_canonical_bytes(data):
    """Any bytes: either refused with EnvelopeError or exactly what the encoder writes."""
    try:
        meta = decode_metadata(data)
    except EnvelopeError:
        return
    assert encode_metadata(meta) == data


def test_envelope_info_shows_version_and_metadata(tmp_path, kms, run_kms):
    kms.create_key(alias="app/info2", spec="AES_256")
    header, cipher = new_envelope(kms, "app/info2", 1024, metadata={"content-type": "text/csv"})
    enc = StreamEncryptor(cipher)
    (tmp_path / "e").write_bytes(header.encode() + enc.update(b"a,b\n") + enc.finalize())
    out = run_kms("envelope-info", str(tmp_path / "e"), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["format_version"] == 2 and report["metadata"] == {"content-type": "text/csv"}
    assert report["plaintext_bytes"] == 4 and report["header_bytes"] == header.size
