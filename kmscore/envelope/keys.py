"""The envelope with a KMS: make a DEK for a new envelope, unwrap it, re-wrap it.

The DEK is wrapped with the encryption context {"keyhold:envelope": <message id hex>},
so a wrapped DEK only opens for the envelope it was made for. Envelopes made with a
reuse policy (DataKeyCache(reuse=...)) share a DEK; they carry the shared-DEK flag and
the context {"keyhold:envelope": "shared"}; their message ids still differ, so frames
cannot move between them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from kmscore.blob import peek_key
from kmscore.envelope.format import FLAG_SHARED_DEK, MESSAGE_ID_SIZE, VERSION, VERSION_METADATA, Header
from kmscore.envelope.frames import DEK_SIZE, FrameCipher
from kmscore.errors import InvalidCiphertext

CONTEXT_KEY = "keyhold:envelope"
SHARED = "shared"
DEFAULT_FRAME_SIZE = 65536


def envelope_context(header_or_id: Header | bytes, shared: bool = False) -> dict[str, str]:
    """The encryption context the header's DEK is wrapped under."""
    if isinstance(header_or_id, Header):
        shared, message_id = header_or_id.shared_dek, header_or_id.message_id
    else:
        message_id = header_or_id
    return {CONTEXT_KEY: SHARED if shared else bytes(message_id).hex()}


def new_envelope(
    kms_or_cache: Any,
    key: str,
    frame_size: int = DEFAULT_FRAME_SIZE,
    *,
    expected_bytes: int = 0,
    metadata: Mapping[str, str] | None = None,
) -> tuple[Header, FrameCipher]:
    """A header with a fresh random message id and DEK under CMK `key`, and its cipher.

    With a DataKeyCache that has a reuse policy, the DEK may be one shared with other
    recent envelopes (within the policy's limits); `expected_bytes` counts toward them.
    `metadata` (even empty) makes a version-2 envelope that carries it, authenticated;
    without it the envelope is version 1 (what fsmount and `kms encrypt-file` write).
    """
    version = VERSION if metadata is None else VERSION_METADATA
    meta = dict(metadata or {})
    message_id = os.urandom(MESSAGE_ID_SIZE)
    reuse = getattr(kms_or_cache, "reuse", None)
    if reuse is not None:
        dek, wrapped = kms_or_cache.shared_datakey(key, envelope_context(message_id, True), expected_bytes)
        header = Header(version, FLAG_SHARED_DEK, frame_size, message_id, wrapped, meta)
    else:
        kms = getattr(kms_or_cache, "kms", kms_or_cache)
        Header(version, 0, frame_size, message_id, b"\0", meta)  # validate before a KMS call
        dk = kms.create_datakey(key, 256, envelope_context(message_id))
        dek, wrapped = dk.plaintext, dk.ciphertext
        header = Header(version, 0, frame_size, message_id, wrapped, meta)
    return header, FrameCipher(dek, header)


def open_envelope(kms_or_cache: Any, header: Header) -> FrameCipher:
    """The cipher of an existing envelope: its DEK unwrapped (through the cache if given)."""
    context = envelope_context(header)
    if hasattr(kms_or_cache, "unwrap"):
        dek = kms_or_cache.unwrap(header.wrapped_dek, context)
    else:
        dek = kms_or_cache.decrypt_datakey(header.wrapped_dek, context)
    if len(dek) != DEK_SIZE:
        raise InvalidCiphertext(f"the envelope's data key is {len(dek) * 8} bits, not 256")
    return FrameCipher(dek, header)


def rewrap(kms: Any, header: Header, to_key: str | None = None) -> Header:
    """The header with its DEK re-wrapped under the newest version of `to_key` (default:
    the CMK it is wrapped under now). Frames stay valid: the fixed header is unchanged."""
    kms = getattr(kms, "kms", kms)
    context = envelope_context(header)
    dek = kms.decrypt_datakey(header.wrapped_dek, context)
    target = to_key if to_key is not None else peek_key(header.wrapped_dek)[0]
    return header.with_wrapped_dek(kms.encrypt_datakey(target, dek, context))
