"""Frozen test vectors, and a third party's decoder written from docs/FORMAT.md alone.

`ThirdParty` uses only `struct`, `uuid` and `cryptography`: it does not import keyhold's
decoder. It must decrypt the frozen files, the vectors printed in docs/FORMAT.md, and
envelopes made right now by a real Kms (with CMK material the test imported, so the
third party holds it).
"""

from __future__ import annotations

import json
import re
import struct
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kmscore.envelope import FrameCipher, Header, StreamDecryptor, StreamEncryptor, new_envelope, open_envelope

VECTORS = Path(__file__).parent / "vectors"
DOC = Path(__file__).parents[2] / "docs" / "FORMAT.md"
FROZEN = sorted(VECTORS.glob("envelope-v1-*.json"))  # version 2: test_envelope_v2.py


class ThirdParty:
    """An independent decoder of the blob and the envelope, per docs/FORMAT.md."""

    @staticmethod
    def encode_context(context: dict[str, str]) -> bytes:
        if not context:
            return b""
        pairs = sorted((k.encode(), v.encode()) for k, v in context.items())
        out = struct.pack(">H", len(pairs))
        for k, v in pairs:
            out += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
        return out

    @classmethod
    def unwrap(cls, blob: bytes, cmk: bytes, context: dict[str, str]) -> tuple[str, int, bytes]:
        version, kid, kver = struct.unpack(">B16sI", blob[:21])
        assert version == 1
        plain = AESGCM(cmk).decrypt(blob[21:33], blob[33:], blob[:21] + cls.encode_context(context))
        return str(uuid.UUID(bytes=kid)), kver, plain

    @classmethod
    def decrypt(cls, envelope: bytes, cmk: bytes | None = None, dek: bytes | None = None) -> bytes:
        magic, version, flags, reserved, frame_size, message_id, w = struct.unpack(">4sBBHI16sH", envelope[:30])
        assert (magic, version, flags & ~1, reserved) == (b"KHEV", 1, 0, 0)
        fixed, wrapped = envelope[:28], envelope[30 : 30 + w]
        if dek is None:
            context = {"keyhold:envelope": "shared" if flags & 1 else message_id.hex()}
            dek = cls.unwrap(wrapped, cmk, context)[2]
        body = envelope[30 + w :]
        span = frame_size + 28
        n = max(1, -(-len(body) // span))
        assert len(body) - (n - 1) * span >= 28
        aead = AESGCM(dek)
        out = []
        for i in range(n):
            frame = body[i * span : (i + 1) * span]
            aad = fixed + struct.pack(">QB", i, 1 if i == n - 1 else 0)
            out.append(aead.decrypt(frame[:12], frame[12:], aad))
        return b"".join(out)


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_there_are_frozen_vectors():
    assert {p.name for p in FROZEN} >= {"envelope-v1-hello.json", "envelope-v1-three-frames.json", "envelope-v1-empty.json", "envelope-v1-shared-dek.json"}


@pytest.mark.parametrize("path", FROZEN, ids=lambda p: p.stem)
def test_third_party_decrypts_frozen_vectors(path):
    v = load(path)
    env = bytes.fromhex(v["envelope"])
    plain = bytes.fromhex(v["plaintext"])
    assert ThirdParty.decrypt(env, cmk=bytes.fromhex(v["cmk_material"])) == plain
    assert ThirdParty.decrypt(env, dek=bytes.fromhex(v["dek"])) == plain
    kid, kver, dek = ThirdParty.unwrap(bytes.fromhex(v["wrapped_dek"]), bytes.fromhex(v["cmk_material"]), v["encryption_context"])
    assert (kid, kver, dek.hex()) == (v["key_id"], v["key_version"], v["dek"])
    assert ThirdParty.encode_context(v["encryption_context"]).hex() == v["encoded_context"]


@pytest.mark.parametrize("path", FROZEN, ids=lambda p: p.stem)
def test_keyhold_decrypts_and_reproduces_frozen_vectors(path):
    """Today's decoder reads every frozen version; today's encoder, given the same
    nonces, writes the same bytes (so the format did not drift)."""
    from kmscore import blob

    v = load(path)
    env = bytes.fromhex(v["envelope"])
    dek = bytes.fromhex(v["dek"])
    header = Header.decode(env)
    assert header.message_id.hex() == v["message_id"] and header.frame_size == v["frame_size"]
    assert blob.peek_key(header.wrapped_dek) == (v["key_id"], v["key_version"])
    assert blob.encode_context(v["encryption_context"]).hex() == v["encoded_context"]
    dec = StreamDecryptor(FrameCipher(dek, header))
    assert bytes(dec.update(env[header.size :])) + bytes(dec.finalize()) == bytes.fromhex(v["plaintext"])

    nonces = bytes.fromhex(v["frame_nonces"])
    pos = [0]

    def replay(n: int) -> bytes:
        pos[0] += n
        return nonces[pos[0] - n : pos[0]]

    enc = StreamEncryptor(FrameCipher(dek, header, random=replay))
    again = header.encode() + bytes(enc.update(bytes.fromhex(v["plaintext"]))) + bytes(enc.finalize())
    assert again == env


def doc_vectors() -> dict[str, str]:
    found = re.findall(r"<!-- vector ([\w-]+):(\w+) -->\s*```hex\n(.*?)```", DOC.read_text(), re.S)
    return {f"{name}:{field}": re.sub(r"\s", "", hexdata) for name, field, hexdata in found}


def test_the_vectors_in_format_md_are_the_frozen_ones():
    vectors = doc_vectors()
    assert {"hello:envelope", "hello:dek", "hello:cmk_material", "hello:wrapped_dek"} <= set(vectors)
    for key, value in vectors.items():
        name, field = key.split(":")
        file = f"envelope-{name}.json" if name.startswith("v2-") else f"envelope-v1-{name}.json"
        assert load(VECTORS / file)[field] == value, key
    env = bytes.fromhex(vectors["hello:envelope"])
    assert ThirdParty.decrypt(env, cmk=bytes.fromhex(vectors["hello:cmk_material"])) == b"hello, keyhold\n"


@pytest.mark.parametrize("length", [0, 1, 4095, 4096, 4097, 20000])
def test_third_party_decrypts_what_a_real_kms_makes(kms, kh, length):
    """Blobs and envelopes made by the Kms follow the documented layout: the test
    imports CMK material it knows, so the third party can unwrap the DEK itself."""
    import os

    cmk = os.urandom(32)
    kms.create_key(alias="app/ext", spec="AES_256", usage="ENCRYPT_DECRYPT", origin="EXTERNAL")
    kh.import_material(kms, "app/ext", cmk)
    header, cipher = new_envelope(kms, "app/ext", 4096)
    plain = os.urandom(length)
    enc = StreamEncryptor(cipher)
    env = header.encode() + bytes(enc.update(plain)) + bytes(enc.finalize())
    assert ThirdParty.decrypt(env, cmk=cmk) == plain
    dec = StreamDecryptor(lambda h: open_envelope(kms, h))
    assert bytes(dec.update(env)) + bytes(dec.finalize()) == plain
