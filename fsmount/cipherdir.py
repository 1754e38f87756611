"""The cipher directory's config file: which CMK it was set up with, authenticated.

`CIPHERDIR/keyhold-fsmount.conf` is JSON. Its `seal` field is a KMS ciphertext made with
the CMK over a fixed text, with a digest of every other field as encryption context:
editing the file (say, to point it at another key) or copying it from another cipher
directory makes the seal fail to open. The file holds no secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from kmscore.errors import InvalidCiphertext
from kmscore.facade import Kms

from fsmount.errors import CipherDirError, KeyMismatch

CONFIG_NAME = "keyhold-fsmount.conf"
FORMAT = "keyhold-fsmount"
VERSION = 1
DEFAULT_KEY = "fsmount/default"
_SEAL_TEXT = b"keyhold fsmount cipher directory v1"
_MAX_CONFIG = 64 * 1024


@dataclass(frozen=True)
class CipherDirConfig:
    dir_id: str  # random, 16 bytes hex: tells cipher directories apart
    key_id: str  # the CMK new files are wrapped under
    key_alias: str | None  # its alias when the config was written (informative)
    frame_size: int  # plaintext bytes per frame of new files
    names: str = "plain"  # file name scheme; "plain" is the only one in version 1
    created: str = ""

    def context(self) -> dict[str, str]:
        fields = json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()
        return {"keyhold:cipherdir": hashlib.sha256(fields).hexdigest()}


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
        if data.get("version") != VERSION:
            raise CipherDirError(f"{path}: unsupported version {data.get('version')!r} (this keyhold reads {VERSION})")
        seal = base64.b64decode(data["seal"], validate=True)
        config = CipherDirConfig(
            dir_id=str(data["dir_id"]),
            key_id=str(data["key_id"]),
            key_alias=None if data.get("key_alias") is None else str(data["key_alias"]),
            frame_size=int(data["frame_size"]),
            names=str(data.get("names", "plain")),
            created=str(data.get("created", "")),
        )
    except CipherDirError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise CipherDirError(f"{path} is damaged ({e}); restore it from a backup") from None
    if config.names != "plain":
        raise CipherDirError(f"{path}: name scheme {config.names!r} is not supported by this keyhold")
    return config, seal


def verify(kms: Kms, cipher_dir: str | os.PathLike, config: CipherDirConfig, seal: bytes) -> None:
    """Raise CipherDirError unless the seal opens under the config's own key and fields."""
    try:
        text = kms.decrypt_data(seal, config.context(), key=config.key_id)
    except InvalidCiphertext:
        text = None
    if text != _SEAL_TEXT:
        raise CipherDirError(
            f"{config_path(cipher_dir)} was altered or belongs to another cipher directory "
            "(its seal does not open); restore it from a backup"
        )


def write(kms: Kms, cipher_dir: str | os.PathLike, config: CipherDirConfig) -> None:
    """Seal and write the config atomically."""
    seal = kms.encrypt_data(config.key_id, _SEAL_TEXT, config.context())
    data = {"format": FORMAT, "version": VERSION, **asdict(config), "seal": base64.b64encode(seal).decode()}
    path = config_path(cipher_dir)
    tmp = path.with_name(f".{CONFIG_NAME}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CipherDirError(f"cannot write {path}: {e.strerror}") from None


def prepare(
    kms: Kms, cipher_dir: str | os.PathLike, key: str | None, frame_size: int, force_key: bool = False
) -> CipherDirConfig:
    """The verified config of `cipher_dir`, set up on first use.

    An empty directory is set up with `key` (default fsmount/default). A set-up one
    keeps its key: asking for another is refused unless `force_key`, which makes the
    new key the one new files are wrapped under (existing files keep theirs).
    """
    path = Path(cipher_dir)
    if not path.is_dir():
        raise CipherDirError(f"cipher directory {cipher_dir} does not exist or is not a directory")
    loaded = load(path)
    if loaded is None:
        if any(path.iterdir()):
            raise CipherDirError(
                f"{cipher_dir} is not empty and has no {CONFIG_NAME}: not a keyhold cipher directory "
                "(use an empty directory for a new one)"
            )
        meta = kms.describe_key(key) if key else kms.default_key("fsmount")
        config = CipherDirConfig(
            dir_id=os.urandom(16).hex(),
            key_id=meta.key_id,
            key_alias=meta.alias,
            frame_size=frame_size,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        write(kms, path, config)
        return config
    config, seal = loaded
    verify(kms, path, config, seal)
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


def switch_key(kms: Kms, cipher_dir: str | os.PathLike, config: CipherDirConfig, key: str) -> CipherDirConfig:
    """Make `key` the cipher directory's key for new files."""
    meta = kms.describe_key(key)
    new = replace(config, key_id=meta.key_id, key_alias=meta.alias)
    write(kms, cipher_dir, new)
    return new
