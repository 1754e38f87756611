"""Names of a cipher directory without a mount: plaintext path <-> backing path, and a
walk of the whole tree with its plaintext names (for `kms fs decrypt`, `fsck`, `info`).

The offline tools read the same on-disk format the mount writes (fsmount.names for the
codec; the directory values and long-name side files as fsmount.name_map keeps them),
with ordinary paths: they run with the mount gone, on a copy or a backup.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kmscore.facade import Kms

from fsmount import cipherdir
from fsmount import names as codec
from fsmount.errors import CipherDirError
from fsmount.unlinked import TRASH

RESERVED_TOP = frozenset((cipherdir.CONFIG_NAME, TRASH))

# What a mount killed between two steps of a name change leaves, as (how the backing
# name starts, how it ends, the step): never a user's name, so fsck --repair removes it.
LEFTOVERS = (
    (codec.LONG_PREFIX, codec.LONG_SUFFIX + codec.TMP_SUFFIX, "write of a long name's side file"),
    (codec.RMDIR_TMP, "", "rmdir (the value of a directory removed)"),
    (codec.MKDIR_TMP, "", "mkdir (a directory not yet named)"),
    (codec.RMDIR_DIR_TMP, "", "rmdir (a directory already unnamed)"),
)
TOP_LEFTOVERS = ((f".{cipherdir.CONFIG_NAME}.tmp-", "", "write of the config"),)
LEFTOVER = "left by an interrupted"  # how fsck's report names them


def leftover(name: str, top: bool = False) -> str | None:
    """What a crash interrupted if backing name `name` is one of its leftovers, else None."""
    for start, end, step in LEFTOVERS + (TOP_LEFTOVERS if top else ()):
        if name.startswith(start) and name.endswith(end) and len(name) > len(start) + len(end):
            return f"{LEFTOVER} {step}: safe to remove"
    return None


@dataclass(frozen=True)
class Entry:
    """One name of the tree: its plaintext path ("/a/b") and its backing file."""

    plain: str
    backing: Path
    st: os.stat_result


def find_cipher_dir(path: str | os.PathLike) -> Path | None:
    """The cipher directory holding backing path `path` (the nearest parent with a config)."""
    p = Path(os.path.abspath(path))
    for d in [p, *p.parents]:
        if (d / cipherdir.CONFIG_NAME).is_file():
            return d
    return None


class TreeNames:
    """A cipher directory's name mapping, offline (config verified with the KMS)."""

    def __init__(self, kms: Kms, cipher_dir: str | os.PathLike) -> None:
        self.root = Path(cipher_dir)
        loaded = cipherdir.load(self.root)
        if loaded is None:
            raise CipherDirError(f"{cipher_dir} is not a keyhold cipher directory (no {cipherdir.CONFIG_NAME})")
        cipherdir.verify(kms, self.root, *loaded)
        self.config = loaded[0]
        self.cipher = None
        if self.config.encrypted_names:
            self.cipher = codec.NameCipher(cipherdir.name_key(kms, self.config),
                                           deterministic=not self.config.per_directory_iv)

    @property
    def encrypted(self) -> bool:
        return self.cipher is not None

    def iv(self, bdir: Path) -> bytes:
        """The per-directory value of backing directory `bdir`; BadName if missing or damaged."""
        if self.cipher is None or self.cipher.deterministic:
            return codec.ZERO_IV
        try:
            iv = (bdir / codec.DIRIV_NAME).read_bytes()
        except OSError as e:
            raise codec.BadName(f"{codec.DIRIV_NAME} unreadable: {e.strerror}") from None
        if len(iv) != codec.DIRIV_LEN or iv == codec.ZERO_IV:
            raise codec.BadName(f"{codec.DIRIV_NAME} is damaged")
        return iv

    # -- one path --------------------------------------------------------------------------
    def backing_of(self, plain: str) -> Path:
        """The backing path of plaintext path `plain` ("/a/b", relative to the mount)."""
        out = self.root
        for part in [p for p in plain.split("/") if p]:
            if self.cipher is None:
                out = out / part
            else:
                out = out / self.cipher.encrypt(self.iv(out), part).backing
        return out

    def plain_of(self, backing: str | os.PathLike) -> str:
        """The plaintext path ("/a/b") of a backing path inside the cipher directory;
        BadName for one of the directory's own files or a name that does not decrypt."""
        rel = Path(os.path.abspath(backing)).relative_to(os.path.abspath(self.root))
        if self.cipher is None:
            return "/" + str(rel) if str(rel) != "." else "/"
        out, bdir = [], self.root
        for part in rel.parts:
            out.append(self.name_of(bdir, part))
            bdir = bdir / part
        return "/" + "/".join(out)

    def name_of(self, bdir: Path, backing_name: str) -> str:
        """The plaintext name of entry `backing_name` of backing directory `bdir`."""
        if self.cipher is None:
            return backing_name
        encoded = backing_name
        if backing_name.startswith(("keyhold.", ".")) or backing_name in RESERVED_TOP:
            if not codec.is_long(backing_name):
                raise codec.BadName("one of the cipher directory's own files, not a name")
            encoded = self.side(bdir, backing_name)
        return self.cipher.decrypt(self.iv(bdir), encoded)

    def side(self, bdir: Path, long_entry: str) -> str:
        try:
            text = (bdir / codec.side_name(long_entry)).read_bytes().decode("ascii", "replace")
        except OSError as e:
            raise codec.BadName(f"long-name side file unreadable: {e.strerror}") from None
        return codec.check_long(long_entry, text)

    def target_of(self, link: Path) -> str:
        stored = os.readlink(link)
        if self.cipher is None:
            return stored
        if codec.is_long_target(stored):
            h = stored[len(codec.LONG_LINK_PREFIX):]
            try:
                full = (self.root / codec.LONG_LINK_DIR / h).read_bytes().decode("ascii", "replace")
            except (OSError, ValueError) as e:
                raise codec.BadName(f"long symlink target unreadable: {e}") from None
            if "/" in h or codec.long_target(full) != stored:
                raise codec.BadName("long symlink target does not match its hash")
            stored = full
        return self.cipher.decrypt_target(stored)

    def xattr_of(self, stored: str) -> str:
        return stored if self.cipher is None else self.cipher.decrypt_xattr(stored)

    def is_internal(self, bdir: Path, name: str) -> bool:
        """The cipher directory's own files: config, trash, values, side files."""
        if bdir == self.root and (name in RESERVED_TOP or leftover(name, top=True)):
            return True
        return self.cipher is not None and name.startswith("keyhold.") and not codec.is_long(name)

    # -- the whole tree ------------------------------------------------------------------
    def walk(self, problems: list[tuple[str, str]] | None = None) -> Iterator[Entry]:
        """Every name of the tree, parents before children, in a stable order. A name that
        does not decrypt is left out and, if `problems` is given, reported there as
        (backing path relative to the cipher dir, what is wrong)."""
        stack = [(self.root, "")]
        while stack:
            bdir, pdir = stack.pop()
            if problems is not None and self.cipher is not None and not self.cipher.deterministic:
                try:
                    self.iv(bdir)
                except codec.BadName as e:
                    problems.append((self._rel(bdir), str(e)))
                    continue
            try:
                names = sorted(os.listdir(bdir))
            except OSError as e:
                if problems is not None:
                    problems.append((self._rel(bdir), f"unreadable: {e.strerror}"))
                continue
            present = set(names)
            subdirs = []
            for name in names:
                if self.is_internal(bdir, name):
                    if problems is not None and (what := leftover(name, bdir == self.root)):
                        problems.append((self._rel(bdir / name), what))
                    elif problems is not None and name.endswith(codec.LONG_SUFFIX) and name.startswith(codec.LONG_PREFIX) \
                            and name[: -len(codec.LONG_SUFFIX)] not in present:
                        problems.append((self._rel(bdir / name), "long-name side file without its entry"))
                    continue
                path = bdir / name
                try:
                    plain = self.name_of(bdir, name)
                except codec.BadName as e:
                    if problems is not None:
                        problems.append((self._rel(path), f"name does not decrypt: {e}"))
                    continue
                try:
                    st = path.lstat()
                except OSError as e:  # (offline tools take whole paths: PATH_MAX is their limit)
                    if problems is not None:
                        problems.append((self._rel(path), f"unreadable: {e.strerror}"))
                    continue
                entry = Entry(f"{pdir}/{plain}", path, st)
                yield entry
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append((path, entry.plain))
            stack.extend(reversed(subdirs))

    def orphan_targets(self) -> list[tuple[str, str]]:
        """Files of `keyhold.longlinks/` no symlink of the tree points at (the mount writes
        one before its symlink, and removes it after the symlink's last name), and
        temporaries of them: (backing path relative to the cipher dir, what is wrong).
        Every backing symlink counts, also one whose name does not decrypt."""
        store = self.root / codec.LONG_LINK_DIR
        if self.cipher is None or not store.is_dir():
            return []
        held = set()
        for top, dirs, files in os.walk(self.root):
            for name in dirs + files:
                p = Path(top, name)
                if p.is_symlink() and codec.is_long_target(stored := os.readlink(p)):
                    held.add(stored[len(codec.LONG_LINK_PREFIX):])
        out = []
        for name in sorted(os.listdir(store)):
            if name.endswith(codec.TMP_SUFFIX):
                out.append((self._rel(store / name), f"{LEFTOVER} write of a long symlink target: safe to remove"))
            elif name not in held:
                out.append((self._rel(store / name), f"{LEFTOVER} symlink (a long target no symlink holds): safe to remove"))
        return out

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))
