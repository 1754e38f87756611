"""Progress for long work, on a terminal only (rich): a 1 GiB `encrypt-file` should not
be silent for seconds, and a pipe or a log file must never get bar characters.

`track(chunks, total, description)` passes byte chunks through unchanged and advances a
bar by their length. It shows nothing when stderr is not a terminal, when the user asked
for `-q`, or when the work is small (below MIN_BYTES).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, TypeVar

T = TypeVar("T")

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


def track(chunks: Iterable[T], total: int | None, description: str, *, quiet: bool = False,
          measure: Callable[[T], int] = len) -> Iterator[T]:  # type: ignore[assignment]
    """Pass `chunks` through; advance a bar by `measure(chunk)` (bytes) on a terminal."""
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
            bar.advance(task, measure(chunk))


class CountBar:
    """`show(done, total)` callbacks (e.g. files of a tree) drawn as a rich bar; the bar
    starts on the first call and ends when done == total."""

    def __init__(self, label: str, unit: str = "files") -> None:
        self.label, self.unit = label, unit
        self._progress = None
        self._task = None

    def __call__(self, done: int, total: int) -> None:
        if self._progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn(self.unit), TimeRemainingColumn(), console=Console(stderr=True))
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=total)
        self._progress.update(self._task, completed=done, total=total)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def count_bar(label: str, *, quiet: bool = False, unit: str = "files") -> CountBar | None:
    """A CountBar on a terminal; None on a pipe or with -q (the caller then shows nothing)."""
    return CountBar(label, unit) if not quiet and sys.stderr.isatty() else None
