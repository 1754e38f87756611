"""`kms fs rewrap` for extended attribute values: re-wrap each sealed value's DEK.

A sealed `user.*` value (fsmount.xattrs) carries its own wrapped DEK, like a file
header; rewrap rewrites that header in place and keeps the frame (its AAD holds only
the fixed header, which does not change). Walks every directory and regular file of
the cipher directory; symlinks and special files cannot carry user.* attributes.
"""

from __future__ import annotations

import os
from pathlib import Path

from kmscore.blob import peek_key
from kmscore.envelope import rewrap as rewrap_header
from kmscore.errors import KmsError

from fsmount import xattrs


def rewrap_values(kms, cipher_dir: str | os.PathLike, key_id: str, version: int) -> tuple[int, list[tuple[str, str]]]:
    """Re-wrap every sealed value not yet under (key_id, version): (count, failures)."""
    root = Path(cipher_dir)
    done, failed = 0, []
    for top, dirs, files in os.walk(root):
        dirs.sort()
        for name in [None, *sorted(files)]:
            path = Path(top) if name is None else Path(top, name)
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                continue
            try:
                names = [n for n in os.listxattr(path, follow_symlinks=False) if n.startswith("user.")]
            except OSError:
                continue  # a backing file system without xattrs
            for attr in names:
                rel = f"{path.relative_to(root)} ({attr})"
                try:
                    stored = os.getxattr(path, attr, follow_symlinks=False)
                    header = xattrs.header_of(stored)
                    if peek_key(header.wrapped_dek) == (key_id, version):
                        continue
                    new = rewrap_header(kms, header, key_id)
                    os.setxattr(path, attr, new.encode() + stored[header.size :], os.XATTR_REPLACE, follow_symlinks=False)
                    done += 1
                except xattrs.XattrFormatError as e:
                    failed.append((rel, str(e)))
                except (KmsError, OSError) as e:
                    failed.append((rel, str(e) if isinstance(e, KmsError) else e.strerror or str(e)))
    return done, failed
