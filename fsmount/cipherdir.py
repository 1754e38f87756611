"""The cipher directory's config file: which CMK it was set up with, authenticated.

`CIPHERDIR/keyhold-fsmount.conf` is JSON. Its `seal` field is a KMS ciphertext made with
the CMK over a fixed text, with a digest of every other field as encryption context:
editing the file (say, to point it at another key) or copying it from another cipher
directory makes the seal fail to open. The file holds no secret: the name key of a
format-2 directory is in it wrapped under the CMK (a KMS data-key blob bound to the
directory's id), like every file's DEK in its header.

Format 1 directories (plain names) keep their config as it is; a new directory is set
up at format 2 with the name scheme asked for (`NAME_SCHEMES`, default encrypted).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from kmscore.blob import peek_key
from kmscore.errors import InvalidCiphertext
from kmscore.facade import Kms

from fsmount.errors import CipherDirError, KeyMismatch

CONFIG_NAME = "keyhold-fsmount.conf"
FORMAT = "keyhold-fsmount"
VERSION = 2  # what new cipher directories get
VERSIONS = (1, 2)  # what this keyhold mounts
DEFAULT_KEY = "fsmount/default"
_SEAL_TEXT = {1: b"keyhold fsmount cipher directory v1", 2: b"keyhold fsmount cipher directory v2"}
# name scheme -> (needs a name key, per-directory values): a rule table, see fsmount.names
NAME_SCHEMES = {"encrypted": (True, True), "deterministic": (True, False), "plain": (False, False)}
DEFAULT_NAMES = "encrypted"
_NAMES_CONTEXT = "keyhold:fsmount-names"
_MAX_CONFIG = 64 * 1024
NAME_KEY_LEN = 64  # fsmount.names.KEY_LEN (AES-SIV-512)
DIRIV_NAME = "keyhold.diriv"  # fsmount.names.DIRIV_NAME


@dataclass(frozen=True)
class CipherDirConfig:
    dir_id: str  # random, 16 bytes hex: tells cipher directories apart
    key_id: str  # the CMK new files are wrapped under
    key_alias: str | None  # its alias when the config was written (informative)
    frame_size: int  # plaintext bytes per frame of new files
    names: str = "plain"  # file name scheme (NAME_SCHEMES); "plain" is the only one in version 1
    created: str = ""
    version: int = 1  # bound by the seal's text, not hashed (as in version 1)
    name_key: str | None = None  # v2, encrypted/deterministic: base64 of the wrapped name key

    def context(self) -> dict[str, str]:
        """The seal's encryption context: a digest of every field but the version (the
        seal's text names it); `name_key` only when there is one, so a version 1 config
        hashes exactly the fields it was sealed with."""
        data = asdict(self)
        del data["version"]
        if data["name_key"] is None:
            del data["name_key"]
        fields = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        return {"keyhold:cipherdir": hashlib.sha256(fields).hexdigest()}

    @property
    def encrypted_names(self) -> bool:
        return NAME_SCHEMES.get(self.names, (False, False))[0]

    @property
    def per_directory_iv(self) -> bool:
        return NAME_SCHEMES.get(self.names, (False, False))[1]


def config_path(cipher_dir: str | os.PathLike) -> Path:
    return Path(cipher_dir) / CONFIG_NAME


def load(cipher_dir: str | os.PathLike) -> tuple[CipherDirConfig, bytes] | None:
    """The config and its seal, or None if the directory has no config file."""
    path = config_path(cipher_dir)
    try:
        raw = path.read_bytes()[: _MAX_CONFIG + 1]
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CipherDirError(f"cannot read {path}: {e.strerror}") from None
    try:
        if len(raw) > _MAX_CONFIG:
            raise ValueError("too large")
        data = json.loads(raw)
        if data.get("format") != FORMAT:
            raise ValueError("not a keyhold-fsmount config")
        version = data.get("version")
        if version not in VERSIONS:
            raise CipherDirError(f"{path}: unsupported version {version!r} (this keyhold reads {', '.join(map(str, VERSIONS))})")
        seal = base64.b64decode(data["seal"], validate=True)
        config = CipherDirConfig(
            dir_id=str(data["dir_id"]),
            key_id=str(data["key_id"]),
            key_alias=None if data.get("key_alias") is None else str(data["key_alias"]),
            frame_size=int(data["frame_size"]),
            names=str(data.get("names", "plain")),
            created=str(data.get("created", "")),
            version=int(version),
            name_key=None if data.get("name_key") is None else str(data["name_key"]),
        )
    except CipherDirError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise CipherDirError(f"{path} is damaged ({e}); restore it from a backup") from None
    if (config.version == 1 and config.names != "plain") or config.names not in NAME_SCHEMES:
        raise CipherDirError(f"{path}: name scheme {config.names!r} is not supported by this keyhold "
                             f"at format version {config.version}")
    if config.encrypted_names != (config.name_key is not None):
        raise CipherDirError(f"{path} is damaged (name scheme {config.names!r} with{'out' if config.name_key is None else ''} "
                             "a name key); restore it from a backup")
    return config, seal


def verify(kms: Kms, cipher_dir: str | os.PathLike, config: CipherDirConfig, seal: bytes) -> None:
    """Raise CipherDirError unless the seal opens under the config's own key and fields."""
    try:
        text = kms.decrypt_data(seal, config.context(), key=config.key_id)
    except InvalidCiphertext:
        text = None
    if text != _SEAL_TEXT[config.version]:
        raise CipherDirError(
            f"{config_path(cipher_dir)} was altered or belongs to another cipher directory "
            "(its seal does not open); restore it from a backup"
        )


def render(kms: Kms, config: CipherDirConfig) -> str:
    """The config file's text, sealed (a new seal each time: KMS ciphertexts are random)."""
    seal = kms.encrypt_data(config.key_id, _SEAL_TEXT[config.version], config.context())
    fields = asdict(config)
    del fields["version"]
    if fields["name_key"] is None:
        del fields["name_key"]
    data = {"format": FORMAT, "version": config.version, **fields, "seal": base64.b64encode(seal).decode()}
    return json.dumps(data, indent=2) + "\n"


def new_config(kms: Kms, key: str | None, frame_size: int, names: str) -> CipherDirConfig:
    """A new directory's config (format 2), with a fresh name key when names are encrypted."""
    meta = kms.describe_key(key) if key else kms.default_key("fsmount")
    config = CipherDirConfig(
        dir_id=os.urandom(16).hex(),
        key_id=meta.key_id,
        key_alias=meta.alias,
        frame_size=frame_size,
        names=names,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        version=VERSION,
    )
    if config.encrypted_names:
        config = replace(config, name_key=_wrap_name_key(kms, config.key_id, config.dir_id, os.urandom(NAME_KEY_LEN)))
    return config


def write(kms: Kms, cipher_dir: str | os.PathLike, config: CipherDirConfig) -> None:
    """Seal and write the config atomically."""
    text = render(kms, config)
    path = config_path(cipher_dir)
    tmp = path.with_name(f".{CONFIG_NAME}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CipherDirError(f"cannot write {path}: {e.strerror}") from None


def prepare(
    kms: Kms, cipher_dir: str | os.PathLike, key: str | None, frame_size: int, force_key: bool = False,
    names: str | None = None,
) -> CipherDirConfig:
    """The verified config of `cipher_dir`, set up on first use.

    An empty directory is set up with `key` (default fsmount/default) at format 2 with
    name scheme `names` (default encrypted). A set-up one keeps its key and its scheme:
    asking for another key is refused unless `force_key`, which makes the new key the
    one new files are wrapped under (existing files keep theirs); asking for another
    name scheme is refused (names are not re-encrypted in place: copy the tree).
    """
    if names is not None and names not in NAME_SCHEMES:
        raise CipherDirError(f"unknown name scheme {names!r} (one of {', '.join(NAME_SCHEMES)})")
    path = Path(cipher_dir)
    if not path.is_dir():
        raise CipherDirError(f"cipher directory {cipher_dir} does not exist or is not a directory")
    loaded = load(path)
    if loaded is None:
        if any(p.name != DIRIV_NAME for p in path.iterdir()):  # (a set-up that crashed leaves the value)
            raise CipherDirError(
                f"{cipher_dir} is not empty and has no {CONFIG_NAME}: not a keyhold cipher directory "
                "(use an empty directory for a new one)"
            )
        config = new_config(kms, key, frame_size, names or DEFAULT_NAMES)
        if config.per_directory_iv:
            _top_value(path)
        write(kms, path, config)
        return config
    config, seal = loaded
    verify(kms, path, config, seal)
    if names is not None and names != config.names:
        raise CipherDirError(
            f"{cipher_dir} was set up with names = {config.names!r} (format {config.version}), not {names!r}: "
            "a cipher directory keeps its name scheme; copy the tree into a new one (docs/formats/fsmount.md)"
        )
    if key is None:
        return config
    meta = kms.describe_key(key)
    if meta.key_id == config.key_id:
        return config
    if not force_key:
        raise KeyMismatch(
            f"{cipher_dir} was set up with key {config.key_alias or config.key_id} ({config.key_id}), "
            f"not {key}; mount without --key, run `kms fs rewrap {cipher_dir} --to-key {key}`, "
            "or pass --force-key to wrap new files under the new key"
        )
    return switch_key(kms, path, config, key)


def _top_value(path: Path) -> None:
    """The top directory's per-directory value (fsmount.name_map), before the config."""
    from fsmount.name_map import write_iv_at

    fd = os.open(path, os.O_PATH | os.O_DIRECTORY)
    try:
        try:
            os.unlink(DIRIV_NAME, dir_fd=fd)  # left by a set-up that crashed: not used yet
        except FileNotFoundError:
            pass
        write_iv_at(fd)
    finally:
        os.close(fd)


def switch_key(kms: Kms, cipher_dir: str | os.PathLike, config: CipherDirConfig, key: str) -> CipherDirConfig:
    """Make `key` the cipher directory's key for new files."""
    meta = kms.describe_key(key)
    new = replace(config, key_id=meta.key_id, key_alias=meta.alias)
    if config.name_key is not None:
        new = replace(new, name_key=_wrap_name_key(kms, meta.key_id, config.dir_id, name_key(kms, config)))
    write(kms, cipher_dir, new)
    return new


def rewrap_name_key(kms: Kms, cipher_dir: str | os.PathLike, config: CipherDirConfig) -> bool:
    """Re-wrap the name key under the newest version of the config's CMK (kms fs rewrap);
    True if the config was rewritten."""
    if config.name_key is None:
        return False
    meta = kms.describe_key(config.key_id)
    if peek_key(base64.b64decode(config.name_key)) == (meta.key_id, meta.current_version):
        return False
    write(kms, cipher_dir, replace(config, name_key=_wrap_name_key(kms, config.key_id, config.dir_id, name_key(kms, config))))
    return True


def name_key(kms: Kms, config: CipherDirConfig) -> bytes:
    """The plaintext name key of a format-2 directory with encrypted names."""
    if config.name_key is None:
        raise CipherDirError("this cipher directory has plain names (no name key)")
    try:
        return kms.decrypt_datakey(base64.b64decode(config.name_key), {_NAMES_CONTEXT: config.dir_id}, key=config.key_id)
    except InvalidCiphertext:
        raise CipherDirError("the name key in the config does not open (altered config)") from None


def _wrap_name_key(kms: Kms, key_id: str, dir_id: str, key: bytes) -> str:
    return base64.b64encode(kms.encrypt_datakey(key_id, key, {_NAMES_CONTEXT: dir_id})).decode()
