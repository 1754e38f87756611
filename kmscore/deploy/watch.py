"""Notice edits to the config file, including editors' atomic saves.

Editors write a temporary file and rename it over the original (vim, sed -i, k8s
ConfigMap symlink swaps), which replaces the inode: watching the file itself would go
deaf after the first save. So the *folder* is watched and every event there only
raises a flag; the main loop compares the file's bytes and reloads when they changed.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer


class ConfigWatcher(FileSystemEventHandler):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(os.path.abspath(path))  # not resolved: a symlink may be swapped under it
        self.changed = threading.Event()
        self._observer = Observer()
        self._last = self.read()

    def read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except OSError:
            return None

    def start(self) -> None:
        self._observer.schedule(self, str(self.path.parent), recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join(timeout=5)

    def on_any_event(self, event: FileSystemEvent) -> None:
        names = {Path(str(p)).name for p in (event.src_path, getattr(event, "dest_path", "")) if p}
        if self.path.name in names or any(n.startswith("..") for n in names):  # `..data`: a ConfigMap swap
            self.changed.set()

    def take_change(self) -> bool:
        """True once per real content change since the last call (touches are ignored)."""
        if not self.changed.is_set():
            return False
        while self.changed.is_set():  # let a burst of events (truncate, write, rename) settle
            self.changed.clear()
            self.changed.wait(0.2)
        self.changed.clear()
        now = self.read()
        if now is None or now == self._last:
            return False
        self._last = now
        return True

    def mark_read(self) -> None:
        """The file was just loaded (e.g. on SIGHUP): remember these bytes."""
        self._last = self.read()
