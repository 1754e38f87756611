"""Streaming encode/decode of an envelope's frames in constant memory. Sans-IO.

Both sides hold back at most one frame: the encryptor because a full frame may be the
last one (final flag), the decryptor because only the end of the stream says which frame
is last. Each `update` seals or opens all complete frames in one pre-sized buffer
(`encrypt_into` / `decrypt_into`), so a call costs one copy of its input at most.
"""

from __future__ import annotations

from collections.abc import Callable

from kmscore.envelope.errors import EnvelopeError, FrameAuthError, Truncated
from kmscore.envelope.format import FRAME_OVERHEAD, NONCE_SIZE, Header, frame_span, header_length
from kmscore.envelope.frames import FrameCipher

Opener = Callable[[Header], FrameCipher]


class StreamEncryptor:
    """Plaintext in, frames out. Prepend `header.encode()` yourself (it is known up front)."""

    def __init__(self, cipher: FrameCipher) -> None:
        self._cipher = cipher
        self._size = cipher.frame_size
        self._buf = bytearray()
        self._index = 0
        self._done = False

    def update(self, data: bytes) -> bytes:
        """The frames complete so far (a frame is only sealed once data past it arrives)."""
        if self._done:
            raise ValueError("the stream was finalized")
        self._buf += data
        count = (len(self._buf) - 1) // self._size if self._buf else 0
        return self._seal(count, final=False)

    def finalize(self) -> bytes:
        """The final frame (0..F bytes); after this the encryptor is spent."""
        if self._done:
            raise ValueError("the stream was finalized")
        self._done = True
        return self._seal(1, final=True)

    def _seal(self, count: int, final: bool) -> bytes:
        if count == 0:
            return b""
        size, cipher = self._size, self._cipher
        taken = len(self._buf) if final else count * size
        out = bytearray(taken + count * FRAME_OVERHEAD)
        nonces = cipher._random(NONCE_SIZE * count)
        with memoryview(self._buf) as src, memoryview(out) as dst:
            for i in range(count):
                with src[i * size : min((i + 1) * size, taken)] as chunk:
                    at = i * (size + FRAME_OVERHEAD)
                    cipher.seal_into(
                        self._index, chunk, final, dst[at : at + len(chunk) + FRAME_OVERHEAD],
                        nonces[i * NONCE_SIZE : (i + 1) * NONCE_SIZE],
                    )
                self._index += 1
        del self._buf[:taken]
        return bytes(out) if len(out) < 1 << 16 else out  # big outputs skip a copy


class StreamDecryptor:
    """Envelope bytes in, plaintext out; `finalize()` checks the stream ended properly.

    `source` is either a FrameCipher (the stream starts at frame 0, the header was read
    by the caller) or an opener `Header -> FrameCipher`, e.g. `lambda h: open_envelope(kms, h)`
    (the stream starts with the header, available as `.header` once read).
    """

    def __init__(self, source: FrameCipher | Opener) -> None:
        self.header: Header | None = None
        self._opener: Opener | None = None
        self._cipher: FrameCipher | None = None
        if isinstance(source, FrameCipher):
            self._use(source)
        else:
            self._opener = source
        self._buf = bytearray()
        self._index = 0
        self._done = False

    def _use(self, cipher: FrameCipher) -> None:
        self._cipher = cipher
        self._span = frame_span(cipher.frame_size)

    def update(self, data: bytes) -> bytes:
        """Plaintext of the frames that are known not to be the last one."""
        if self._done:
            raise ValueError("the stream was finalized")
        self._buf += data
        if self._cipher is None and not self._read_header():
            return b""
        count = (len(self._buf) - 1) // self._span if self._buf else 0
        return self._open(count, final=False)

    def finalize(self) -> bytes:
        """Plaintext of the final frame; Truncated if the stream stops early."""
        if self._done:
            raise ValueError("the stream was finalized")
        self._done = True
        if self._cipher is None and not self._read_header():
            raise Truncated("the envelope ends inside its header")
        if len(self._buf) < FRAME_OVERHEAD:
            what = "before its final frame" if not self._buf else f"inside frame {self._index}"
            raise Truncated(f"the envelope is cut short: it ends {what}")
        try:
            return self._open(1, final=True)
        except FrameAuthError:
            # tell "cut at a frame boundary" apart from "altered": does it open as non-final?
            try:
                self._cipher.open(self._index, bytes(self._buf), False)
            except EnvelopeError:
                raise FrameAuthError(self._index, last=True) from None
            raise Truncated(
                f"the envelope is cut short: frame {self._index} is intact but not the final frame"
            ) from None

    def _read_header(self) -> bool:
        need = header_length(self._buf)
        if need is None or len(self._buf) < need:
            return False
        self.header = Header.decode(bytes(self._buf[:need]))
        del self._buf[:need]
        self._use(self._opener(self.header))
        return True

    def _open(self, count: int, final: bool) -> bytes:
        if count == 0:
            return b""
        span, cipher = self._span, self._cipher
        taken = len(self._buf) if final else count * span
        out = bytearray(taken - count * FRAME_OVERHEAD)
        size = span - FRAME_OVERHEAD
        with memoryview(self._buf) as src, memoryview(out) as dst:
            for i in range(count):
                with src[i * span : min((i + 1) * span, taken)] as frame:
                    cipher.open_into(self._index, frame, final, dst[i * size : i * size + len(frame) - FRAME_OVERHEAD])
                self._index += 1
        del self._buf[:taken]
        return bytes(out) if len(out) < 1 << 16 else out
