"""The caller of a signed request, whatever the signing scheme: the Principal of the
access key that signed it, once the signature holds and the replay memory has not seen
it. One function, so that every scheme (auth/sigv4, auth/sdkhmac) looks the key up and
checks replays the same way."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from kmsserve.errors import Replayed

if TYPE_CHECKING:
    from kmsserve.wire import Principal, ServeContext


class Signed(Protocol):
    """What a scheme's `verify` returns (sigv4.Signed, sdkhmac.Signed)."""

    signature: str
    signed_at: float


def authenticate(ctx: ServeContext, verify: Callable[[Callable[[str], str | None]], Signed], *,
                 repeats: bool = True, replayed: str = "this signature was already used") -> Principal:
    """`verify(secret_of)` checks the signature with the server's access keys (raising
    AuthFailed or RequestExpired); then a signature seen before is Replayed(`replayed`)
    unless `repeats` lets an immediate honest repeat through (kmsserve.auth.replay)."""
    found: dict[str, Principal] = {}

    def secret_of(access_key_id: str) -> str | None:
        hit = ctx.secret_of(access_key_id)
        if hit is None:
            return None
        found["principal"] = hit[0]
        return hit[1]

    signed = verify(secret_of)
    principal = found["principal"]
    if ctx.seen(principal, signed.signature, signed.signed_at, repeats):
        raise Replayed(replayed)
    return principal
