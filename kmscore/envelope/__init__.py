"""The keyhold envelope: one framed, authenticated format for files and streams.

A header carrying a DEK wrapped by a CMK, then AES-256-GCM frames whose AAD binds the
header, the frame index and a final-frame marker. `format` and `frames` are sans-IO;
`stream` encodes and decodes in constant memory; `keys` talks to a Kms or a
DataKeyCache. Byte layout: docs/FORMAT.md.
"""

from kmscore.envelope.errors import BadMagic, EnvelopeError, FrameAuthError, Truncated, UnsupportedVersion
from kmscore.envelope.format import (
    FIXED_SIZE,
    FLAG_SHARED_DEK,
    FRAME_OVERHEAD,
    MAGIC,
    MAX_FRAME,
    MIN_FRAME,
    VERSION,
    VERSION_METADATA,
    VERSIONS,
    Header,
    decode_metadata,
    encode_metadata,
    ciphertext_length,
    frame_count,
    frame_offset,
    frame_span,
    header_length,
    header_need,
    plaintext_length,
)
from kmscore.envelope.frames import DEK_SIZE, FrameCipher
from kmscore.envelope.keys import DEFAULT_FRAME_SIZE, envelope_context, new_envelope, open_envelope, rewrap
from kmscore.envelope.stream import StreamDecryptor, StreamEncryptor, open_frames, seal_frames

__all__ = [
    "BadMagic",
    "EnvelopeError",
    "FrameAuthError",
    "Truncated",
    "UnsupportedVersion",
    "FIXED_SIZE",
    "FLAG_SHARED_DEK",
    "FRAME_OVERHEAD",
    "MAGIC",
    "MAX_FRAME",
    "MIN_FRAME",
    "VERSION",
    "VERSION_METADATA",
    "VERSIONS",
    "Header",
    "decode_metadata",
    "encode_metadata",
    "ciphertext_length",
    "frame_count",
    "frame_offset",
    "frame_span",
    "header_length",
    "header_need",
    "plaintext_length",
    "DEK_SIZE",
    "FrameCipher",
    "DEFAULT_FRAME_SIZE",
    "envelope_context",
    "new_envelope",
    "open_envelope",
    "rewrap",
    "StreamDecryptor",
    "StreamEncryptor",
    "open_frames",
    "seal_frames",
]
