"""fsmount: a FUSE mount whose files are envelope-encrypted in a cipher directory.

    kms mount CIPHERDIR MOUNTPOINT [--key KEY]      (or: kms-mount CIPHERDIR MOUNTPOINT)

Modules, by concern: `layout` (pure frame math), `openfile` (one open file: frames,
lock, tail write-back), `handles`, `keys` (CMK and data-key cache), `cipherdir` (the
authenticated config file), `fuse_files` / `fuse_tree` / `fuse_attrs` (FUSE operations
by group), `filesystem` (their assembly and libfuse binding), `kernel_cache` and
`revocation` (keeping the kernel's caches honest), `mount` (start/stop), `tools`
(offline info/decrypt/fsck/rewrap), `cli`, `plugin` (the keyhold front end).
Importing this package does not load libfuse; mounting does.
"""

from fsmount.errors import CipherDirError, DamagedFile, FsMountError, KeyMismatch, MountError

__all__ = ["FsMountError", "CipherDirError", "KeyMismatch", "MountError", "DamagedFile"]
