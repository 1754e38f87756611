"""What every sub-command shares: the opened Kms, output helpers, input helpers."""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import errno
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

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
            print(printable(text, lines=True))
        else:
            width = max((len(k) for k in data), default=0)
            for k, v in data.items():
                print(printable(f"{k:<{width}}  {'' if v is None else v}"))

    def write_binary(self, data: bytes, field: str, extra: dict[str, Any] | None = None, mode: int = 0o600) -> None:
        """Binary output: to --out as raw bytes (a new file is 0600 unless `mode` says the
        data is public); to a terminal (or with --base64) as base64."""
        self.settle()
        out = getattr(self.args, "out", None)
        if getattr(self.args, "json", False):
            self.emit({**(extra or {}), field: base64.b64encode(data).decode()})
            if out:
                write_file(out, data, mode)
            return
        if out and out != "-":
            write_file(out, data, mode)
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


PRIVATE = 0o600  # plaintext, data keys, random bytes, tokens: every file a command writes
PUBLIC = 0o644  # ciphertexts and public keys, which others may read


def write_file(path: str, data: bytes, mode: int = PRIVATE) -> None:
    """Write `data` to `path` atomically; private (0600) unless said otherwise."""
    with atomic_output(path, mode) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_output(path: str, mode: int = PRIVATE) -> Iterator[BinaryIO]:
    """A file that appears under `path`, complete, only if the block completes.

    It is written as an unnamed file (O_TMPFILE) in the target's folder and linked in
    at the end, so a process killed half-way (SIGKILL, power loss) leaves nothing
    behind, not even a hidden temporary file of partial plaintext. Only where the file
    system lacks O_TMPFILE is a named temporary used (removed on every error)."""
    target = Path(path)
    if target.is_dir():
        raise InvalidRequest(f"cannot write {path}: it is a directory")
    folder = str(target.parent)
    named: Path | None = None
    try:
        try:
            fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, mode)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            named = target.with_name(f".{target.name}.kms-tmp-{os.getpid()}-{os.urandom(4).hex()}")
            fd = os.open(named, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        raise InvalidRequest(f"cannot write {path}: {e.strerror}") from None
    f = os.fdopen(fd, "wb")
    try:
        with f:
            yield f
            f.flush()
            if named is None:
                _link_in(fd, target)
        if named is not None:
            os.replace(named, target)
    except OSError as e:
        raise InvalidRequest(f"cannot write {path}: {e.strerror}") from None
    finally:
        if named is not None:
            named.unlink(missing_ok=True)


def _link_in(fd: int, target: Path) -> None:
    """Give the unnamed file `fd` the name `target` (replacing an existing file).

    linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N; os.link only uses linkat (rather
    than link(2), which would not follow the magic link) when given a directory fd."""
    source = f"/proc/self/fd/{fd}"
    folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            os.link(source, target.name, dst_dir_fd=folder, follow_symlinks=True)
            return
        except FileExistsError:
            pass
        # a complete file under a hidden name for the instant between link and rename
        tmp = f".{target.name}.kms-new-{os.getpid()}-{os.urandom(4).hex()}"
        os.link(source, tmp, dst_dir_fd=folder, follow_symlinks=True)
        try:
            os.replace(tmp, target.name, src_dir_fd=folder, dst_dir_fd=folder)
        except OSError:
            os.unlink(tmp, dir_fd=folder)
            raise
    finally:
        os.close(folder)


def parse_context(pairs: list[str] | None) -> dict[str, str] | None:
    """`--context k=v` repeated, into an encryption context."""
    if not pairs:
        return None
    context: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"encryption context entries are KEY=VALUE, got {ascii(pair)}")
        try:
            pair.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(f"encryption context entry {ascii(pair)} is not valid UTF-8") from None
        if key in context:  # silently keeping one of them would bind the wrong context
            raise InvalidRequest(f"encryption context key {ascii(key)} is given twice: give each key once")
        context[key] = value
    return context


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str, *, lines: bool = False) -> str:
    """`text` safe for a terminal: control characters, bidi overrides and undecodable
    bytes shown as escapes (\\x1b), never interpreted (a description from an older store
    may hold terminal escapes)."""
    if lines:  # a multi-line report: keep its line breaks, escape the rest
        return "\n".join(printable(line) for line in text.split("\n"))
    return _UNPRINTABLE.sub(lambda m: ascii(m.group())[1:-1], text)
