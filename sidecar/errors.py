"""Sidecar errors. Each carries the HTTP status the client gets and a short reason code.

The message is shown to the client and logged, so it never holds body bytes.
"""

from __future__ import annotations

from kmscore.errors import KmsError


class SidecarError(KmsError):
    """A rule could not be applied: the request is answered with `status`, nothing is forwarded."""

    status = 500
    reason = "internal"

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if reason is not None:
            self.reason = reason


class BadBody(SidecarError):
    """The body is not what the rule needs (not JSON, a field missing, a malformed token)."""

    status = 422
    reason = "bad_body"


class TooLarge(SidecarError):
    """The body is over the configured buffering limit for a rule that needs all of it."""

    status = 413
    reason = "too_large"


class BadSignature(SidecarError):
    """A signature is missing, invalid or stale."""

    status = 401
    reason = "bad_signature"


class ConfigError(KmsError):
    """The proxy configuration is invalid; the message names the place in the config."""

    exit_code = 2
