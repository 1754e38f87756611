"""Load mfusepy bound to libfuse 3 (never libfuse 2, which is ~20x slower here).

mfusepy picks libfuse 2 when both are installed unless `FUSE_LIBRARY_NAME` says
otherwise, and reads that variable once, at import: import mfusepy only through here.
"""

from __future__ import annotations

import os

from fsmount.errors import MountError

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

try:
    import mfusepy
except (OSError, AttributeError) as e:  # no libfuse at all, or an unusable one
    raise MountError(f"libfuse 3 is not usable: {e} (install the fuse3 package)") from None

if mfusepy.fuse_version_major != 3:
    raise MountError(
        f"fsmount needs libfuse 3, but mfusepy loaded libfuse {mfusepy.fuse_version_major}."
        f"{mfusepy.fuse_version_minor} (FUSE_LIBRARY_NAME={os.environ.get('FUSE_LIBRARY_NAME')})"
    )

__all__ = ["mfusepy"]
