"""Whole-body encryption as an envelope (kmscore.envelope), buffered or streamed.

An encrypted body is sent with `Content-Type: application/vnd.keyhold.envelope`; the
original Content-Type and Content-Encoding travel in `X-Keyhold-Content-Type` and
`X-Keyhold-Content-Encoding` and are restored on decrypt. The body bytes are the raw
(still content-encoded) bytes, so a gzip body comes back as the same gzip body.
"""

from __future__ import annotations

from kmscore.blob import peek_key

from sidecar.errors import BadBody, SidecarError

try:
    from kmscore import envelope
except ImportError:  # an install without the envelope format: whole-body rules fail closed
    envelope = None

ENVELOPE_TYPE = "application/vnd.keyhold.envelope"
ORIG_TYPE = "X-Keyhold-Content-Type"
ORIG_ENCODING = "X-Keyhold-Content-Encoding"


_CT, _CE = b"content-type", b"content-encoding"
_XCT, _XCE = ORIG_TYPE.lower().encode(), ORIG_ENCODING.lower().encode()


def seal_headers(headers) -> None:
    """Content-Type/-Encoding move to X-Keyhold-*; Content-Type becomes the envelope type.
    One pass over mitmproxy's raw header fields (its per-name operations are slow)."""
    kept, moved = [], []
    for name, value in headers.fields:
        low = name.lower()
        if low == _CT:
            moved.append((ORIG_TYPE.encode(), value))
        elif low == _CE:
            moved.append((ORIG_ENCODING.encode(), value))
        elif low not in (_XCT, _XCE):
            kept.append((name, value))
    headers.fields = (*kept, *moved, (b"Content-Type", ENVELOPE_TYPE.encode()))


def check_envelope_headers(headers) -> None:
    if headers.get("content-type", "").split(";")[0].strip().lower() != ENVELOPE_TYPE:
        raise BadBody(f"the body is not a keyhold envelope (Content-Type is not {ENVELOPE_TYPE})")


def open_headers(headers) -> None:
    """The reverse of seal_headers: the original Content-Type/-Encoding come back."""
    kept, restored = [], []
    for name, value in headers.fields:
        low = name.lower()
        if low == _XCT:
            restored.append((b"Content-Type", value))
        elif low == _XCE:
            restored.append((b"Content-Encoding", value))
        elif low not in (_CT, _CE):
            kept.append((name, value))
    headers.fields = (*kept, *restored)


class Sealer:
    """A mitmproxy stream callable: plaintext chunks in, envelope bytes out; b"" ends it.

    The data key is made when the Sealer is built, before any byte is forwarded, so a
    KMS refusal still becomes a clean error response."""

    def __init__(self, kms, key: str, frame_size: int) -> None:
        if envelope is None:
            raise SidecarError("the envelope format (kmscore.envelope) is not installed", status=503, reason="kms_error")
        header, cipher = envelope.new_envelope(kms, key, frame_size)
        self._prefix = header.encode()
        self._enc = envelope.StreamEncryptor(cipher)

    def __call__(self, chunk: bytes) -> bytes:
        out = self._enc.update(chunk) if chunk else self._enc.finalize()
        if self._prefix:
            out, self._prefix = self._prefix + out, b""
        return out


class Opener:
    """A mitmproxy stream callable: envelope bytes in, plaintext out; b"" ends it.

    Only authenticated frames come out; a bad header, a bad frame or a cut-off body
    raises BadBody (the caller answers with an error or cuts the connection)."""

    def __init__(self, kms, dkcache=None, key_id: str | None = None) -> None:
        if envelope is None:
            raise SidecarError("the envelope format (kmscore.envelope) is not installed", status=503, reason="kms_error")
        source = dkcache or kms

        def opener(header):
            # a decrypt rule opens only envelopes under its own key: the sidecar must not
            # decrypt, for whoever asks, data that belongs to another key
            if key_id is not None and peek_key(header.wrapped_dek)[0] != key_id:
                raise BadBody("the envelope was not made with this rule's key")
            return envelope.open_envelope(source, header)

        self._dec = envelope.StreamDecryptor(opener)

    def __call__(self, chunk: bytes) -> bytes:
        try:
            return self._dec.update(chunk) if chunk else self._dec.finalize()
        except envelope.EnvelopeError as e:
            raise BadBody(f"malformed envelope: {e}") from None


def seal_all(kms, key: str, body: bytes, frame_size: int) -> bytes:
    s = Sealer(kms, key, frame_size)
    return bytes(s(body)) + bytes(s(b""))


def open_all(kms, body: bytes, dkcache=None, key_id: str | None = None) -> bytes:
    if not body:
        raise BadBody("the body is empty, not an envelope")
    o = Opener(kms, dkcache, key_id)
    return bytes(o(body)) + bytes(o(b""))
