"""What every sub-command shares: the opened Kms, output helpers, input helpers.

The facade (key store, sqlite3, cryptography) is imported when a command first asks
for `ctx.kms`, not with this module: `kms --version` and `--help` never load it."""

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
from typing import TYPE_CHECKING, Any, BinaryIO

from kmscore.durable import folder_fd, sync_folder
from kmscore.errors import InvalidRequest, StoreError
from kmscore.home import HomeChoice, check_home, choose_home

if TYPE_CHECKING:
    from kmscore.facade import Kms
    from kmscore.rootkey import RootKeySource

DEPLOYMENT_ENV = "KMS_DEPLOYMENT"
ROOT_KEY_FILE_ENV = "KMS_ROOT_KEY_FILE"
MAX_STDIN = 64 * 1024  # more than any data command's input (4096 bytes, or its ciphertext blob)

_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \r\n\t")


class CliContext:
    """Opens the Kms lazily (so `--help` never creates a store) and says what it created."""

    def __init__(self) -> None:
        self.args: argparse.Namespace | None = None
        self.parser: argparse.ArgumentParser | None = None
        self._kms: Kms | None = None

    @property
    def quiet(self) -> bool:
        return bool(getattr(self.args, "quiet", False))

    def setup_logging(self) -> None:
        """`--log-level`/`--log-format` (or -v) for this process and its children."""
        from kmscore.logs import setup_logging

        level = getattr(self.args, "log_level", None) or ("debug" if getattr(self.args, "verbose", False) else None)
        if self.quiet and not level:
            level = "warning"
        try:
            setup_logging(level, getattr(self.args, "log_format", None))
        except ValueError as e:  # a bad $KMS_LOG_LEVEL / $KMS_LOG_FORMAT
            raise InvalidRequest(str(e)) from None

    def deployment_file(self) -> str | None:
        """--deployment, else $KMS_DEPLOYMENT unless --home names a home explicitly."""
        args = self.args
        flag, home = getattr(args, "deployment", None), getattr(args, "home", None)
        if flag and home:
            raise InvalidRequest("--home and --deployment both name a key store: give one of them")
        return flag or (None if home else os.environ.get(DEPLOYMENT_ENV))

    def home_choice(self) -> HomeChoice:
        """The home this command uses: --deployment's [kms] home, else --home/$KMS_HOME/default."""
        deployment = self.deployment_file()
        if deployment:
            dep = self.deployment(deployment)
            return choose_home(dep.home, named_by=f"{deployment} [kms] home")
        return choose_home(getattr(self.args, "home", None))

    def deployment(self, path: str):
        from kmscore.config import ConfigError, load_config
        from kmscore.frontend import load_frontends

        cached = getattr(self, "_deployment", None)
        if cached is not None and cached[0] == path:
            return cached[1]
        try:
            dep = load_config(path, frontends=load_frontends())
            self._deployment = (path, dep)
            return dep
        except ConfigError as e:
            raise InvalidRequest("\n".join(str(p) for p in e.problems) + f"\n(check it with `kms check {path}`)") from None

    def root_key_source(self) -> RootKeySource | None:
        from kmscore.rootkey import RootKeySource

        args = self.args
        if getattr(args, "passphrase_fd", None) is not None:
            return RootKeySource("passphrase-file", f"/dev/fd/{args.passphrase_fd}")
        if getattr(args, "passphrase_file", None):
            return RootKeySource("passphrase-file", args.passphrase_file)
        path = getattr(args, "root_key_file", None)
        if path:
            return RootKeySource("file", str(Path(path).expanduser().absolute()))
        deployment = self.deployment_file()
        if deployment and self.deployment(deployment).root_key is not None:
            return self.deployment(deployment).root_key
        path = os.environ.get(ROOT_KEY_FILE_ENV)
        if path:
            return RootKeySource("file", str(Path(path).expanduser().absolute()))
        return None

    @property
    def kms(self) -> Kms:
        if self._kms is None and (remote := self._remote_kms()) is not None:
            self._kms = remote
        if self._kms is None:
            args = self.args
            choice = self.home_choice()
            create = args.command == "init" or bool(getattr(args, "create_home", False))
            notice = check_home(choice, may_create=create)
            if notice:
                self.info(notice)
            source = self.root_key_source()
            if source is None:
                check_default_root_key(choice)
            from kmscore.facade import Kms

            self._kms = Kms(choice.path, root_key=source, caller=f"cli:{args.command}",
                            integrity=getattr(args, "integrity", "strict"))  # "report": verify commands
            for notice in self._kms.notices:
                self.info(notice)
        return self._kms

    def _remote_kms(self):
        """With a deployment whose `[kms]` names a `url`: the remote facade (no local store
        is opened or created); else None."""
        deployment = self.deployment_file()
        if not deployment or self.deployment(deployment).kms.url is None:
            return None
        if self.args.command == "init":
            raise InvalidRequest(f"{deployment} names a remote KMS ([kms] url): its key store is made on the "
                                 "KMS host (`kms init` there), not here")
        from kmscore.deploy import open_kms

        return open_kms(self.deployment(deployment), caller=f"cli:{self.args.command}")

    def close(self) -> None:
        if self._kms is not None:
            self._kms.close()

    # -- output ------------------------------------------------------------------------
    def info(self, message: str) -> None:
        """A notice on stderr (never data); `-q` silences it."""
        if not self.quiet:
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
            data = sys.stdin.buffer.read(MAX_STDIN + 1)  # never the whole stream into memory
            if len(data) > MAX_STDIN:
                raise InvalidRequest(
                    f"standard input is larger than {MAX_STDIN} bytes: data commands take small inputs "
                    "(4096 bytes of plaintext); use `kms encrypt-file` for files"
                )
        return maybe_base64(data) if binary_blob else data


def check_default_root_key(choice: HomeChoice) -> None:
    """A store whose root key file was moved away (e.g. to /etc/keyhold for systemd) must
    not be answered with "run `kms init`": say how to point at the moved file."""
    from kmscore.rootkey import KEY_FILE_NAME, PASSPHRASE_ENV, ROOT_KEY_ENV

    if os.environ.get(ROOT_KEY_ENV) or os.environ.get(PASSPHRASE_ENV):
        return
    key_file = choice.path / KEY_FILE_NAME
    if choice.store.exists() and choice.store.stat().st_size and not key_file.exists():  # an empty file: the store says why
        raise StoreError(
            f"the key store {choice.store} exists but its root key {key_file} does not: if you moved it "
            f"(e.g. to /etc/keyhold/root.key), pass --root-key-file FILE or set ${ROOT_KEY_FILE_ENV}; "
            f"a passphrase store needs ${PASSPHRASE_ENV}, --passphrase-file or --passphrase-fd"
        )


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
    system lacks O_TMPFILE is a named temporary used (removed on every error). The data
    is fsynced before the link and the folder after it: a command that said it wrote a
    file has it on the disk, so the caller may remove its input (a power loss otherwise
    could leave an empty file under the name, as ext4 allocates late)."""
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
            os.fsync(fd)  # the data on the disk before the name: never an empty file under it
            if named is None:
                with folder_fd(folder) as dfd:
                    _link_in(fd, target.name, dfd)
                    os.fsync(dfd)  # and the name itself
        if named is not None:
            os.replace(named, target)
            sync_folder(folder)
    except OSError as e:
        raise InvalidRequest(f"cannot write {path}: {e.strerror}") from None
    finally:
        if named is not None:
            named.unlink(missing_ok=True)


def _link_in(fd: int, name: str, folder: int) -> None:
    """Give the unnamed file `fd` the name `name` in the open folder `folder`
    (replacing an existing file).

    linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N; os.link only uses linkat (rather
    than link(2), which would not follow the magic link) when given a directory fd."""
    source = f"/proc/self/fd/{fd}"
    try:
        os.link(source, name, dst_dir_fd=folder, follow_symlinks=True)
        return
    except FileExistsError:
        pass
    # a complete file under a hidden name for the instant between link and rename
    tmp = f".{name}.kms-new-{os.getpid()}-{os.urandom(4).hex()}"
    os.link(source, tmp, dst_dir_fd=folder, follow_symlinks=True)
    try:
        os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except OSError:
        os.unlink(tmp, dir_fd=folder)
        raise


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
