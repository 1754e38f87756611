"""A demo upstream for the quick start: stores what it is sent and gives it back.

`python3 -m http.server` refuses PUT and POST, so the README's examples could only show
errors. This one keeps each body in memory under its path and prints what arrived, so
one terminal shows the ciphertext the application receives while curl, through the
sidecar, shows plaintext. It is a demo, not a server: in memory, bounded, 127.0.0.1.

  PUT|POST /any/path   store the body; answer with what arrived (JSON as is, anything
                       else as {"stored", "bytes", "as_received": text or base64:...})
  GET /any/path        the stored body (404 if none)
  GET /                the stored paths, as JSON
  DELETE /any/path     forget it
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

MAX_BODY = 16 * 1024 * 1024
MAX_ENTRIES = 1000
PREVIEW = 72
SHOWN_HEADERS = ("content-type", "content-digest", "signature", "signature-input", "x-keyhold-key-id")


@dataclass(frozen=True)
class Stored:
    body: bytes
    content_type: str


class BodyStore:
    """The bodies by path; the one piece of state, shared by the handler threads."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._items: dict[str, Stored] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def put(self, path: str, item: Stored) -> bool:
        with self._lock:
            if path not in self._items and len(self._items) >= self.max_entries:
                return False
            self._items[path] = item
            return True

    def get(self, path: str) -> Stored | None:
        with self._lock:
            return self._items.get(path)

    def delete(self, path: str) -> bool:
        with self._lock:
            return self._items.pop(path, None) is not None

    def paths(self) -> list[str]:
        with self._lock:
            return sorted(self._items)


def preview(body: bytes) -> str:
    """How a body looks to the application: text as text, anything else as base64."""
    try:
        text = body.decode("utf-8")
        printable = text.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in text)
    except UnicodeDecodeError:
        printable = False
    shown = text.replace("\n", "\\n") if printable else "base64:" + base64.b64encode(body).decode()
    return shown if len(shown) <= PREVIEW else shown[: PREVIEW - 3] + "..."


def preview_full(body: bytes) -> str:
    try:
        text = body.decode("utf-8")
        if text.isprintable():
            return text
    except UnicodeDecodeError:
        pass
    return "base64:" + base64.b64encode(body).decode()


def make_handler(store: BodyStore, say: Callable[[str], None]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "keyhold-demo-upstream"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
            pass  # one line per request is printed by _report instead

        def _path(self) -> str:
            return self.path.split("?", 1)[0]

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, message: str) -> None:
            self._send(status, json.dumps({"error": message}).encode())

        def _report(self, status: int, body: bytes = b"") -> None:
            headers = "".join(f"\n      {h}: {self.headers[h]}" for h in SHOWN_HEADERS[1:] if self.headers.get(h))
            size = f" {len(body)} bytes: {preview(body)}" if body else ""
            say(f"upstream got {self.command} {self._path()} -> {status}{size}{headers}")

        def _store(self) -> None:
            try:
                length = int(self.headers.get("content-length") or 0)
            except ValueError:
                length = -1
            if self.headers.get("transfer-encoding", "").lower() == "chunked" or length < 0:
                self._report(411)
                return self._error(411, "send a content-length (the demo keeps whole bodies only)")
            if length > MAX_BODY:
                self._report(413)
                return self._error(413, f"the demo keeps bodies up to {MAX_BODY} bytes")
            body = self.rfile.read(length)
            content_type = self.headers.get("content-type", "application/octet-stream")
            if not store.put(self._path(), Stored(body, content_type)):
                self._report(507, body)
                return self._error(507, f"the demo keeps at most {store.max_entries} bodies")
            self._report(200, body)
            if "json" in content_type:  # JSON back as it arrived (a proxy may decrypt fields in it)
                return self._send(200, body, content_type)
            summary = {"stored": self._path(), "bytes": len(body), "as_received": preview_full(body)}
            self._send(200, json.dumps(summary).encode() + b"\n")

        do_PUT = do_POST = do_PATCH = _store

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self._path()
            if path == "/":
                self._report(200)
                return self._send(200, json.dumps({"stored": store.paths()}).encode())
            item = store.get(path)
            if item is None:
                self._report(404)
                return self._error(404, f"nothing stored at {path}")
            self._report(200, item.body)
            self._send(200, item.body, item.content_type)

        do_HEAD = do_GET

        def do_DELETE(self) -> None:  # noqa: N802
            found = store.delete(self._path())
            self._report(204 if found else 404)
            self._send(204 if found else 404, b"")

    return Handler


def serve(host: str, port: int, say: Callable[[str], None] = print) -> ThreadingHTTPServer:
    """A started-but-not-serving server (call serve_forever); port 0 picks a free port."""
    server = ThreadingHTTPServer((host, port), make_handler(BodyStore(), say))
    server.daemon_threads = True
    return server
