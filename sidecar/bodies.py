"""Whole-body encryption as an envelope (kmscore.envelope), buffered or streamed.

An encrypted body is sent with `Content-Type: application/vnd.keyhold.envelope`. The
original Content-Type and Content-Encoding travel *inside* the envelope, as its
authenticated metadata (envelope format version 2): a store that keeps only the body
and its type gives them back, and nobody on the path can change them without failing
every frame. They are also sent as `X-Keyhold-Content-Type` / `-Encoding` hints (for
upstreams that index them), which decryption of a version-2 envelope ignores and drops:
the metadata decides, buffered or streamed (a streamed decryption is started only once
the envelope header has been read, see sidecar.bodylimit). Version-1 envelopes (made
before the metadata existed) carry none: for them the hints are used, as before.

The body bytes are the raw (still content-encoded) bytes, so a gzip body comes back as
the same gzip body. Streams also ask a revocation check on every chunk (`check`), so a
key disabled, scheduled for deletion or whose material expired stops the stream within
the data-key cache's revocation bound.
"""

from __future__ import annotations

from collections.abc import Callable

from kmscore.blob import peek_key

from sidecar import headerfields
from sidecar.errors import BadBody, SidecarError

try:
    from kmscore import envelope
except ImportError:  # an install without the envelope format: whole-body rules fail closed
    envelope = None

ENVELOPE_TYPE = "application/vnd.keyhold.envelope"
ORIG_TYPE = "X-Keyhold-Content-Type"
ORIG_ENCODING = "X-Keyhold-Content-Encoding"
META_TYPE, META_ENCODING = "content-type", "content-encoding"
"""Metadata keys in the envelope (docs/FORMAT.md, version 2)."""


_CT, _CE = b"content-type", b"content-encoding"
_XCT, _XCE = ORIG_TYPE.lower().encode(), ORIG_ENCODING.lower().encode()


def metadata_of(headers) -> dict[str, str]:
    """What the envelope carries: the message's Content-Type and Content-Encoding."""
    meta = {}
    for name, value in headers.fields:
        low = name.lower()
        if low == _CT:
            meta[META_TYPE] = value.decode("latin-1")
        elif low == _CE:
            meta[META_ENCODING] = value.decode("latin-1")
    return meta


def restore_headers(headers, metadata: dict[str, str] | None) -> None:
    """After decryption: Content-Type/-Encoding exactly as `metadata` says (a v2
    envelope's), or, for None (a v1 envelope), from the hints; hints are dropped."""
    if metadata is None:
        return open_headers(headers)
    kept = [(n, v) for n, v in headers.fields if n.lower() not in (_CT, _CE, _XCT, _XCE)]
    if META_TYPE in metadata:
        kept.append((b"Content-Type", metadata[META_TYPE].encode("latin-1")))
    if META_ENCODING in metadata:
        kept.append((b"Content-Encoding", metadata[META_ENCODING].encode("latin-1")))
    headers.fields = tuple(kept)


def peek_header(data: bytes):
    """The envelope header at the start of `data`, or None while it is incomplete;
    BadBody when the bytes cannot start an envelope."""
    if envelope is None:
        raise SidecarError("the envelope format (kmscore.envelope) is not installed", status=503, reason="kms_error")
    try:
        need = envelope.header_need(data)
        return envelope.Header.decode(data[:need]) if len(data) >= need else None
    except envelope.EnvelopeError as e:
        raise BadBody(f"malformed envelope: {e}") from None


def metadata_of_header(header) -> dict[str, str] | None:
    """A v2 header's metadata; None for version 1 (whose type travels in the hints)."""
    return header.metadata if header.version >= envelope.VERSION_METADATA else None


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
    if headerfields.get(headers, _CT, "").split(";")[0].strip().lower() != ENVELOPE_TYPE:
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

    def __init__(self, kms, key: str, frame_size: int, metadata: dict[str, str] | None = None,
                 check: Callable[[str], None] | None = None) -> None:
        if envelope is None:
            raise SidecarError("the envelope format (kmscore.envelope) is not installed", status=503, reason="kms_error")
        header, cipher = envelope.new_envelope(kms, key, frame_size, metadata=metadata or {})
        self._prefix = header.encode()
        self._enc = envelope.StreamEncryptor(cipher)
        self._key_id = peek_key(header.wrapped_dek)[0]
        self._check = check

    def __call__(self, chunk: bytes) -> bytes:
        if self._check is not None:
            self._check(self._key_id)  # a revoked key stops the stream (raises)
        out = self._enc.update(chunk) if chunk else self._enc.finalize()
        if self._prefix:
            out, self._prefix = self._prefix + out, b""
        return out


class Opener:
    """A mitmproxy stream callable: envelope bytes in, plaintext out; b"" ends it.

    Only authenticated frames come out; a bad header, a bad frame or a cut-off body
    raises BadBody (the caller answers with an error or cuts the connection)."""

    def __init__(self, kms, dkcache=None, key_id: str | None = None, *,
                 check: Callable[[str], None] | None = None) -> None:
        """`check(key_id)`: raises when the key may no longer be used (every chunk)."""
        if envelope is None:
            raise SidecarError("the envelope format (kmscore.envelope) is not installed", status=503, reason="kms_error")
        source = dkcache or kms

        def opener(header):
            # a decrypt rule opens only envelopes under its own key: the sidecar must not
            # decrypt, for whoever asks, data that belongs to another key
            if key_id is not None and peek_key(header.wrapped_dek)[0] != key_id:
                raise BadBody("the envelope was not made with this rule's key")
            return envelope.open_envelope(source, header)

        self._opener = opener
        self._dec = envelope.StreamDecryptor(opener)
        self._check = check

    def open_header(self, header) -> None:
        """Check now that this envelope opens under the rule's key (raises if not)."""
        self._opener(header)

    @property
    def header(self):
        return self._dec.header

    @property
    def metadata(self) -> dict[str, str] | None:
        """The envelope's authenticated metadata (v2), None for v1 or before the header."""
        h = self._dec.header
        return None if h is None or h.version < envelope.VERSION_METADATA else h.metadata

    def __call__(self, chunk: bytes) -> bytes:
        try:
            out = self._dec.update(chunk) if chunk else self._dec.finalize()
        except envelope.EnvelopeError as e:
            raise BadBody(f"malformed envelope: {e}") from None
        header = self._dec.header
        if header is not None and self._check is not None:
            self._check(peek_key(header.wrapped_dek)[0])  # before any plaintext leaves
        return out


def seal_all(kms, key: str, body: bytes, frame_size: int, metadata: dict[str, str] | None = None) -> bytes:
    s = Sealer(kms, key, frame_size, metadata)
    return bytes(s(body)) + bytes(s(b""))


def open_body(kms, body: bytes, dkcache=None, key_id: str | None = None) -> tuple[bytes, dict[str, str] | None]:
    """(plaintext, the envelope's metadata: a dict for v2, None for v1)."""
    if not body:
        raise BadBody("the body is empty, not an envelope")
    o = Opener(kms, dkcache, key_id)
    plain = bytes(o(body)) + bytes(o(b""))
    return plain, o.metadata


def open_all(kms, body: bytes, dkcache=None, key_id: str | None = None) -> bytes:
    return open_body(kms, body, dkcache, key_id)[0]
