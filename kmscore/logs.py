"""One log format for every keyhold process: `kms`, `kms up`, `kms-mount`, `kms-proxy`.

    2026-12-01T21:35:43.120Z INFO keyhold.up: running example.toml
    {"ts": "2026-12-01T21:35:43.120Z", "level": "INFO", "logger": "keyhold.up", "msg": "running example.toml"}

Text for people, JSON lines for log shippers (`--log-format json`). A record whose
message is a dict or one JSON object (an access-log entry) is merged into the JSON
object, and printed as `key=value` pairs in text, so no line ever holds JSON inside text. The choice travels
to child processes (the mounts under `kms up`) through `$KMS_LOG_FORMAT` and
`$KMS_LOG_LEVEL`, so a whole deployment logs one way.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import IO, Any

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
FORMAT_ENV = "KMS_LOG_FORMAT"
LEVEL_ENV = "KMS_LOG_LEVEL"
ROOT = "keyhold"
_HANDLER_MARK = "_keyhold_handler"


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def structured(record: logging.LogRecord) -> dict[str, Any] | None:
    """The fields of a structured record: a dict message, or a message that is one JSON
    object (the sidecar's access log writes those)."""
    msg = record.msg
    if isinstance(msg, dict):
        return msg
    if isinstance(msg, str) and not record.args and msg.startswith("{") and msg.endswith("}"):
        try:
            value = json.loads(msg)
        except ValueError:
            return None
        if not isinstance(value, dict):
            return None
        if isinstance(value.get("ts"), (int, float)):  # one timestamp style: the record's own
            value.pop("ts")
        return value
    return None


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = structured(record)
    return dict(fields) if fields is not None else {"msg": record.getMessage()}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = structured(record)
        if fields is not None:
            body = " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        else:
            body = record.getMessage()
        line = f"{_timestamp(record.created)} {record.levelname} {record.name}: {body}"
        if record.exc_info:  # only for bugs; never key material (messages are scrubbed upstream)
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": _timestamp(record.created), "level": record.levelname, "logger": record.name}
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


def formatter(fmt: str) -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return JsonFormatter() if fmt == "json" else TextFormatter()


def setup_logging(
    level: str | None = None,
    fmt: str | None = None,
    stream: IO[str] | None = None,
    *,
    export: bool = True,
) -> logging.Handler:
    """Send every `keyhold.*` logger to `stream` (stderr) in one format; idempotent.

    `level`/`fmt` default to `$KMS_LOG_LEVEL`/`$KMS_LOG_FORMAT`, else info/text. With
    `export`, the choice is put into the environment for child processes.
    """
    level = (level or os.environ.get(LEVEL_ENV) or "info").lower()
    fmt = (fmt or os.environ.get(FORMAT_ENV) or "text").lower()
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    logger = logging.getLogger(ROOT)
    for old in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    setattr(handler, _HANDLER_MARK, True)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    # Libraries' warnings (watchdog, libfuse bindings, ...) in the same format, not in
    # logging's bare last-resort one; keyhold's own records are handled above.
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    others = logging.StreamHandler(stream or sys.stderr)
    others.setFormatter(formatter(fmt))
    others.addFilter(lambda record: not record.name.startswith(ROOT))
    others.setLevel(logging.WARNING)
    setattr(others, _HANDLER_MARK, True)
    root.addHandler(others)
    if export:
        os.environ[FORMAT_ENV] = fmt
        os.environ[LEVEL_ENV] = level
    return handler


def file_handler(path: str, fmt: str | None = None) -> logging.Handler:
    """A handler for a log file (mode 0600: log lines may name keys and paths)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    handler = logging.StreamHandler(os.fdopen(fd, "a", buffering=1, encoding="utf-8"))
    handler.setFormatter(formatter((fmt or os.environ.get(FORMAT_ENV) or "text").lower()))
    return handler
