"""Offline tools on a cipher directory: info, decrypt, fsck, rewrap. No mount needed.

They read backing files directly with the envelope format and the Kms, so a cipher
directory can be inspected, checked and recovered with the mount process gone.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmscore.blob import peek_key
from kmscore.envelope import EnvelopeError, FrameAuthError, FrameCipher, Header, new_envelope, open_envelope
from kmscore.envelope import rewrap as rewrap_header
from kmscore.errors import KmsError
from kmscore.facade import Kms
from kmscore.progress import track

from fsmount import cipherdir, name_map, names, slots, xattr_rewrap, xattrs
from fsmount.errors import CipherDirError, DamagedFile, MountError
from fsmount.fs_base import read_header
from fsmount.layout import Layout
from fsmount.mount import fsname, mountinfo
from fsmount.repair import repair_file
from fsmount.tree_names import LEFTOVER, TreeNames, find_cipher_dir

BATCH = 64  # frames read per pread
Progress = Callable[[int, int], None]  # (files done, files total)


# -- one file ------------------------------------------------------------------------------
def _header(fd: int, path: str | os.PathLike) -> Header:
    try:
        return read_header(fd)
    except EnvelopeError as e:
        raise DamagedFile(f"{path}: not a keyhold envelope: {e}") from None


def info(kms: Kms, path: str | os.PathLike, plain: str | None = None) -> dict[str, Any]:
    """What `kms fs info` shows: for a cipher directory its format and options (and,
    with `plain`, the backing path of that plaintext path); for a backing file its
    header fields, CMK, sizes and plaintext path (nothing of the contents is decrypted)."""
    if plain is not None or (Path(path) / cipherdir.CONFIG_NAME).is_file():
        return _dir_info(kms, path, plain)
    mapped = _plaintext_path(kms, path)
    if not Path(path).is_file() or Path(path).is_symlink():
        if not mapped:
            raise CipherDirError(f"{path} is not a backing file nor a cipher directory")
        return {"file": str(path), **mapped}
    return {**_file_info(kms, path), **mapped}


def _dir_info(kms: Kms, cipher_dir: str | os.PathLike, plain: str | None) -> dict[str, Any]:
    tree = TreeNames(kms, cipher_dir)
    c = tree.config
    out: dict[str, Any] = {"cipher_dir": str(cipher_dir), "format_version": c.version, "names": c.names,
                           "dir_id": c.dir_id, "key_id": c.key_id, "key_alias": c.key_alias,
                           "frame_size": c.frame_size, "created": c.created}
    if plain is not None:
        out = {"cipher_dir": str(cipher_dir), "plaintext_path": "/" + plain.strip("/"),
               "backing_path": str(tree.backing_of(plain))}
    return out


def _plaintext_path(kms: Kms, path: str | os.PathLike) -> dict[str, Any]:
    """{"cipher_dir", "plaintext_path"} of a backing path, or {} outside a cipher dir."""
    root = find_cipher_dir(Path(path).parent if Path(path).name else path)
    if root is None:
        return {}
    tree = TreeNames(kms, root)
    try:
        return {"cipher_dir": str(root), "plaintext_path": tree.plain_of(path)}
    except names.BadName as e:
        return {"cipher_dir": str(root), "plaintext_path": f"unknown: {e}"}


def _file_info(kms: Kms, path: str | os.PathLike) -> dict[str, Any]:
    with open(path, "rb") as f:
        header = _header(f.fileno(), path)
        length = os.fstat(f.fileno()).st_size
    key_id, version = peek_key(header.wrapped_dek)
    lay = Layout(header.size, header.frame_size)
    size = lay.plaintext_size(length)
    try:
        meta = kms.describe_key(key_id)
        key = {"key_alias": meta.alias, "key_state": meta.state.value, "key_current_version": meta.current_version}
    except KmsError as e:
        key = {"key_alias": None, "key_state": f"unavailable: {e}"}
    return {
        "file": str(path),
        "format_version": header.version,
        "message_id": header.message_id.hex(),
        "frame_size": header.frame_size,
        "header_size": header.size,
        "key_id": key_id,
        "key_version": version,
        **key,
        "backing_size": length,
        "plaintext_size": size if size is not None else "damaged: cut short",
        "frames": lay.frame_count(size) if size is not None else None,
    }


def frames(fd: int, header: Header, cipher: FrameCipher, length: int) -> Iterator[tuple[int, bytes | None]]:
    """Every stored frame's plaintext in order, or None for a frame that fails authentication.

    Holes are skipped (the indexes jump; runs the backing file system keeps sparse are
    found with SEEK_DATA, so a 1 PiB sparse file takes no time); an end marker (slots)
    is checked and yielded as an empty frame. A file cut short has no trustworthy final
    frame: its frames are all yielded as non-final, so the last one fails, and the
    caller also sees `plaintext_size` None.
    """
    lay = Layout(header.size, header.frame_size)
    end = slots.ending(lay, length)
    count = lay.frame_count(end.size) if end is not None else max(0, (length - header.size) // lay.stride)
    final_index = count - 1 if end is not None and end.marker is None else None
    start = 0
    while start < count:
        start = max(start, _next_data(fd, lay, start, count))
        stop = min(count, start + BATCH)
        chunk = memoryview(os.pread(fd, (stop - start) * lay.stride, lay.frame_offset(start)))
        for i in range(start, stop):
            frame = chunk[(i - start) * lay.stride : (i - start + 1) * lay.stride]
            try:
                yield i, cipher.open(i, frame, i == final_index)
            except FrameAuthError:
                yield i, None if i == final_index or not slots.is_hole(frame) else b""
        start = stop
    if end is not None and end.marker is not None:
        try:
            slots.open_marker(cipher, end.marker, os.pread(fd, lay.stride, lay.frame_offset(end.marker)))
            yield end.marker, b""
        except FrameAuthError:
            yield end.marker, None


def _next_data(fd: int, lay: Layout, index: int, count: int) -> int:
    """The first slot at or after `index` that holds data (count - 1 at most)."""
    try:
        data = os.lseek(fd, lay.frame_offset(index), os.SEEK_DATA)
    except OSError:  # ENXIO: only holes up to the end; or no SEEK_DATA here
        return index
    return min(count - 1, max(index, (data - lay.header_size) // lay.stride))


def decrypt(kms: Kms, src: str | os.PathLike, dst: str | os.PathLike, *, progress: bool = False) -> int:
    """Recover the plaintext of one backing file into `dst`; refuse on any damage."""
    if str(dst) == "-":
        return decrypt_to_stdout(kms, src, progress=progress)
    name = Path(dst).name
    short = len(os.fsencode(name)) <= 200  # the temporary name must fit NAME_MAX too
    tmp = Path(dst).with_name(f".{name}.kms-tmp-{os.getpid()}" if short else f".kms-tmp-{os.getpid()}-{os.urandom(4).hex()}")
    with open(src, "rb") as f:
        header = _header(f.fileno(), src)
        length = os.fstat(f.fileno()).st_size
        size = Layout(header.size, header.frame_size).plaintext_size(length)
        if size is None:
            raise DamagedFile(f"{src}: the file is cut short (length {length} fits no envelope)")
        cipher = open_envelope(kms, header)
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:  # plaintext: 0600
                for index, plain in _tracked(frames(f.fileno(), header, cipher, length), header, length, src, progress):
                    if plain is None:
                        raise DamagedFile(f"{src}: frame {index} failed authentication; nothing was written")
                    if plain:
                        out.seek(index * header.frame_size)  # holes stay holes in the copy
                        out.write(plain)
                out.truncate(size)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
    return size


@dataclass
class TreeReport:
    files: int = 0
    dirs: int = 0
    links: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (plaintext path, why)


def decrypt_tree(kms: Kms, cipher_dir: str | os.PathLike, out_dir: str | os.PathLike) -> TreeReport:
    """`kms fs decrypt CIPHERDIR OUTDIR`: the whole plaintext tree with its names, modes,
    times, symlinks, hard links and user.* attributes, into an empty or new OUTDIR.

    A file that fails is reported and left out (its name goes on the list), the rest
    is restored; a name that does not decrypt is reported by its backing path."""
    tree = TreeNames(kms, cipher_dir)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CipherDirError(f"{out_dir} exists and is not an empty directory")
    made = not out.exists()
    out.mkdir(mode=0o700, exist_ok=True)
    report = TreeReport()
    problems: list[tuple[str, str]] = []
    seen: dict[tuple[int, int], Path] = {}  # backing inode -> first restored name (hard links)
    dirs: list[tuple[Path, os.stat_result]] = []
    for entry in tree.walk(problems):
        dst = out / entry.plain.lstrip("/")
        st = entry.st
        try:
            if stat.S_ISDIR(st.st_mode):
                dst.mkdir(mode=0o700)
                dirs.append((dst, st))
                report.dirs += 1
                _copy_xattrs(kms, tree, entry.backing, dst, entry.plain)
                continue
            if stat.S_ISLNK(st.st_mode):
                os.symlink(tree.target_of(entry.backing), dst)
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
                report.links += 1
                continue
            inode = (st.st_dev, st.st_ino)
            if inode in seen:
                os.link(seen[inode], dst)
                continue
            if stat.S_ISREG(st.st_mode):
                decrypt(kms, entry.backing, dst)
                _copy_xattrs(kms, tree, entry.backing, dst, entry.plain)
                report.files += 1
            elif stat.S_ISFIFO(st.st_mode):
                os.mkfifo(dst)
            else:
                continue  # sockets, devices: not restored
            os.chmod(dst, stat.S_IMODE(st.st_mode))
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            seen[inode] = dst
        except (KmsError, EnvelopeError, OSError, names.BadName, xattrs.XattrFormatError) as e:
            report.failed.append((entry.plain, str(e) if not isinstance(e, OSError) else e.strerror or str(e)))
    for dst, st in reversed(dirs):  # children first: writing them changed their parent's mtime
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    if made:  # the top as the mount shows it (a folder given empty keeps its own mode)
        top = tree.root.stat()
        os.chmod(out, stat.S_IMODE(top.st_mode))
        os.utime(out, ns=(top.st_atime_ns, top.st_mtime_ns))
    report.failed.extend((f"(backing) {rel}", why) for rel, why in problems)
    return report


def _copy_xattrs(kms: Kms, tree: TreeNames, src: Path, dst: Path, plain: str) -> None:
    """Decrypt the user.* attributes of a backing file onto its restored copy."""
    try:
        stored_names = [n for n in os.listxattr(src, follow_symlinks=False) if n.startswith("user.")]
    except OSError:
        return
    for stored_name in stored_names:
        name = tree.xattr_of(stored_name)
        stored = os.getxattr(src, stored_name, follow_symlinks=False)
        header = xattrs.header_of(stored)
        os.setxattr(dst, name, xattrs.open_value(header, open_envelope(kms, header), name, stored), follow_symlinks=False)


def decrypt_to_stdout(kms: Kms, src: str | os.PathLike, *, progress: bool = False) -> int:
    """`kms fs decrypt FILE -`: every frame is authenticated before the first byte goes
    out (two passes), so a damaged file prints nothing."""
    with open(src, "rb") as f:
        header = _header(f.fileno(), src)
        length = os.fstat(f.fileno()).st_size
        if Layout(header.size, header.frame_size).plaintext_size(length) is None:
            raise DamagedFile(f"{src}: the file is cut short (length {length} fits no envelope)")
        cipher = open_envelope(kms, header)
        for index, plain in _tracked(frames(f.fileno(), header, cipher, length), header, length, src, progress, "checking"):
            if plain is None:
                raise DamagedFile(f"{src}: frame {index} failed authentication; nothing was written")
        written = 0
        for index, plain in frames(f.fileno(), header, cipher, length):
            if plain is None:  # changed between the passes
                raise DamagedFile(f"{src}: frame {index} failed authentication after the check; output is cut")
            sys.stdout.buffer.write(plain)
            written += len(plain)
        sys.stdout.buffer.flush()
    return written


def _tracked(pairs, header: Header, length: int, src, progress: bool, verb: str = "decrypting"):
    """(index, plaintext) pairs with a progress bar on a terminal (kmscore.progress)."""
    total = Layout(header.size, header.frame_size).plaintext_size(length)
    return track(pairs, total, f"{verb} {Path(src).name}", quiet=not progress, measure=lambda p: len(p[1] or b""))


# -- whole trees ---------------------------------------------------------------------------
def backing_files(cipher_dir: str | os.PathLike, encrypted_names: bool = False) -> list[Path]:
    """Every regular file of a cipher directory but its config (and, with encrypted
    names, the directories' values and long-name side files), in a stable order."""
    root = Path(cipher_dir)
    out = []
    for top, dirs, files in os.walk(root):
        dirs.sort()
        if encrypted_names and Path(top) == root and names.LONG_LINK_DIR in dirs:
            dirs.remove(names.LONG_LINK_DIR)  # long symlink targets, not envelopes
        for name in sorted(files):
            p = Path(top, name)
            if p.parent == root and name == cipherdir.CONFIG_NAME:
                continue
            if encrypted_names and name.startswith("keyhold.") and not names.is_long(name):
                continue
            if p.is_file() and not p.is_symlink():
                out.append(p)
    return out


@dataclass
class FsckReport:
    files: int = 0
    frames: int = 0
    names: int = 0  # names checked (format 2 with encrypted names)
    backing: dict[str, str] = field(default_factory=dict)  # plaintext path -> backing path (encrypted names)
    damage: list[tuple[str, int | None, str]] = field(default_factory=list)  # (file, frame, what)
    repaired: list[tuple[str, str]] = field(default_factory=list)  # (file, what was done)

    @property
    def clean(self) -> bool:
        return not self.damage


def fsck(
    kms: Kms, cipher_dir: str | os.PathLike, progress: Progress | None = None, repair: bool = False
) -> FsckReport:
    """Authenticate every frame of every file; report damage by file and frame.

    With `repair`, a file whose end is broken (see `repair`) is cut back to its longest
    authentic start and sealed again; the directory must not be mounted.
    """
    config, _ = _loaded_config(kms, cipher_dir)
    if repair and mounted_cipher_dir(cipher_dir):
        raise MountError(f"{cipher_dir} is mounted; unmount it before repairing")
    report = FsckReport()
    shown: dict[Path, str] = {}  # backing file -> its plaintext path, with encrypted names
    if config.encrypted_names:
        shown = _check_names(kms, cipher_dir, report, repair)
    paths = backing_files(cipher_dir, config.encrypted_names)
    for n, path in enumerate(paths):
        rel = shown.get(path) or str(path.relative_to(cipher_dir))
        if path in shown:
            report.backing[rel] = str(path.relative_to(cipher_dir))
        report.files += 1
        count, damage = _check_file(kms, path, rel)
        if damage and repair and path.stat().st_size == 0:
            _give_empty_envelope(kms, config, path)  # a create killed before its header
            count, damage = _check_file(kms, path, rel)
            report.repaired.append((rel, "empty backing file (a create interrupted) made a valid empty file"))
        elif damage and repair:
            try:
                done = repair_file(kms, path)
            except DamagedFile as e:
                damage.append((rel, None, str(e)))
            except (KmsError, EnvelopeError, OSError):
                pass  # already reported by the check
            else:
                if done is not None:
                    count, damage = _check_file(kms, path, rel)
                    report.repaired.append((rel, _repaired_text(path, done)))
        report.frames += count
        report.damage.extend(damage)
        if progress:
            progress(n + 1, len(paths))
    return report


def _check_names(kms: Kms, cipher_dir: str | os.PathLike, report: FsckReport, repair: bool) -> dict[Path, str]:
    """Every directory's value, every name, long-name side file and symlink target;
    returns the plaintext path (as fsck names files: relative) of every backing file."""
    tree = TreeNames(kms, cipher_dir)
    problems: list[tuple[str, str]] = []
    shown: dict[Path, str] = {}
    for entry in tree.walk(problems):
        report.names += 1
        shown.setdefault(entry.backing, entry.plain.lstrip("/"))
        if stat.S_ISLNK(entry.st.st_mode):
            try:
                tree.target_of(entry.backing)
            except names.BadName as e:
                problems.append((str(entry.backing.relative_to(tree.root)), f"symlink target: {e}"))
    problems += tree.orphan_targets()
    for rel, what in problems:
        if repair and what == "long-name side file without its entry":
            (tree.root / rel).unlink(missing_ok=True)  # what a crash between the two leaves
            report.repaired.append((rel, "orphan long-name side file removed"))
            continue
        if repair and (done := _repair_name(tree.root / rel, what)):
            report.repaired.append((rel, done))
            continue
        report.damage.append((rel, None, what))
    return shown


def _give_empty_envelope(kms: Kms, config, path: Path) -> None:
    """The mount writes a file's header right after creating it; a backing file of 0
    bytes is one whose create was killed in between (it never returned to anyone): it
    becomes what the create would have made, an empty file under the directory's key."""
    header, cipher = new_envelope(kms, config.key_id, config.frame_size)
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        if os.fstat(fd).st_size == 0:
            os.pwrite(fd, header.encode() + cipher.seal(0, b"", True), 0)
            os.fsync(fd)
    finally:
        os.close(fd)


def _repair_name(path: Path, what: str) -> str | None:
    """Undo what a crash left of a name change (`what` as fsck reported it); what was
    done, or None if it is not a crash's leftover or not safe to touch."""
    if what.startswith(LEFTOVER):
        if path.is_dir() and not path.is_symlink():
            if any(n != names.DIRIV_NAME for n in os.listdir(path)):
                return None  # a directory being made or removed holds nothing else
            path.chmod(0o700)
            (path / names.DIRIV_NAME).unlink(missing_ok=True)
            path.rmdir()
        else:
            path.unlink(missing_ok=True)
        return "removed: " + what.split(": ")[0]
    if what.startswith(names.DIRIV_NAME) and path.is_dir() and not os.listdir(path):
        # an empty directory without its value: made by a keyhold before mkdir was atomic
        # and killed in between; with no name in it, a new value loses nothing
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            name_map.write_iv_at(fd)
        finally:
            os.close(fd)
        return f"empty directory given a new {names.DIRIV_NAME}"
    return None


def _check_file(kms: Kms, path: Path, rel: str) -> tuple[int, list[tuple[str, int | None, str]]]:
    damage: list[tuple[str, int | None, str]] = []
    count = 0
    try:
        with open(path, "rb") as f:
            header = _header(f.fileno(), rel)
            length = os.fstat(f.fileno()).st_size
            if Layout(header.size, header.frame_size).plaintext_size(length) is None:
                damage.append((rel, None, f"cut short (length {length} fits no envelope)"))
            cipher = open_envelope(kms, header)
            for index, plain in frames(f.fileno(), header, cipher, length):
                count += 1
                if plain is None:
                    damage.append((rel, index, "failed authentication"))
    except DamagedFile as e:
        damage.append((rel, None, str(e).split(": ", 1)[-1]))
    except KmsError as e:
        damage.append((rel, None, f"data key does not open: {e}"))
    except OSError as e:
        damage.append((rel, None, f"unreadable: {e.strerror}"))
    return count, damage


def _repaired_text(path: Path, done) -> str:
    with open(path, "rb") as f:
        header = read_header(f.fileno())
        size = Layout(header.size, header.frame_size).plaintext_size(os.fstat(f.fileno()).st_size)
    return f"end repaired: {size} bytes kept, {done.cut} backing bytes after them dropped"


@dataclass
class RewrapReport:
    files: int = 0
    rewrapped: int = 0
    current: int = 0  # already under the target key's newest version
    failed: list[tuple[str, str]] = field(default_factory=list)
    xattrs: int = 0  # sealed extended attribute values re-wrapped (fsmount.xattr_rewrap)


def rewrap(
    kms: Kms, cipher_dir: str | os.PathLike, to_key: str | None = None, progress: Progress | None = None
) -> RewrapReport:
    """Re-wrap every file's DEK under the newest version of the directory's CMK (or
    `to_key`, which then becomes the directory's key). Only headers are rewritten, in
    place; an interrupted run leaves every file readable and can simply be run again.

    Safe on a mounted directory (to the newest version of the same key): the mount
    writes a header only when it creates a file, keeps each open file's data key in
    memory (a re-wrap does not change the key, only its wrapping), and unwraps new
    opens from whatever header is on disk. Moving to another key needs an unmount."""
    config, _ = _loaded_config(kms, cipher_dir)
    if to_key and mounted_cipher_dir(cipher_dir):
        # the running mount would go on making new files under the old key
        raise MountError(f"{cipher_dir} is mounted: to move it to {to_key}, unmount it (or remove its [[mount]] "
                         f"and reload), run this again, then mount it with key = \"{to_key}\"")
    target = kms.describe_key(to_key or config.key_id)
    report = RewrapReport()
    paths = backing_files(cipher_dir, config.encrypted_names)
    for n, path in enumerate(paths):
        rel = str(path.relative_to(cipher_dir))
        report.files += 1
        try:
            with open(path, "r+b") as f:
                header = _header(f.fileno(), rel)
                if peek_key(header.wrapped_dek) == (target.key_id, target.current_version):
                    report.current += 1
                else:
                    new = rewrap_header(kms, header, target.key_id)
                    if new.size != header.size:
                        raise DamagedFile(f"the re-wrapped header is {new.size} bytes, not {header.size}")
                    os.pwrite(f.fileno(), new.encode(), 0)
                    os.fsync(f.fileno())
                    report.rewrapped += 1
        except (KmsError, OSError) as e:
            report.failed.append((rel, str(e) if isinstance(e, KmsError) else e.strerror or str(e)))
        if progress:
            progress(n + 1, len(paths))
    report.xattrs, failed = xattr_rewrap.rewrap_values(kms, cipher_dir, target.key_id, target.current_version)
    report.failed.extend(failed)
    if not to_key or target.key_id == config.key_id:
        cipherdir.rewrap_name_key(kms, cipher_dir, config)  # (a move to another key re-wraps it below)
    if to_key and not report.failed and target.key_id != config.key_id:
        cipherdir.switch_key(kms, cipher_dir, config, target.key_id)
    return report


def _loaded_config(kms: Kms, cipher_dir: str | os.PathLike):
    loaded = cipherdir.load(cipher_dir)
    if loaded is None:
        raise CipherDirError(f"{cipher_dir} is not a keyhold cipher directory (no {cipherdir.CONFIG_NAME})")
    cipherdir.verify(kms, cipher_dir, *loaded)
    return loaded


def mounted_cipher_dir(cipher_dir: str | os.PathLike) -> bool:
    """True if a keyhold mount of `cipher_dir` is active on this host."""
    source = fsname(cipher_dir)
    return any(info.source == source for _, info in mountinfo())


def terminal_progress(label: str) -> Progress | None:
    """A progress bar on stderr (rich, via kmscore.progress); None off a terminal."""
    from kmscore.progress import count_bar

    return count_bar(label)
