"""One exception hierarchy for kmsserve: what a request can fail on before (or instead
of) reaching the facade. Each wire API maps these, and kmscore's own errors, onto its
documented error codes (its `errors` table). Messages are safe to send to the client:
they never say which part of a signature was wrong or whether an access key exists."""

from __future__ import annotations


class ServeError(Exception):
    """Base of every error kmsserve raises on purpose."""


class MalformedRequest(ServeError):
    """The body or a header cannot be parsed, or a field has the wrong type."""


class RequestTooLarge(MalformedRequest):
    """A body over the server's limit (kmsserve.app.MAX_BODY), or one that did not arrive
    in time (kmsserve.app.BODY_TIMEOUT)."""


class UnknownOperation(ServeError):
    """The API has no such operation (or keyhold does not offer it)."""


class AuthFailed(ServeError):
    """No valid signature: missing, wrong, unknown or disabled access key. Deliberately
    one class with one message, so a client cannot probe which access keys exist."""


class RequestExpired(AuthFailed):
    """Signed outside the scheme's clock-skew window (15 minutes for SigV4)."""


class Replayed(AuthFailed):
    """A signature that was already used inside its window."""


class ReplayWindowFull(Replayed):
    """The replay memory had to forget signatures that are still inside their window, so a
    request signed before the ones it forgot can no longer be told from a replay: refused
    (kmsserve.auth.replay)."""


class AccessDenied(ServeError):
    """Authenticated, but the access key's policy does not allow this operation on this key."""
