"""How a mount's names become backing names: plain (format 1, `names = "plain"`) or
encrypted (format 2, fsmount.names), behind one interface the FUSE operations call.

Encrypted names need I/O that the codec does not do: every backing directory holds its
per-directory value in `keyhold.diriv` (16 random bytes, written when the directory is
made; deterministic names have none: the value is zero), and a name too long for the
backing file system is a hashed entry next to a side file holding its encoded name.

* **Lookups** resolve a mount path component by component; each directory's backing
  path and value are cached by mount path, so a stat costs one AES-SIV of its last
  name. The cache is dropped below a directory that is renamed or removed; a generation
  counter keeps a lookup that raced with such a change from caching what it found.
* **Long names**: the side file is written (atomically: temporary + rename) before the
  entry is made, and removed after the entry is gone (`tidy`), so a crash leaves at
  most an orphan side file, never an entry without its name. The kernel serialises
  creates and removes in one directory, and only the mount changes the backing tree.
* **Directories** are made mode 0700, given their value, then chmod-ed to the mode asked
  for (a directory made 0500 could not get its value otherwise), and removed by moving
  the value out to the parent first (gocryptfs's order): if the rmdir fails (a file
  appeared), the value is moved back.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Iterator

from fsmount import names as codec
from fsmount.dirfd import RENAME_NOREPLACE, Backing, renameat2
from fsmount.errors import CipherDirError

log = logging.getLogger("fsmount")

DIR_CACHE = 50_000  # mount directories whose backing path and value we remember
NAME_CACHE = 100_000  # encrypted names we remember (keyed by directory value and name: never stale)


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def read_iv(backing: Backing, bdir: str) -> bytes:
    """The per-directory value of backing directory `bdir` ("/X/Y"; "/" for the top)."""
    try:
        fd = backing.open(bdir.rstrip("/") + "/" + codec.DIRIV_NAME, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        try:
            st = backing.lstat(bdir)
        except FileNotFoundError:
            raise _err(errno.ENOENT) from None
        if not stat.S_ISDIR(st.st_mode):
            raise _err(errno.ENOTDIR) from None
        log.error("integrity: backing directory %s has no %s: its names cannot be read", bdir, codec.DIRIV_NAME)
        raise _err(errno.EIO) from None
    try:
        iv = os.read(fd, codec.DIRIV_LEN + 1)
    finally:
        os.close(fd)
    if len(iv) != codec.DIRIV_LEN or iv == codec.ZERO_IV:
        log.error("integrity: %s of backing directory %s is damaged", codec.DIRIV_NAME, bdir)
        raise _err(errno.EIO)
    return iv


def iv_at(dir_fd: int) -> bytes:
    """The per-directory value of an open backing directory; EIO (logged by inode: the
    caller's path is a plaintext one) if it is missing or damaged, as in `read_iv`."""
    try:
        fd = os.open(codec.DIRIV_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        log.error("integrity: backing directory (inode %d) has no %s: its names cannot be read",
                  os.fstat(dir_fd).st_ino, codec.DIRIV_NAME)
        raise _err(errno.EIO) from None
    try:
        iv = os.read(fd, codec.DIRIV_LEN + 1)
    finally:
        os.close(fd)
    if len(iv) != codec.DIRIV_LEN or iv == codec.ZERO_IV:
        log.error("integrity: %s of backing directory (inode %d) is damaged", codec.DIRIV_NAME, os.fstat(dir_fd).st_ino)
        raise _err(errno.EIO)
    return iv


def write_iv_at(dir_fd: int) -> None:
    """Give a new backing directory its value (file mode 0400, as gocryptfs's)."""
    fd = os.open(codec.DIRIV_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400,
                 dir_fd=dir_fd)
    try:
        if os.write(fd, os.urandom(codec.DIRIV_LEN)) != codec.DIRIV_LEN:
            raise _err(errno.EIO)
    except BaseException:
        os.close(fd)
        os.unlink(codec.DIRIV_NAME, dir_fd=dir_fd)
        raise
    os.close(fd)


def _remove_made(dir_fd: int, name: str) -> None:
    """Remove directory `name` of `dir_fd` holding at most its value (made writable first:
    a user's mount cannot unlink in a directory of mode 0500)."""
    if os.geteuid() != 0:
        os.chmod(name, 0o700, dir_fd=dir_fd, follow_symlinks=False)
    try:
        os.unlink(name + "/" + codec.DIRIV_NAME, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    os.rmdir(name, dir_fd=dir_fd)


def read_side(dir_fd: int, backing_name: str) -> str:
    """The encoded name a long-name entry's side file holds."""
    fd = os.open(codec.side_name(backing_name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        raw = os.read(fd, 4096)
    finally:
        os.close(fd)
    return codec.check_long(backing_name, raw.decode("ascii", "replace"))


class PlainNames:
    """Format 1 and `names = "plain"`: the mount path is the backing path."""

    encrypted = False

    def __init__(self, backing: Backing) -> None:
        self.backing = backing

    def to_backing(self, path: str) -> str:
        return path

    def create_name(self, path: str) -> str:
        return path

    def tidy(self, bpath: str) -> None:
        pass

    def forget(self, path: str) -> None:
        pass

    def mkdir(self, bpath: str, mode: int) -> None:
        with self.backing.at(bpath) as (d, name):
            os.mkdir(name, mode & 0o7777, dir_fd=d)

    def rmdir(self, bpath: str) -> None:
        with self.backing.at(bpath) as (d, name):
            os.rmdir(name, dir_fd=d)

    def empty_dir(self, bpath: str) -> bool:
        return False  # a plain empty directory is empty on disk too: rename replaces it

    def entries(self, fd: int, top: bool, hidden_top: frozenset[str]) -> Iterator[tuple[str, os.DirEntry]]:
        with os.scandir(fd) as it:
            for e in it:
                if not (top and e.name in hidden_top):
                    yield e.name, e

    def target_in(self, target: str) -> str:
        return target

    def target_out(self, stored: str, where: str) -> str:
        return stored

    def drop_target(self, stored: str) -> None:
        """The last name of a symlink holding `stored` is gone."""

    def xattr_in(self, name: str) -> str:
        return name

    def xattr_out(self, stored: str) -> str | None:
        return stored


class EncryptedNames(PlainNames):
    """Format 2 with `names = "encrypted"` (per-directory values) or `"deterministic"`."""

    encrypted = True

    def __init__(self, backing: Backing, cipher: codec.NameCipher) -> None:
        super().__init__(backing)
        self.cipher = cipher
        self.per_dir = not cipher.deterministic
        self.root_iv = read_iv(backing, "/") if self.per_dir else codec.ZERO_IV
        self._dirs: dict[str, tuple[str, bytes]] = {}  # mount dir path -> (backing path, value)
        self._encoded: dict[tuple[bytes, str], codec.Encoded] = {}  # (value, name) -> backing form
        self._gen = 0
        self._lock = threading.Lock()

    # -- lookups -------------------------------------------------------------------------
    def _dir(self, path: str) -> tuple[str, bytes]:
        """Backing path ("" for the top) and value of mount directory `path`."""
        if path == "/" or not path:
            return "", self.root_iv
        hit = self._dirs.get(path)
        if hit is not None:
            return hit
        gen = self._gen
        parts = path[1:].split("/")
        i, bdir, iv = len(parts) - 1, "", self.root_iv
        while i > 0:  # the deepest cached ancestor
            hit = self._dirs.get("/" + "/".join(parts[:i]))
            if hit is not None:
                bdir, iv = hit
                break
            i -= 1
        found = []
        for j in range(i, len(parts)):
            bdir = bdir + "/" + self._encode(iv, parts[j]).backing
            iv = read_iv(self.backing, bdir) if self.per_dir else codec.ZERO_IV
            found.append(("/" + "/".join(parts[: j + 1]), (bdir, iv)))
        with self._lock:
            if gen == self._gen:
                if len(self._dirs) + len(found) > DIR_CACHE:
                    self._dirs.clear()
                self._dirs.update(found)
        return bdir, iv

    def _encode(self, iv: bytes, name: str) -> codec.Encoded:
        """The backing form of `name` in the directory whose value is `iv`, remembered:
        one AES-SIV costs ~15 µs from Python, and a create asks for its name 3-4 times
        (lookup, create, getattr)."""
        hit = self._encoded.get((iv, name))
        if hit is not None:
            return hit
        try:
            enc = self.cipher.encrypt(iv, name)
        except codec.BadName:
            raise _err(errno.ENAMETOOLONG if len(os.fsencode(name)) > codec.NAME_MAX else errno.EINVAL) from None
        if len(self._encoded) >= NAME_CACHE:
            self._encoded.clear()
        self._encoded[(iv, name)] = enc
        return enc

    def to_backing(self, path: str) -> str:
        if path == "/":
            return "/"
        parent, _, name = path.rpartition("/")
        bdir, iv = self._dir(parent)
        return bdir + "/" + self._encode(iv, name).backing

    def create_name(self, path: str) -> str:
        """The backing path for a name being made; a long name's side file is written first."""
        parent, _, name = path.rpartition("/")
        bdir, iv = self._dir(parent)
        enc = self._encode(iv, name)
        bpath = bdir + "/" + enc.backing
        if enc.long:
            self._write_side(bpath, enc.full)
        return bpath

    def _write_side(self, bpath: str, full: str) -> None:
        side = codec.side_name(bpath)
        try:
            self.backing.lstat(side)
            return  # there already (the entry exists, or a crash left it): same content
        except FileNotFoundError:
            pass
        tmp = side + codec.TMP_SUFFIX
        fd = self.backing.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o400)
        try:
            os.write(fd, full.encode("ascii"))
        finally:
            os.close(fd)
        with self.backing.at(tmp) as (d, t), self.backing.at(side) as (d2, s):
            os.rename(t, s, src_dir_fd=d, dst_dir_fd=d2)

    def tidy(self, bpath: str) -> None:
        """After a name went away (or was never made): drop its side file if no entry
        has that name."""
        if not codec.is_long(bpath.rpartition("/")[2]):
            return
        try:
            self.backing.lstat(bpath)
            return
        except FileNotFoundError:
            pass
        with self.backing.at(codec.side_name(bpath)) as (d, name):
            try:
                os.unlink(name, dir_fd=d)
            except FileNotFoundError:
                pass

    def forget(self, path: str) -> None:
        """Mount directory `path` was renamed or removed: forget it and all below it."""
        below = path + "/"
        with self._lock:
            self._gen += 1
            for p in [p for p in self._dirs if p == path or p.startswith(below)]:
                del self._dirs[p]

    # -- directories ---------------------------------------------------------------------
    def mkdir(self, bpath: str, mode: int) -> None:
        """Made whole under a hidden temporary name (`keyhold.mkdir.*`: value written,
        mode set), then renamed into place without replacing anything: a crash at any
        point leaves either no directory or a whole one, plus at worst a temporary that
        is never listed and that `kms fs fsck --repair` removes."""
        if not self.per_dir:
            return super().mkdir(bpath, mode)
        with self.backing.at(bpath) as (d, name):
            tmp = f"{codec.MKDIR_TMP}{os.urandom(8).hex()}"
            os.mkdir(tmp, 0o700, dir_fd=d)
            try:
                fd = os.open(tmp, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
                try:
                    write_iv_at(fd)
                    inherited = os.fstat(fd).st_mode & stat.S_ISGID  # from a setgid parent
                finally:
                    os.close(fd)
                os.chmod(tmp, (mode & 0o1777) | inherited, dir_fd=d, follow_symlinks=False)
                renameat2(d, tmp, d, name, RENAME_NOREPLACE)
            except BaseException:
                _remove_made(d, tmp)
                raise

    def rmdir(self, bpath: str) -> None:
        """Renamed to a hidden temporary name (`keyhold.rmdir.*`) first, so that the name
        goes in one step; then emptied of its value and removed. A crash leaves at worst
        that temporary (never listed; `kms fs fsck --repair` removes it), never a
        directory whose names cannot be read."""
        if not self.per_dir:
            return super().rmdir(bpath)
        with self.backing.at(bpath) as (d, name):
            st = os.stat(name, dir_fd=d, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                raise _err(errno.ENOTDIR)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
            try:
                if any(n != codec.DIRIV_NAME for n in os.listdir(fd)):
                    raise _err(errno.ENOTEMPTY)
            finally:
                os.close(fd)
            tmp = f"{codec.RMDIR_DIR_TMP}{os.urandom(8).hex()}"
            renameat2(d, name, d, tmp, RENAME_NOREPLACE)
            try:
                _remove_made(d, tmp)
            except OSError:
                renameat2(d, tmp, d, name, RENAME_NOREPLACE)  # (a file appeared: the kernel's locks say it cannot)
                raise

    def empty_dir(self, bpath: str) -> bool:
        """True if backing directory `bpath` holds nothing but its value (a rename may
        replace it)."""
        try:
            fd = self.backing.open(bpath, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            return all(n == codec.DIRIV_NAME for n in os.listdir(fd))
        finally:
            os.close(fd)

    def entries(self, fd: int, top: bool, hidden_top: frozenset[str]) -> Iterator[tuple[str, os.DirEntry]]:
        """The plaintext names of an open backing directory; the directory's own files
        (value, side files, config) are never shown, names that do not decrypt are
        skipped and logged."""
        iv = iv_at(fd) if self.per_dir else codec.ZERO_IV
        bad = 0
        with os.scandir(fd) as it:
            for e in it:
                name = e.name
                try:
                    if name.startswith("keyhold.") or name.startswith("."):
                        if not codec.is_long(name):
                            continue  # the value, side files, a rmdir in progress; the trash
                        name = read_side(fd, name)
                    elif top and name in hidden_top:
                        continue
                    yield self.cipher.decrypt(iv, name), e
                except (codec.BadName, OSError):
                    bad += 1
        if bad:
            log.warning("integrity: %d backing name(s) in a directory do not decrypt; not shown", bad)

    # -- symlink targets and xattr names -------------------------------------------------
    def target_in(self, target: str) -> str:
        """What the backing symlink holds. A target too long once encrypted is written to
        `keyhold.longlinks/<hash>` first (temporary + rename) and the symlink holds
        `keyhold.longlink.<hash>`; its nonce is always random, so the file belongs to one
        symlink (`drop_target` removes it with the symlink's last name)."""
        try:
            stored = self.cipher.encrypt_target(target)
            if len(stored) <= codec.LINK_MAX:
                return stored
            stored = self.cipher.encrypt_target(target, os.urandom(16))
        except codec.BadName:
            raise _err(errno.EINVAL) from None
        marker = codec.long_target(stored)
        try:
            os.mkdir(codec.LONG_LINK_DIR, 0o700, dir_fd=self.backing.fd)
        except FileExistsError:
            pass
        blob = f"{codec.LONG_LINK_DIR}/{marker[len(codec.LONG_LINK_PREFIX):]}"
        fd = os.open(blob + codec.TMP_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400,
                     dir_fd=self.backing.fd)
        try:
            os.write(fd, stored.encode("ascii"))
        finally:
            os.close(fd)
        os.rename(blob + codec.TMP_SUFFIX, blob, src_dir_fd=self.backing.fd, dst_dir_fd=self.backing.fd)
        return marker

    def target_out(self, stored: str, where: str) -> str:
        try:
            if codec.is_long_target(stored):
                stored = self._long_target(stored)
            return self.cipher.decrypt_target(stored)
        except (codec.BadName, OSError) as e:
            log.error("integrity: symlink %s: %s", where, e)
            raise _err(errno.EIO) from None

    def _long_target(self, marker: str) -> str:
        blob = f"{codec.LONG_LINK_DIR}/{marker[len(codec.LONG_LINK_PREFIX):]}"
        if "/" in marker[len(codec.LONG_LINK_PREFIX):]:
            raise codec.BadName("not a long target")
        fd = os.open(blob, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.backing.fd)
        try:
            stored = os.read(fd, 8192).decode("ascii", "replace")
        finally:
            os.close(fd)
        if codec.long_target(stored) != marker:
            raise codec.BadName("long symlink target does not match its hash")
        return stored

    def drop_target(self, stored: str) -> None:
        if not codec.is_long_target(stored) or "/" in stored:
            return
        try:
            os.unlink(f"{codec.LONG_LINK_DIR}/{stored[len(codec.LONG_LINK_PREFIX):]}", dir_fd=self.backing.fd)
        except FileNotFoundError:
            pass

    def xattr_in(self, name: str) -> str:
        try:
            return self.cipher.encrypt_xattr(name)
        except codec.BadName:
            raise _err(errno.ERANGE) from None

    def xattr_out(self, stored: str) -> str | None:
        try:
            return self.cipher.decrypt_xattr(stored)
        except codec.BadName:
            return None


def for_config(backing: Backing, config, name_key: bytes | None) -> PlainNames:
    """The name mapping a cipher directory's config asks for."""
    if not config.encrypted_names:
        return PlainNames(backing)
    if name_key is None:
        raise CipherDirError("encrypted names need the name key")
    return EncryptedNames(backing, codec.NameCipher(name_key, deterministic=not config.per_directory_iv))
