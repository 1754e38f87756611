"""One exception hierarchy for fsmount.

Every class derives from `kmscore.errors.KmsError`, so the `kms` CLI prints the
message as one line and exits with the class's code; messages name the cipher
directory, mount point or file involved.
"""

from __future__ import annotations

from kmscore.errors import KmsError


class FsMountError(KmsError):
    """Base of every error fsmount raises on purpose."""

    exit_code = 10


class CipherDirError(FsMountError):
    """CIPHERDIR is missing, not a cipher directory, or its config file is damaged."""


class KeyMismatch(FsMountError):
    """CIPHERDIR was set up with another key than the one asked for."""


class MountError(FsMountError):
    """The mount could not be started or stopped (busy, not a directory, no /dev/fuse)."""


class DamagedFile(FsMountError):
    """A backing file is not a valid envelope, or a frame failed authentication."""

    exit_code = 11


__all__ = ["FsMountError", "CipherDirError", "KeyMismatch", "MountError", "DamagedFile"]
