"""Extended attribute values, sealed: the sans-IO codec of one stored value.

A `user.*` attribute of a mount file is the backing file's attribute of the same name
(names stay plain, as file names do in this version); its value is a one-frame keyhold
envelope of its own (docs/formats/fsmount.md, "Extended attributes"):

    header (magic, frame size, message id, wrapped DEK) || frame 0, final

with the frame's plaintext `name || 0x00 || value`. A fresh DEK per value, wrapped
under the mount's CMK, so values are as private as file contents; the name inside the
sealed frame makes a value copied to another attribute name fail (EIO), as a frame
moved to another file does. What is not bound: which file the value belongs to.
"""

from __future__ import annotations

from kmscore.envelope import EnvelopeError, FrameAuthError, FrameCipher, Header

FRAME_SIZE = 128 * 1024  # one frame holds any value: XATTR_SIZE_MAX (64 KiB) + a name
XATTR_SIZE_MAX = 65536  # the kernel's limit of one attribute value (also of what we store)


class XattrFormatError(ValueError):
    """A stored value is not a sealed value of this attribute (tampered, moved, cut)."""


def plaintext(name: str, value: bytes) -> bytes:
    return name.encode("utf-8", "surrogateescape") + b"\0" + value


def seal(header: Header, cipher: FrameCipher, name: str, value: bytes) -> bytes:
    """The stored form of `value` of attribute `name`, sealed with a fresh envelope."""
    return header.encode() + cipher.seal(0, plaintext(name, value), True)


def header_of(stored: bytes) -> Header:
    try:
        header = Header.decode(stored)
    except EnvelopeError as e:
        raise XattrFormatError(f"not a sealed value: {e}") from None
    if header.frame_size != FRAME_SIZE:
        raise XattrFormatError(f"not a sealed value (frame size {header.frame_size})")
    return header


def open_value(header: Header, cipher: FrameCipher, name: str, stored: bytes) -> bytes:
    """The value in `stored` (whose header is `header`); XattrFormatError unless it is
    an intact value sealed for attribute `name`."""
    try:
        plain = cipher.open(0, stored[header.size :], True)
    except (FrameAuthError, EnvelopeError):
        raise XattrFormatError("the value failed authentication") from None
    prefix = name.encode("utf-8", "surrogateescape") + b"\0"
    if not plain.startswith(prefix):
        raise XattrFormatError("the value was sealed for another attribute name")
    return plain[len(prefix) :]
