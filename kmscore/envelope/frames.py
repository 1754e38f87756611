"""FrameCipher: seal and open single frames of one envelope (random access).

AAD of frame i = bound header || u64 i || u8 final. The bound header (the fixed 28 bytes;
in version 2 also the metadata) binds the message id, the frame size, the flags and the
metadata, so a frame moved to another index,
another envelope or past the end fails authentication.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kmscore.envelope.errors import FrameAuthError, Truncated
from kmscore.errors import KeyUnavailable
from kmscore.envelope.format import FRAME_OVERHEAD, NONCE_SIZE, Header

_INDEX = struct.Struct(">QB")
DEK_SIZE = 32
DEK_NONCE_LIMIT = 2**32  # NIST SP 800-38D: random 96-bit nonces, at most 2^32 seals per key (kmscore.nonces)


class FrameCipher:
    """The DEK of one envelope, ready to seal/open its frames. Never shows the DEK."""

    __slots__ = ("_aead", "_fixed", "frame_size", "_random", "_sealed", "_limit")

    def __init__(self, dek: bytes, header: Header, random: Callable[[int], bytes] = os.urandom) -> None:
        if len(dek) != DEK_SIZE:
            raise ValueError(f"an envelope DEK is {DEK_SIZE} bytes, not {len(dek)}")
        self._aead = AESGCM(bytes(dek))
        self._fixed = header.bound
        self.frame_size = header.frame_size
        self._random = random  # seam for test vectors
        self._sealed = 0  # frames sealed under this DEK with random nonces
        self._limit = DEK_NONCE_LIMIT

    def __repr__(self) -> str:
        return f"<FrameCipher frame_size={self.frame_size}>"

    def __reduce__(self):
        raise TypeError("a FrameCipher holds a data key and cannot be pickled")

    def aad(self, index: int, final: bool) -> bytes:
        return self._fixed + _INDEX.pack(index, 1 if final else 0)

    def seal(self, index: int, plaintext: bytes, final: bool) -> bytes:
        """nonce || ciphertext || tag of frame `index`; non-final frames must be full."""
        self._check_length(len(plaintext), final)
        self._spend()
        nonce = self._random(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, self.aad(index, final))

    def seal_into(self, index: int, plaintext, final: bool, out: memoryview, nonce: bytes) -> None:
        """Seal into `out` (exactly len(plaintext)+28 bytes) without extra copies."""
        self._check_length(len(plaintext), final)
        self._spend()
        out[:NONCE_SIZE] = nonce
        self._aead.encrypt_into(nonce, plaintext, self.aad(index, final), out[NONCE_SIZE:])

    def open(self, index: int, frame: bytes, final: bool) -> bytes:
        """The plaintext of frame `index`; FrameAuthError if it is not that frame, intact."""
        if len(frame) < FRAME_OVERHEAD:
            raise Truncated(f"frame {index} is cut short ({len(frame)} bytes)")
        view = memoryview(frame)
        try:
            return self._aead.decrypt(view[:NONCE_SIZE], view[NONCE_SIZE:], self.aad(index, final))
        except InvalidTag:
            raise FrameAuthError(index) from None

    def open_into(self, index: int, frame: memoryview, final: bool, out: memoryview) -> None:
        """Open into `out` (exactly len(frame)-28 bytes)."""
        try:
            self._aead.decrypt_into(frame[:NONCE_SIZE], frame[NONCE_SIZE:], self.aad(index, final), out)
        except InvalidTag:
            raise FrameAuthError(index) from None

    def _spend(self) -> None:
        """Count one random nonce; refuse before the NIST bound (a rewritten file re-seals
        frames under the same DEK: re-encrypt it under a new DEK instead)."""
        self._sealed += 1
        if self._sealed > self._limit:
            raise KeyUnavailable(
                f"this data key has sealed {self._limit} frames with random nonces, the limit "
                "for one AES-GCM key (NIST SP 800-38D): the data must be re-encrypted under a new data key"
            )

    def _check_length(self, length: int, final: bool) -> None:
        if length > self.frame_size or (not final and length != self.frame_size):
            raise ValueError(
                f"a {'final' if final else 'non-final'} frame holds "
                f"{'0..' if final else ''}{self.frame_size} bytes, not {length}"
            )
