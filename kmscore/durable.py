"""Names that survive a power loss: the fsync of a folder after a link or a rename.

Data fsynced under a new name is not enough on its own: until the folder holding the
name is fsynced too, a crash can lose the name (or, on ext4 with delayed allocation,
keep an empty file under it). The CLI's outputs, the anchor file and a new store all
end with this call."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def folder_fd(folder: str | os.PathLike[str]) -> Iterator[int]:
    """A read-only fd of `folder`, for *at calls and the fsync that follows them."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def sync_folder(folder: str | os.PathLike[str]) -> None:
    """fsync a directory, so that a name just linked or renamed into it is on the disk."""
    with folder_fd(folder) as fd:
        os.fsync(fd)
