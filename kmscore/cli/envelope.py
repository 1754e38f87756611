"""File commands on the envelope format: encrypt-file, decrypt-file, envelope-info, rewrap-file.

Files of any size stream through `kmscore.envelope` in constant memory. Outputs are
written to a temporary file beside OUT and renamed only on success, so a bad input
never leaves partial plaintext (or a half envelope) under OUT's name.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from kmscore import envelope
from kmscore.blob import peek_key
from kmscore.cli import filepipe
from kmscore.cli.context import CliContext, atomic_output
from kmscore.progress import size_of, track
from kmscore.cli.main import common
from kmscore.errors import InvalidRequest, KmsError

CHUNK = 1024 * 1024
"""Bytes per read and per write (whole frames): large enough for the system calls not to
matter, small enough that the buffers of `filepipe` stay a few MiB."""


def register(sub: argparse._SubParsersAction, ctx: CliContext) -> None:
    p = common(sub.add_parser("encrypt-file", help="encrypt a file (any size) as an envelope under KEY"))
    p.add_argument("key", metavar="KEY")
    p.add_argument("input", metavar="IN", help="plaintext file, or - for stdin")
    p.add_argument("output", metavar="OUT", help="envelope file to write, or - for stdout")
    p.add_argument("--frame-size", type=_frame_size, default=envelope.DEFAULT_FRAME_SIZE,
                   help=f"plaintext bytes per frame (default {envelope.DEFAULT_FRAME_SIZE})")
    p.set_defaults(run=run_encrypt)

    p = common(sub.add_parser("decrypt-file", help="decrypt an envelope file (its header names the key)"))
    p.add_argument("input", metavar="IN", help="envelope file, or - for stdin")
    p.add_argument("output", metavar="OUT", help="plaintext file to write (it appears only once every frame "
                   "checked out), or - for stdout (frames are written as they are verified; "
                   "a bad frame stops the output with an error)")
    p.add_argument("--key", help="refuse envelopes not wrapped under this key")
    p.set_defaults(run=run_decrypt)

    p = common(sub.add_parser("envelope-info", help="show an envelope's header and sizes without decrypting"))
    p.add_argument("file", metavar="FILE")
    p.set_defaults(run=run_info)

    p = common(sub.add_parser("rewrap-file", help="re-wrap an envelope's data key (newest CMK version, or --to-key)"))
    p.add_argument("file", metavar="FILE")
    p.add_argument("--to-key", metavar="KEY", help="wrap under this key instead of the current one")
    p.set_defaults(run=run_rewrap)


def _frame_size(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not envelope.MIN_FRAME <= value <= envelope.MAX_FRAME:
        raise argparse.ArgumentTypeError(f"frame size must be {envelope.MIN_FRAME}..{envelope.MAX_FRAME} bytes")
    return value


# -- I/O helpers ----------------------------------------------------------------------------
@contextlib.contextmanager
def _reader(path: str) -> Iterator[BinaryIO]:
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InvalidRequest(f"cannot read {path}: {e.strerror}") from None
    with f:
        yield f


@contextlib.contextmanager
def _writer(path: str, mode: int = 0o600) -> Iterator[BinaryIO]:
    """A file that appears under `path` only if the block completes (`atomic_output`:
    a killed process leaves no partial plaintext behind)."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with atomic_output(path, mode) as f:
        yield f


def _read_header(f: BinaryIO) -> tuple[envelope.Header, bytes]:
    """The header at the start of `f`, and any bytes read past it."""
    buf = bytearray()
    while True:
        need = envelope.header_length(buf)
        if need is not None and len(buf) >= need:
            return envelope.Header.decode(bytes(buf[:need])), bytes(buf[need:])
        more = f.read(envelope.header_need(buf) - len(buf))
        if not more:
            if not buf:
                raise envelope.Truncated("the input is empty, not an envelope")
            raise envelope.Truncated("the input ends inside its envelope header")
        buf += more


def _name(path: str) -> str:
    return "standard input" if path == "-" else path


# -- commands ---------------------------------------------------------------------------------
def _frames_per_chunk(frame_size: int) -> int:
    return max(1, CHUNK // frame_size)


def run_encrypt(args: argparse.Namespace, ctx: CliContext) -> int:
    header, cipher = envelope.new_envelope(ctx.kms, args.key, args.frame_size)
    per_chunk = _frames_per_chunk(header.frame_size)
    length, index = 0, 0
    with _reader(args.input) as src, _writer(args.output) as dst, \
            filepipe.read_ahead(src, per_chunk * header.frame_size) as chunks, \
            filepipe.write_behind(dst, per_chunk * envelope.frame_span(header.frame_size)) as out:
        # buffered, not O_DIRECT as decrypt's output: measured quiet, 1 GiB, O_DIRECT made
        # encrypt slower (1.58x cp against 1.11x; its writes, shifted by the header, do
        # not hit the slow page-cache path decrypt's aligned ones do: docs/BENCHMARKS.md)
        out.write_bytes(header.encode())
        held = None  # sealed once the next chunk (or the end) says whether its last frame is final
        for chunk in track(chunks, size_of(src), f"encrypting {os.path.basename(_name(args.input))}",
                           quiet=ctx.quiet):
            length += chunk.n
            if held is not None:
                index = _seal(cipher, index, held, out, last_is_final=False)
                chunks.release(held)
            held = chunk
        if held is None:
            _seal(cipher, 0, None, out, last_is_final=True)  # an empty input: one empty final frame
        else:
            _seal(cipher, index, held, out, last_is_final=True)
    key_id, version = peek_key(header.wrapped_dek)
    if args.output != "-":  # with OUT on stdout, nothing else may be printed there
        ctx.emit({"output": args.output, "key_id": key_id, "key_version": version, "plaintext_bytes": length,
                  "envelope_bytes": header.size + envelope.ciphertext_length(length, header.frame_size)},
                 None if args.json else f"encrypted {length} bytes of {_name(args.input)} into {args.output} under key {key_id}")
    return 0


def _seal(cipher: envelope.FrameCipher, index: int, chunk, out: filepipe.WriteBehind | filepipe.DirectWriteBehind, *, last_is_final: bool) -> int:
    """Seal a chunk's frames into a free output buffer and hand it to the writer; the
    index of the next frame."""
    plain = chunk.view if chunk is not None else b""
    buf = out.buffer()
    n = envelope.seal_frames(cipher, index, plain, buf, last_is_final=last_is_final)
    out.write(buf, n)
    return index + max(1, -(-len(plain) // cipher.frame_size))


def run_decrypt(args: argparse.Namespace, ctx: CliContext) -> int:
    name = _name(args.input)
    length = 0
    with _reader(args.input) as src:
        try:
            header, rest = _read_header(src)
        except KmsError as e:
            raise _prefixed(e, name) from None
        key_id = peek_key(header.wrapped_dek)[0]
        if args.key is not None and ctx.kms.describe_key(args.key).key_id != key_id:
            raise InvalidRequest(f"{name} is wrapped under key {key_id}, not {args.key}")
        cipher = envelope.open_envelope(ctx.kms, header)
        per_chunk = _frames_per_chunk(header.frame_size)
        span = envelope.frame_span(header.frame_size)
        body = _Prefixed(rest, src) if rest else src
        with _writer(args.output) as dst, filepipe.read_ahead(body, per_chunk * span) as chunks, \
                filepipe.write_behind(dst, per_chunk * header.frame_size, direct=args.output != "-") as out:
            index, held = 0, None
            try:
                for chunk in track(chunks, size_of(src), f"decrypting {os.path.basename(name)}", quiet=ctx.quiet):
                    if held is not None:  # whole frames, and more follow: none of them is the last
                        buf = out.buffer()
                        n = envelope.open_frames(cipher, index, held.view, buf)
                        index += per_chunk
                        length += n
                        out.write(buf, n)
                        chunks.release(held)
                    held = chunk
                # the last chunk: the decryptor tells a stream cut at a frame boundary from an altered one
                last = envelope.StreamDecryptor(cipher, first_frame=index)
                data = last.feed(held.view if held is not None else b"")
                data += last.finalize()
            except envelope.EnvelopeError as e:
                raise _prefixed(e, name) from None
            length += len(data)
            out.write_bytes(data)
    if args.output != "-":
        ctx.emit({"output": args.output, "key_id": key_id, "plaintext_bytes": length},
                 None if args.json else f"decrypted {name} into {args.output} ({length} bytes)")
    return 0


class _Prefixed:
    """A reader that gives `head` first, then the rest of `f` (bytes read past a header)."""

    def __init__(self, head: bytes, f: BinaryIO) -> None:
        self._head, self._f = memoryview(head), f

    def readinto(self, buf) -> int:
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._f.readinto(buf)

    def fileno(self) -> int:
        return self._f.fileno()


def _prefixed(error: KmsError, name: str) -> KmsError:
    """The same error class, its message prefixed with the file name."""
    out = KmsError.__new__(type(error))
    Exception.__init__(out, f"{name}: {error}")
    return out


def run_info(args: argparse.Namespace, ctx: CliContext) -> int:
    with _reader(args.file) as f:
        try:
            header, _ = _read_header(f)
        except KmsError as e:
            raise _prefixed(e, args.file) from None
        length = os.fstat(f.fileno()).st_size
    key_id, version = peek_key(header.wrapped_dek)
    frames = length - header.size
    try:
        plaintext = envelope.plaintext_length(frames, header.frame_size)
        count = envelope.frame_count(plaintext, header.frame_size)
        state = "complete length"
    except envelope.Truncated:
        plaintext, count, state = None, None, "cut short (no envelope has this length)"
    report = {
        "file": args.file,
        "format_version": header.version,
        "metadata": header.metadata,
        "flags": header.flags,
        "message_id": header.message_id.hex(),
        "key_id": key_id,
        "key_version": version,
        "key_alias": None,
        "key_state": None,
        "frame_size": header.frame_size,
        "header_bytes": header.size,
        "file_bytes": length,
        "frames": count,
        "plaintext_bytes": plaintext,
        "length_check": state,
    }
    try:
        meta = ctx.kms.describe_key(key_id)
        report["key_alias"], report["key_state"] = meta.alias, meta.state.value
    except KmsError as e:
        report["key_state"] = f"unknown here ({e})"
    ctx.emit(report)
    return 0


def run_rewrap(args: argparse.Namespace, ctx: CliContext) -> int:
    path = args.file
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as e:
        raise InvalidRequest(f"cannot open {path} for writing: {e.strerror}") from None
    with open(fd, "r+b", buffering=0) as f:
        try:
            header, _ = _read_header(f)
        except KmsError as e:
            raise _prefixed(e, path) from None
        old = peek_key(header.wrapped_dek)
        new_header = envelope.rewrap(ctx.kms, header, args.to_key)
        new = peek_key(new_header.wrapped_dek)
        if new_header.size == header.size:
            os.pwrite(fd, new_header.encode(), 0)  # frames are untouched: same fixed header
            os.fsync(fd)
        else:
            _rewrite(f, path, header, new_header)
    ctx.emit({"file": path, "old_key_id": old[0], "old_key_version": old[1], "key_id": new[0], "key_version": new[1]},
             None if args.json else f"re-wrapped {path}: key {old[0]} v{old[1]} -> {new[0]} v{new[1]}")
    return 0


def _rewrite(f: BinaryIO, path: str, old: envelope.Header, new: envelope.Header) -> None:
    """A header of another size: copy the frames behind it into a new file, then rename."""
    f.seek(old.size)
    mode = os.fstat(f.fileno()).st_mode & 0o7777
    with _writer(path, mode) as out:
        out.write(new.encode())
        for chunk in _chunks(f):
            out.write(chunk)
        os.fsync(out.fileno())
