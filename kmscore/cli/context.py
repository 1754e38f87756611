"""What every sub-command shares: the opened Kms, output helpers, input helpers."""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
from pathlib import Path
from typing import Any

from kmscore.errors import InvalidRequest
from kmscore.facade import Kms
from kmscore.rootkey import RootKeySource

_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \r\n\t")


class CliContext:
    """Opens the Kms lazily (so `--help` never creates a store) and says what it created."""

    def __init__(self) -> None:
        self.args: argparse.Namespace | None = None
        self._kms: Kms | None = None

    @property
    def kms(self) -> Kms:
        if self._kms is None:
            args = self.args
            source = RootKeySource("file", args.root_key_file) if getattr(args, "root_key_file", None) else None
            self._kms = Kms(getattr(args, "home", None), root_key=source, caller=f"cli:{args.command}",
                            integrity=getattr(args, "integrity", "strict"))  # "report": verify commands
            for notice in self._kms.notices:
                self.info(notice)
        return self._kms

    def close(self) -> None:
        if self._kms is not None:
            self._kms.close()

    # -- output ------------------------------------------------------------------------
    def info(self, message: str) -> None:
        print(f"kms: {message}", file=sys.stderr)

    def settle(self) -> None:
        """Nothing is printed before the operation's audit record is in the store: a
        store that fails (corrupt page, full disk) fails the command before any output."""
        if self._kms is not None:
            self._kms.flush_audit()

    def emit(self, data: dict[str, Any], text: str | None = None) -> None:
        """Print a report: JSON with --json, else `text` (or key: value lines)."""
        self.settle()
        if getattr(self.args, "json", False):
            print(json.dumps(data, indent=2, default=str))
        elif text is not None:
            print(text)
        else:
            width = max((len(k) for k in data), default=0)
            for k, v in data.items():
                print(f"{k:<{width}}  {'' if v is None else v}")

    def write_binary(self, data: bytes, field: str, extra: dict[str, Any] | None = None) -> None:
        """Binary output: to --out as raw bytes; to a terminal (or with --base64) as base64."""
        self.settle()
        out = getattr(self.args, "out", None)
        if getattr(self.args, "json", False):
            self.emit({**(extra or {}), field: base64.b64encode(data).decode()})
            if out:
                write_file(out, data)
            return
        if out and out != "-":
            write_file(out, data)
            return
        if getattr(self.args, "base64", False) or sys.stdout.isatty():
            print(base64.b64encode(data).decode())
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

    # -- input -------------------------------------------------------------------------
    def read_input(self, *, binary_blob: bool = False) -> bytes:
        """Data from --in FILE (or '-') or stdin. Blobs may arrive as base64 text."""
        path = getattr(self.args, "in_", None)
        if path and path != "-":
            data = read_file(path)
        else:
            if sys.stdin.isatty():
                self.info("reading data from standard input (end with Ctrl-D)")
            data = sys.stdin.buffer.read()
        return maybe_base64(data) if binary_blob else data


def maybe_base64(data: bytes) -> bytes:
    """Decode base64 text; leave anything that is not base64 text as it is."""
    stripped = data.strip()
    if stripped and set(stripped) <= _B64:
        try:
            return base64.b64decode(stripped + b"=" * (-len(stripped) % 4), altchars=b"-_" if b"-" in stripped or b"_" in stripped else None, validate=False)
        except (binascii.Error, ValueError):
            pass
    return data


def read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InvalidRequest(f"cannot read {path}: {e.strerror}") from None


def write_file(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write atomically: a temporary file renamed over the target."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.kms-tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InvalidRequest(f"cannot write {path}: {e.strerror}") from None


def parse_context(pairs: list[str] | None) -> dict[str, str] | None:
    """`--context k=v` repeated, into an encryption context."""
    if not pairs:
        return None
    context = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"encryption context entries are KEY=VALUE, got {pair!r}")
        context[key] = value
    return context
