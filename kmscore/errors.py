"""One exception hierarchy for kmscore.

Every message is meant to be shown to an operator as is: it names the key and the
rule that refused the request. Authentication failures are deliberately opaque
(`InvalidCiphertext` never says *why*), as in pyca/cryptography.
"""

from __future__ import annotations


class KmsError(Exception):
    """Base of every error kmscore raises on purpose."""

    exit_code = 1


class NotFound(KmsError):
    """No key with that id or alias (or it was destroyed)."""

    exit_code = 3


class AlreadyExists(KmsError):
    """An alias is already taken."""


class InvalidRequest(KmsError):
    """Bad input: a value out of range, a malformed argument, a forbidden alias."""

    exit_code = 2


class KeyRuleViolation(KmsError):
    """The key's type, spec, usage or origin does not allow this operation."""

    exit_code = 4


class KeyUnavailable(KmsError):
    """The key exists but its state (disabled, pending deletion, no material) forbids use."""

    exit_code = 5


class KeyDisabled(KeyUnavailable):
    """The key is Disabled (an operator's choice, undone by enabling it): wire APIs tell
    this apart from the other states (AWS: DisabledException vs KMSInvalidStateException)."""


class InvalidCiphertext(KmsError):
    """A ciphertext, signature blob or token failed authentication or is malformed."""

    exit_code = 6


class IncorrectKey(InvalidCiphertext):
    """The ciphertext is sound but was made with another key than the one named."""


class KeyImportError(KmsError):
    """Key material could not be imported (bad token, wrong wrapping, other material).
    Raised as such when the wrapped material cannot be unwrapped."""

    exit_code = 7


class InvalidImportToken(KeyImportError):
    """The import token is unknown, used, for another key, or failed authentication."""


class ExpiredImportToken(KeyImportError):
    """The import token's 24 hours are over."""


class IncorrectKeyMaterial(KeyImportError):
    """The unwrapped material does not fit the key's spec, or is not the material the key
    held before."""


class StoreError(KmsError):
    """The key store or root of trust cannot be used (wrong root key, corrupt file)."""

    exit_code = 8


class AuditError(KmsError):
    """The audit log is broken, cut or cannot be written."""

    exit_code = 9


# -- the remote facade (kmscore.remote) ------------------------------------------------------
class KmsUnreachable(KmsError):
    """The remote KMS (`[kms] url`) cannot be reached or did not answer as a keyhold
    server: nothing was done, and a front end fails closed until it is back."""

    exit_code = 10


class AccessDenied(KmsError):
    """The remote KMS refused the caller: its access key or signature is not valid, or
    its policy does not allow this operation on this key."""

    exit_code = 11


def as_kms_error(e: BaseException) -> KmsError:
    """kmscore's own error for an exception raised below the facade, so that callers
    of the Python API catch one hierarchy: misuse (wrong types, text that is not
    Unicode) becomes InvalidRequest, a failing SQLite store StoreError, anything else
    KmsError naming the internal error (a bug: please report it)."""
    if isinstance(e, KmsError):
        return e
    import sqlite3  # the store's engine; imported here to keep this module dependency-free

    if isinstance(e, sqlite3.Error):
        return StoreError(f"the key store failed: {e}")
    if isinstance(e, UnicodeError):
        return InvalidRequest("text arguments must be valid Unicode (UTF-8): got undecodable bytes")
    if isinstance(e, (TypeError, ValueError, OverflowError)):
        return InvalidRequest(f"invalid argument: {e}")
    return KmsError(f"internal error: {type(e).__name__}: {e} (please report this)")


__all__ = [
    "KmsError",
    "NotFound",
    "AlreadyExists",
    "InvalidRequest",
    "KeyRuleViolation",
    "KeyUnavailable",
    "InvalidCiphertext",
    "IncorrectKey",
    "KeyDisabled",
    "KeyImportError",
    "InvalidImportToken",
    "ExpiredImportToken",
    "IncorrectKeyMaterial",
    "StoreError",
    "AuditError",
    "KmsUnreachable",
    "AccessDenied",
]
