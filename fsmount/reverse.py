"""Reverse mode: `kms mount --reverse PLAINDIR MOUNTPOINT`, a read-only encrypted view of
a plain directory (for backing it up to untrusted storage without a second copy).

The view is a format-2 cipher directory with `names = "deterministic"`: a copy of it
(rsync, restic, cp) mounts forward like any other, and `kms fs decrypt COPY OUT`
restores the plain tree. It is computed on every read, never stored, and it is
deterministic, so an unchanged file reads the same bytes in every run and a backup
tool transfers nothing for it:

* one `keyhold-fsmount.conf` at its top, made (and sealed) once and kept with the view's
  wrapped keys in `PLAINDIR/.keyhold-reverse.conf` (which the view does not show);
* names: AES-SIV with the zero directory value (fsmount.names), long names as
  `keyhold.longname.*` entries with their `.name` side files;
* every file: an envelope whose header marks a *shared* DEK (one DEK for the view,
  wrapped once under the CMK with context {"keyhold:envelope": "shared"}), with a
  message id derived from the file's path, and frames sealed with nonces derived from
  (message id, index, final, plaintext) by HMAC: a nonce repeats only for the same
  frame of the same file, where it seals the same bytes (the SIV idea on AES-GCM);
* symlink targets: AES-SIV with the zero nonce (targets too long to fit a symlink
  once encrypted, over 3039 bytes, read as EIO); no extended attributes.

What it reveals beyond forward mode (docs/formats/fsmount.md, "Reverse mode"): equal
names anywhere (deterministic names); which frames of a file changed between two
copies; that two copies of a file at one path are equal. The sans-I/O part is
`ReverseView` (keys, names, the bytes of one file's envelope); `ReverseFS` is the
FUSE side.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import hmac
import json
import logging
import os
import stat
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kmscore.envelope import FLAG_SHARED_DEK, FRAME_OVERHEAD, FrameCipher, Header
from kmscore.envelope.keys import envelope_context
from kmscore.facade import Kms

from fsmount import cipherdir
from fsmount import names as codec
from fsmount.errors import CipherDirError
from fsmount.layout import Layout
from fsmount.libfuse import mfusepy

log = logging.getLogger("fsmount")

STATE_NAME = ".keyhold-reverse.conf"  # in PLAINDIR: the view's config and wrapped DEK
STATE_FORMAT = "keyhold-fsmount-reverse"
_NONCE_LABEL = b"keyhold-fsmount reverse v1 nonce"
_ID_LABEL = b"keyhold-fsmount reverse v1 message id"
_INDEX = struct.Struct(">QB")
_WALK = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # a parent: never through a symlink
ENVELOPE_VERSION = 1


def _fs_bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def prepare(kms: Kms, plain_dir: str | os.PathLike, key: str | None, frame_size: int) -> dict[str, Any]:
    """The view's state, made on the first reverse mount of `plain_dir` and kept in it."""
    path = Path(plain_dir) / STATE_NAME
    try:
        state = json.loads(path.read_text())
        if state.get("format") != STATE_FORMAT or state.get("version") != 1:
            raise ValueError("not a reverse-mode state file")
        config = json.loads(state["view_config"])
        base64.b64decode(state["wrapped_dek"], validate=True)
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError) as e:
        raise CipherDirError(f"{path} is damaged ({e}); remove it to start a new view (a new view re-encrypts all)") from None
    else:
        if key is not None and kms.describe_key(key).key_id != config["key_id"]:
            raise CipherDirError(f"the reverse view of {plain_dir} was set up with key {config['key_id']}, not {key}")
        return state
    config = cipherdir.new_config(kms, key, frame_size, "deterministic")
    dek = os.urandom(32)
    state = {
        "format": STATE_FORMAT,
        "version": 1,
        "view_config": cipherdir.render(kms, config),
        "wrapped_dek": base64.b64encode(kms.encrypt_datakey(config.key_id, dek, envelope_context(b"", True))).decode(),
    }
    tmp = path.with_name(f"{STATE_NAME}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "w") as f:
            f.write(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CipherDirError(f"cannot write {path}: {e.strerror} (reverse mode keeps its keys there)") from None
    return state


class ReverseView:
    """The keys of one reverse view and what they make: names, targets, envelopes."""

    def __init__(self, kms: Kms, state: dict[str, Any]) -> None:
        self.config_text = state["view_config"].encode()
        data = json.loads(state["view_config"])
        config = cipherdir.CipherDirConfig(
            dir_id=data["dir_id"], key_id=data["key_id"], key_alias=data.get("key_alias"),
            frame_size=int(data["frame_size"]), names=data["names"], created=data.get("created", ""),
            version=int(data["version"]), name_key=data.get("name_key"),
        )
        cipherdir.verify(kms, "(reverse view)", config, base64.b64decode(data["seal"]))
        self.config = config
        self.names = codec.NameCipher(cipherdir.name_key(kms, config), deterministic=True)
        self.wrapped = base64.b64decode(state["wrapped_dek"])
        self._dek = kms.decrypt_datakey(self.wrapped, envelope_context(b"", True), key=config.key_id)
        self._nonce_key = hmac.new(self._dek, _NONCE_LABEL, hashlib.sha256).digest()
        self.frame_size = config.frame_size

    # -- names ---------------------------------------------------------------------------
    def name(self, plain: str) -> codec.Encoded:
        return self.names.encrypt(codec.ZERO_IV, plain)

    def plain_name(self, encoded: str) -> str:
        return self.names.decrypt(codec.ZERO_IV, encoded)

    def target(self, plain_target: str) -> str:
        stored = self.names.encrypt_target(plain_target, codec.ZERO_IV)
        if len(stored) > codec.LINK_MAX:
            raise codec.BadName("symlink target too long for a reverse view")
        return stored

    # -- envelopes -----------------------------------------------------------------------
    def header(self, rel: str) -> Header:
        """The envelope header of plain file `rel` ("/a/b"): its message id is a MAC of the path."""
        message_id = hmac.new(self._nonce_key, _ID_LABEL + _fs_bytes(rel), hashlib.sha256).digest()[:16]
        return Header(ENVELOPE_VERSION, FLAG_SHARED_DEK, self.frame_size, message_id, self.wrapped)

    def cipher(self, header: Header) -> FrameCipher:
        return FrameCipher(self._dek, header)

    def seal(self, cipher: FrameCipher, header: Header, index: int, plain: bytes, final: bool) -> bytes:
        """Frame `index`, sealed with a nonce derived from everything it covers."""
        nonce = hmac.new(self._nonce_key, header.message_id + _INDEX.pack(index, final) + plain,
                         hashlib.sha256).digest()[:12]
        out = bytearray(len(plain) + FRAME_OVERHEAD)
        cipher.seal_into(index, plain, final, memoryview(out), nonce)
        return bytes(out)


class _Open:
    """One open file of the view: the plain file's fd and its envelope's geometry."""

    def __init__(self, fd: int, header: Header, cipher: FrameCipher, size: int) -> None:
        self.fd, self.header, self.cipher, self.size = fd, header, cipher, size
        self.head = header.encode()
        self.layout = Layout(len(self.head), header.frame_size)


class ReverseFS(mfusepy.Operations):
    """FUSE operations (mfusepy) of a read-only reverse view of `plain_dir`."""

    use_ns = True

    def __init__(self, plain_dir: str, view: ReverseView) -> None:
        self.root = os.path.abspath(plain_dir)
        self.view = view
        self._long: dict[tuple[str, str], str] = {}  # (plain dir, long entry) -> plain name
        self._files: dict[int, _Open | bytes] = {}
        self._next = 1
        self._lock = threading.Lock()

    # -- paths ---------------------------------------------------------------------------
    def _resolve(self, path: str) -> tuple[str, bytes | None]:
        """(plain path relative to the root, "" for the top; virtual file content or None)."""
        rel = ""
        parts = [p for p in path.split("/") if p]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if rel == "" and part == cipherdir.CONFIG_NAME and last:
                return "", self.view.config_text
            if part.startswith(codec.LONG_PREFIX):
                entry = part[: -len(codec.LONG_SUFFIX)] if part.endswith(codec.LONG_SUFFIX) else part
                plain = self._long_name(rel, entry)
                if part != entry:
                    if not last:
                        raise _err(errno.ENOTDIR)
                    return rel + "/" + plain, self.view.name(plain).full.encode("ascii")
            else:
                try:
                    plain = self.view.plain_name(part)
                except codec.BadName:
                    raise _err(errno.ENOENT) from None
            if rel == "" and plain == STATE_NAME:
                raise _err(errno.ENOENT)
            rel = rel + "/" + plain
        return rel, None

    def _long_name(self, rel: str, entry: str) -> str:
        hit = self._long.get((rel, entry))
        if hit is not None:
            return hit
        for name in self._listdir(rel):
            enc = self.view.name(name)
            if enc.long:
                if len(self._long) > 100_000:
                    self._long.clear()
                self._long[(rel, enc.backing)] = name
                if enc.backing == entry:
                    return name
        raise _err(errno.ENOENT)

    @contextlib.contextmanager
    def _at(self, rel: str) -> Iterator[tuple[int, str]]:
        """(dir fd, last name; "." for the top) of plain path `rel`, every parent opened
        without following a symlink: PLAINDIR is a live tree, and a directory replaced
        by a symlink (to /etc) while the view is in use must not bring what it points
        at into the view (ENOTDIR instead)."""
        parts = [p for p in rel.split("/") if p]
        fd = os.open(self.root, _WALK)
        try:
            for part in parts[:-1]:
                child = os.open(part, _WALK, dir_fd=fd)
                os.close(fd)
                fd = child
            yield fd, parts[-1] if parts else "."
        finally:
            os.close(fd)

    def _listdir(self, rel: str) -> list[str]:
        with self._at(rel) as (d, name):
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    # -- attributes ----------------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        rel, virtual = self._resolve(path)
        with self._at(rel if virtual is None else "") as (d, name):
            st = os.stat(name, dir_fd=d, follow_symlinks=False)
        attrs = {k: getattr(st, k) for k in ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size",
                                             "st_blocks", "st_blksize")}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        if virtual is not None:
            attrs.update(st_mode=stat.S_IFREG | 0o444, st_size=len(virtual), st_nlink=1, st_ino=0)
        elif stat.S_ISREG(st.st_mode):
            header = self.view.header(rel)
            attrs["st_size"] = Layout(header.size, header.frame_size).backing_length(st.st_size)
        elif stat.S_ISLNK(st.st_mode):
            attrs["st_size"] = len(self._target(rel, path))
        return attrs

    def readdir(self, path: str, fh: int) -> list[Any]:
        rel, virtual = self._resolve(path)
        if virtual is not None:
            raise _err(errno.ENOTDIR)
        out: list[Any] = [".", ".."]
        if rel == "":
            out.append(cipherdir.CONFIG_NAME)
        for name in sorted(self._listdir(rel)):
            if rel == "" and name == STATE_NAME:
                continue
            enc = self.view.name(name)
            out.append(enc.backing)
            if enc.long:
                self._long[(rel, enc.backing)] = name
                out.append(codec.side_name(enc.backing))
        return out

    def readlink(self, path: str) -> str:
        rel, _ = self._resolve(path)
        return self._target(rel, path)

    def _target(self, rel: str, path: str) -> str:
        """The view's (encrypted) target of plain symlink `rel`; logged by its view
        path `path`, which names nothing in the clear."""
        try:
            with self._at(rel) as (d, name):
                stored = os.readlink(name, dir_fd=d)
            return self.view.target(stored)
        except codec.BadName as e:
            log.error("reverse: symlink %s: %s", path, e)
            raise _err(errno.EIO) from None

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self.root)
        return {k: getattr(sv, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                                            "f_ffree", "f_favail", "f_namemax")}

    # -- contents ------------------------------------------------------------------------
    def open(self, path: str, flags: int) -> int:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise _err(errno.EROFS)
        rel, virtual = self._resolve(path)
        if virtual is not None:
            item: _Open | bytes = virtual
        else:
            with self._at(rel) as (d, name):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
            header = self.view.header(rel)
            item = _Open(fd, header, self.view.cipher(header), os.fstat(fd).st_size)
        with self._lock:
            fh, self._next = self._next, self._next + 1
            self._files[fh] = item
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        item = self._files[fh]
        if isinstance(item, bytes):
            return item[offset : offset + size]
        return self._envelope_range(item, offset, size)

    def _envelope_range(self, f: _Open, offset: int, size: int) -> bytes:
        lay = f.layout
        end = min(offset + size, lay.backing_length(f.size))
        out = bytearray()
        if offset < lay.header_size:
            out += f.head[offset:end]
        count = lay.frame_count(f.size)
        first = max(0, offset - lay.header_size) // lay.stride
        for index in range(first, count):
            start = lay.frame_offset(index)
            if start >= end:
                break
            plain = os.pread(f.fd, lay.frame_size, lay.frame_start(index))
            frame = self.view.seal(f.cipher, f.header, index, plain, index == count - 1)
            lo, hi = max(offset, start) - start, min(end, start + len(frame)) - start
            out += frame[lo:hi]
        return bytes(out)

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            item = self._files.pop(fh, None)
        if isinstance(item, _Open):
            os.close(item.fd)
        return 0

    def access(self, path: str, amode: int) -> int:
        if amode & os.W_OK:
            raise _err(errno.EROFS)
        self._resolve(path)
        return 0


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def run(kms: Kms, plain_dir: str, mount_point: str, key: str | None, frame_size: int, debug: bool = False,
        allow_other: bool | None = None) -> None:
    """Mount the reverse view in the foreground; return after a clean unmount."""
    from fsmount.mount import LOOP_ENDED, MountError, check_mount_point, check_paths, is_mounted

    plain_dir, mount_point = os.path.abspath(plain_dir), os.path.abspath(mount_point)
    if problem := check_paths(plain_dir, mount_point):
        raise MountError(problem.replace("cipher dir", "plain dir"))
    if not os.path.isdir(plain_dir):
        raise MountError(f"plain directory {plain_dir} does not exist or is not a directory")
    check_mount_point(mount_point)
    view = ReverseView(kms, prepare(kms, plain_dir, key, frame_size))
    ops = ReverseFS(plain_dir, view)
    log.info("reverse-mounting %s on %s (read-only encrypted view, key %s)", plain_dir, mount_point,
             view.config.key_alias or view.config.key_id)
    allow = os.geteuid() == 0 if allow_other is None else allow_other
    try:
        mfusepy.FUSE(ops, mount_point, foreground=True, debug=debug, ro=True, allow_other=allow, max_threads=8,
                     fsname=f"keyhold-reverse:{plain_dir}".replace(",", "_"), subtype="keyhold")
    except RuntimeError as e:
        if str(e) != str(LOOP_ENDED) or is_mounted(mount_point):
            raise MountError(f"reverse-mounting {plain_dir} on {mount_point} failed (libfuse error {e})") from None
    log.info("unmounted %s", mount_point)
