"""Streaming encode/decode of an envelope's frames in constant memory. Sans-IO.

Both sides hold back at most one frame: the encryptor because a full frame may be the
last one (final flag), the decryptor because only the end of the stream says which frame
is last. Complete frames are sealed or opened straight from the caller's buffer into one
pre-sized output buffer (`encrypt_into` / `decrypt_into`); only the held-back tail is
copied. `update` returns bytes; `feed` is the same without the final copy (a bytearray
the caller owns), for callers that only write the result somewhere.

`seal_frames` / `open_frames` are the same frames for a caller that holds whole frames
in buffers of its own and knows which one is last (`kms encrypt-file`, which reads a
chunk ahead): frames go from the caller's buffer to the caller's buffer, no copy, no
allocation.
"""

from __future__ import annotations

from collections.abc import Callable

from kmscore.envelope.errors import EnvelopeError, FrameAuthError, Truncated
from kmscore.envelope.format import FRAME_OVERHEAD, NONCE_SIZE, Header, frame_span, header_length
from kmscore.envelope.frames import FrameCipher

Opener = Callable[[Header], FrameCipher]


def _view(data) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def seal_frames(cipher: FrameCipher, index: int, plain, out, *, last_is_final: bool) -> int:
    """Seal `plain` as frames `index`, `index+1`, ... into `out`; return the bytes written
    (`ciphertext_length` of them). Every frame is full except, with `last_is_final`, the
    last one, which is then final (0..F bytes: an empty `plain` is one empty final frame)."""
    size = cipher.frame_size
    src, dst = _view(plain), _view(out)
    length = len(src)
    count = max(1, -(-length // size)) if last_is_final else length // size
    if not last_is_final and length != count * size:
        raise ValueError(f"non-final frames hold {size} bytes: {length} is not a multiple")
    nonces = cipher._random(NONCE_SIZE * count)
    span = size + FRAME_OVERHEAD
    for i in range(count):
        piece = src[i * size : (i + 1) * size]
        at = i * span
        cipher.seal_into(index + i, piece, last_is_final and i == count - 1,
                         dst[at : at + len(piece) + FRAME_OVERHEAD], nonces[i * NONCE_SIZE : (i + 1) * NONCE_SIZE])
    return (count - 1) * span + len(src[(count - 1) * size :]) + FRAME_OVERHEAD


def open_frames(cipher: FrameCipher, index: int, frames, out) -> int:
    """Open whole, non-final frames `index`, ... from `frames` into `out`; return the
    plaintext bytes. The last frame of a stream goes through `StreamDecryptor`, which
    tells a cut stream from an altered one."""
    size = cipher.frame_size
    span = size + FRAME_OVERHEAD
    src, dst = _view(frames), _view(out)
    count, rest = divmod(len(src), span)
    if rest:
        raise ValueError(f"{len(src)} bytes are not whole frames of {span}")
    for i in range(count):
        cipher.open_into(index + i, src[i * span : (i + 1) * span], False, dst[i * size : (i + 1) * size])
    return count * size


class StreamEncryptor:
    """Plaintext in, frames out. Prepend `header.encode()` yourself (it is known up front)."""

    def __init__(self, cipher: FrameCipher) -> None:
        self._cipher = cipher
        self._size = cipher.frame_size
        self._buf = bytearray()  # held-back plaintext, at most one frame
        self._index = 0
        self._done = False

    def update(self, data) -> bytes:
        """The frames complete so far (a frame is only sealed once data past it arrives)."""
        return bytes(self.feed(data))

    def feed(self, data) -> bytearray:
        """As `update`, returning a fresh bytearray (no copy of the output)."""
        if self._done:
            raise ValueError("the stream was finalized")
        size, held = self._size, len(self._buf)
        if held + len(data) <= size:
            self._buf += data
            return bytearray()
        view = _view(data)
        fill = size - held  # complete the held frame; more data follows, so it is not final
        rest = len(view) - fill
        count = (rest - 1) // size  # whole frames in the rest that are surely not the last
        out = bytearray((1 + count) * (size + FRAME_OVERHEAD))
        nonces = self._cipher._random(NONCE_SIZE * (1 + count))
        with memoryview(out) as dst:
            self._buf += view[:fill]
            self._seal(self._buf, dst, 0, nonces, False)
            for i in range(count):
                start = fill + i * size
                self._seal(view[start : start + size], dst, 1 + i, nonces, False)
        self._buf = bytearray(view[fill + count * size :])
        return out

    def finalize(self) -> bytes:
        """The final frame (0..F bytes); after this the encryptor is spent."""
        if self._done:
            raise ValueError("the stream was finalized")
        self._done = True
        out = bytearray(len(self._buf) + FRAME_OVERHEAD)
        with memoryview(out) as dst:
            self._seal(self._buf, dst, 0, self._cipher._random(NONCE_SIZE), True)
        self._buf = bytearray()
        return bytes(out)

    def _seal(self, plain, dst: memoryview, slot: int, nonces: bytes, final: bool) -> None:
        at = slot * (self._size + FRAME_OVERHEAD)
        nonce = nonces[slot * NONCE_SIZE : (slot + 1) * NONCE_SIZE]
        self._cipher.seal_into(self._index, plain, final, dst[at : at + len(plain) + FRAME_OVERHEAD], nonce)
        self._index += 1


class StreamDecryptor:
    """Envelope bytes in, plaintext out; `finalize()` checks the stream ended properly.

    `source` is either a FrameCipher (the stream starts at frame 0, the header was read
    by the caller) or an opener `Header -> FrameCipher`, e.g. `lambda h: open_envelope(kms, h)`
    (the stream starts with the header, available as `.header` once read).
    """

    def __init__(self, source: FrameCipher | Opener, *, first_frame: int = 0) -> None:
        """`first_frame`: the index of the first frame fed (the frames before it were
        opened with `open_frames`)."""
        self.header: Header | None = None
        self._opener: Opener | None = None
        self._cipher: FrameCipher | None = None
        self._buf = bytearray()  # the header while incomplete, then at most one frame
        self._index = first_frame
        self._done = False
        if isinstance(source, FrameCipher):
            self._use(source)
        else:
            self._opener = source

    def _use(self, cipher: FrameCipher) -> None:
        self._cipher = cipher
        self._span = frame_span(cipher.frame_size)

    def update(self, data) -> bytes:
        """Plaintext of the frames that are known not to be the last one."""
        return bytes(self.feed(data))

    def feed(self, data) -> bytearray:
        """As `update`, returning a fresh bytearray (no copy of the output)."""
        if self._done:
            raise ValueError("the stream was finalized")
        if self._cipher is None:
            self._buf += data
            if not self._read_header():
                return bytearray()
            data, self._buf = self._buf, bytearray()
        span, held = self._span, len(self._buf)
        if held + len(data) <= span:
            self._buf += data
            return bytearray()
        view = _view(data)
        size = span - FRAME_OVERHEAD
        if held:  # complete the held frame; more data follows, so it is not final
            fill = span - held
            self._buf += view[:fill]
            view = view[fill:]
        rest = len(view)
        count = (rest - 1) // span
        out = bytearray((count + (1 if held else 0)) * size)
        with memoryview(out) as dst:
            slot = 0
            if held:
                self._open(self._buf, dst, 0, False)
                slot = 1
            for i in range(count):
                self._open(view[i * span : (i + 1) * span], dst, slot + i, False)
        self._buf = bytearray(view[count * span :])
        return out

    def finalize(self) -> bytes:
        """Plaintext of the final frame; Truncated if the stream stops early."""
        if self._done:
            raise ValueError("the stream was finalized")
        self._done = True
        if self._cipher is None:
            raise Truncated("the envelope ends inside its header")
        if len(self._buf) < FRAME_OVERHEAD:
            what = "before its final frame" if not self._buf else f"inside frame {self._index}"
            raise Truncated(f"the envelope is cut short: it ends {what}")
        out = bytearray(len(self._buf) - FRAME_OVERHEAD)
        try:
            with memoryview(out) as dst:
                self._open(self._buf, dst, 0, True)
        except FrameAuthError:
            # tell "cut at a frame boundary" apart from "altered": does it open as non-final?
            try:
                self._cipher.open(self._index, bytes(self._buf), False)
            except EnvelopeError:
                raise FrameAuthError(self._index, last=True) from None
            raise Truncated(
                f"the envelope is cut short: frame {self._index} is intact but not the final frame"
            ) from None
        return bytes(out)

    def _read_header(self) -> bool:
        need = header_length(self._buf)
        if need is None or len(self._buf) < need:
            return False
        self.header = Header.decode(bytes(self._buf[:need]))
        del self._buf[:need]
        self._use(self._opener(self.header))
        return True

    def _open(self, frame, dst: memoryview, slot: int, final: bool) -> None:
        size = self._span - FRAME_OVERHEAD
        at = slot * size
        self._cipher.open_into(self._index, _view(frame), final, dst[at : at + len(frame) - FRAME_OVERHEAD])
        self._index += 1
