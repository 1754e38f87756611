"""Errors of the envelope format: all InvalidCiphertext, so all KmsErrors.

Messages say what a user can do about the data; like every authentication failure
in kmscore they never say which bit was wrong.
"""

from __future__ import annotations

from kmscore.errors import InvalidCiphertext


class EnvelopeError(InvalidCiphertext):
    """The bytes are not a valid keyhold envelope."""


class BadMagic(EnvelopeError):
    def __init__(self, message: str = "not a keyhold envelope (the data does not start with KHEV)") -> None:
        super().__init__(message)


class UnsupportedVersion(EnvelopeError):
    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(f"envelope format version {version} is not supported (this keyhold reads versions 1 and 2)")


class Truncated(EnvelopeError):
    """The envelope ends early: inside the header, inside a frame, or before the final frame."""


class FrameAuthError(EnvelopeError):
    """A frame failed AES-GCM authentication under its DEK, index and header."""

    def __init__(self, index: int, last: bool = False) -> None:
        self.index = index
        why = "altered, moved, swapped or cut short" if last else "altered, moved or swapped"
        super().__init__(f"frame {index} failed authentication: the data was {why}")
