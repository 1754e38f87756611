"""Progress for long work, on a terminal only (rich): a 1 GiB `encrypt-file` should not
be silent for seconds, and a pipe or a log file must never get bar characters.

`track(chunks, total, description)` passes byte chunks through unchanged and advances a
bar by their length. It shows nothing when stderr is not a terminal, when the user asked
for `-q`, or when the work is small (below MIN_BYTES).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import BinaryIO

MIN_BYTES = 4 * 1024 * 1024


def wanted(total: int | None, *, quiet: bool = False) -> bool:
    return not quiet and bool(total) and total >= MIN_BYTES and sys.stderr.isatty()


def size_of(f: BinaryIO) -> int | None:
    """The size of a regular file behind `f`; None for pipes and terminals."""
    try:
        st = os.fstat(f.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    import stat

    return st.st_size if stat.S_ISREG(st.st_mode) else None


def track(chunks: Iterable[bytes], total: int | None, description: str, *, quiet: bool = False) -> Iterator[bytes]:
    if not wanted(total, quiet=quiet):
        yield from chunks
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        for chunk in chunks:
            yield chunk
            bar.advance(task, len(chunk))
