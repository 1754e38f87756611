"""Writes the frozen envelope test vectors (envelope-v1-*.json, envelope-v2-*.json). Run once per format
version; never re-run for an existing version: the files are what old data looks like.

    python tests/kmscore/vectors/make_vectors.py

Deterministic: every key, id and nonce is derived from a label with SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kmscore import blob
from kmscore.envelope import FrameCipher, Header, StreamEncryptor, envelope_context

HERE = Path(__file__).parent
KEY_ID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def derive(label: str, n: int) -> bytes:
    out = b""
    while len(out) < n:
        out += hashlib.sha256(f"keyhold vector {label} {len(out)}".encode()).digest()
    return out[:n]


def make(name: str, frame_size: int, plaintext: bytes, key_version: int = 1, flags: int = 0,
         metadata: dict[str, str] | None = None) -> dict:
    version = 1 if metadata is None else 2
    label = name if version == 1 else f"v2 {name}"
    cmk = derive(f"{label} cmk", 32)
    dek = derive(f"{label} dek", 32)
    message_id = derive(f"{label} message id", 16)
    context = envelope_context(message_id, shared=bool(flags & 1))
    prefix = blob.header(KEY_ID, key_version)
    blob_nonce = derive(f"{label} blob nonce", 12)
    wrapped = blob.encode(prefix, blob_nonce, AESGCM(cmk).encrypt(blob_nonce, dek, prefix + blob.encode_context(context)))
    header = Header(version, flags, frame_size, message_id, wrapped, metadata or {})
    stream = derive(f"{label} frame nonces", 12 * 1000)
    pos = [0]

    def nonces(n: int) -> bytes:
        pos[0] += n
        return stream[pos[0] - n : pos[0]]

    enc = StreamEncryptor(FrameCipher(dek, header, random=nonces))
    envelope = header.encode() + bytes(enc.update(plaintext)) + bytes(enc.finalize())
    extra = {} if version == 1 else {"metadata": metadata, "encoded_metadata": header.metadata_bytes.hex()}
    return {
        "description": f"keyhold envelope format version {version}: {name}",
        "format_version": version,
        **extra,
        "cmk_material": cmk.hex(),
        "key_id": KEY_ID,
        "key_version": key_version,
        "encryption_context": context,
        "encoded_context": blob.encode_context(context).hex(),
        "blob_nonce": blob_nonce.hex(),
        "dek": dek.hex(),
        "wrapped_dek": wrapped.hex(),
        "flags": flags,
        "message_id": message_id.hex(),
        "frame_size": frame_size,
        "frame_nonces": stream[: pos[0]].hex(),
        "plaintext": plaintext.hex(),
        "envelope": envelope.hex(),
    }


if __name__ == "__main__":
    vectors = {
        "hello": make("hello", 1024, b"hello, keyhold\n"),
        "three-frames": make("three-frames", 1024, derive("three-frames plaintext", 2500), key_version=2),
        "empty": make("empty", 4096, b""),
        "shared-dek": make("shared-dek", 2048, derive("shared-dek plaintext", 4096), flags=1),
    }
    v2 = {
        "typed": make("typed", 1024, b'{"hello":"keyhold"}\n',
                      metadata={"content-type": "application/json; charset=utf-8"}),
        "gzip-two-frames": make("gzip-two-frames", 1024, derive("v2 gzip-two-frames plaintext", 1500),
                                metadata={"content-encoding": "gzip", "content-type": "text/csv"}),
        "untyped-empty": make("untyped-empty", 4096, b"", metadata={}),
    }
    for name, v in vectors.items():
        v.pop("format_version")  # the v1 files were frozen before this field existed
        path = HERE / f"envelope-v1-{name}.json"
        if not path.exists():  # frozen: never rewritten
            path.write_text(json.dumps(v, indent=2) + "\n")
    for name, v in v2.items():
        path = HERE / f"envelope-v2-{name}.json"
        if not path.exists():  # frozen: never rewritten
            path.write_text(json.dumps(v, indent=2) + "\n")
