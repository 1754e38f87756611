"""What every wire API is made of, and the one dispatcher that interprets them (sans-IO).

An API is a table of `Operation` rows (operation name -> facade method, request fields
-> arguments, result -> response fields, which keys the call touches) plus the few
things that differ between APIs: how a request names its operation, how it is signed,
how fields and errors are written. Adding an operation is a row, not a handler; the
dispatcher below is the only code path from a request to the facade, so every request
is authenticated, authorized and audited the same way whatever API it came by.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kmscore.errors import KmsError, NotFound
from kmsserve.errors import AccessDenied, MalformedRequest, ServeError, UnknownOperation

log = logging.getLogger("kmsserve")


@dataclass(frozen=True)
class WireRequest:
    """An HTTP request as received: raw path and query, headers with lower-case names."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    client: str = ""

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for n, v in self.headers if n == name), None)


@dataclass(frozen=True)
class WireResponse:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _no_keys(args: Mapping[str, Any]) -> tuple[str, ...]:
    return ()


class NewAlias(str):
    """An alias a call gives a key (CreateAlias, update_key_alias), named in `keys` like a
    key: the caller's policy must allow the action on that alias too, or a caller allowed
    to rename one key could move it under any alias prefix (where another access key's
    policy would then let its application use a key the caller controls). Not looked up:
    it names no key yet."""


PINNED_ARGS = ("key", "source_key", "destination_key")
"""The arguments that name a key: once the policy has been checked against the key a
name resolves to, the facade is called with that key's id, not the name, so an alias
moved by another client between the check and the call cannot make the call use a key
the policy was never asked about (time of check = time of use)."""


def pinned(args: Mapping[str, Any], resolved: Mapping[str, str | None]) -> dict[str, Any]:
    """`args` with every key name the policy was checked for replaced by its key id (a
    default key not made yet keeps its name: `*/default` aliases cannot be given away)."""
    out = dict(args)
    for name in PINNED_ARGS:
        value = out.get(name)
        if isinstance(value, str) and not isinstance(value, NewAlias) and resolved.get(value):
            out[name] = resolved[value]
    return out


@dataclass(frozen=True)
class Operation:
    """One row of an API's table."""

    name: str
    """The API's own name for it (`Encrypt`, `encrypt-data`)."""
    method: str | Callable[..., Any]
    """The facade method it calls (`encrypt_data`), or `f(kms, **args)` for an operation
    made of several facade calls."""
    args: Callable[[Mapping[str, Any]], dict[str, Any]]
    """Request fields -> the facade method's keyword arguments (MalformedRequest or
    kmscore.InvalidRequest on a bad field)."""
    result: Callable[[Any, Mapping[str, Any]], dict[str, Any]]
    """(facade result, the arguments it was called with) -> response fields."""
    keys: Callable[[Mapping[str, Any]], tuple[str | tuple[str, str | None], ...]] = _no_keys
    """The keys the call touches, as the facade names them (id or alias), from the
    arguments: what the caller's policy is checked against, each for `action`, or as
    (action, key) where one call does two things (ReEncrypt: decrypt_data on the source
    key, encrypt_data on the destination; (action, None) is the action on no key). A Decrypt that names no key names the one
    inside its ciphertext (kmscore.blob.peek_key)."""
    action: str = ""
    """The policy's name for the operation; defaults to the facade method."""

    def __post_init__(self) -> None:
        if not self.action:
            if not isinstance(self.method, str):
                raise TypeError(f"{self.name}: an operation made of several calls needs an action")
            object.__setattr__(self, "action", self.method)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    access_key_id: str
    name: str
    policy: Any = field(repr=False, default=None)
    """kmsserve.auth.policy.Policy: `allows(action, key_id, alias) -> bool`."""

    @property
    def audit_name(self) -> str:
        return f"access-key {self.access_key_id} ({self.name})"


class WireApi(Protocol):
    """One wire API: its table and the few things that differ between APIs."""

    name: str
    operations: Mapping[str, Operation]

    def accepts(self, req: WireRequest) -> bool:
        """Is this request for this API (path, headers)?"""

    def operation(self, req: WireRequest) -> str:
        """The operation name the request asks for (MalformedRequest if none)."""

    def authenticate(self, req: WireRequest, ctx: "ServeContext") -> Principal:
        """Check the request's signature; AuthFailed (or a subclass) if it does not hold."""

    def fields(self, req: WireRequest) -> dict[str, Any]:
        """The request's fields (its JSON body), MalformedRequest if it has none."""

    def respond(self, op: Operation, fields: dict[str, Any], request_id: str) -> WireResponse:
        """The success response."""

    def fail(self, error: Exception, request_id: str) -> WireResponse:
        """The API's documented error for a ServeError or KmsError (anything else: its
        internal-error answer, without detail)."""


class ServeContext(Protocol):
    """What the dispatcher needs from the server (kmsserve.app builds it)."""

    kms: Any
    """The facade (kmscore.Kms)."""

    def now(self) -> float:
        """Wall-clock time, for signature windows."""

    def secret_of(self, access_key_id: str) -> tuple[Principal, str] | None:
        """The principal and signing secret of a usable access key; None if unknown or disabled."""

    def seen(self, principal: Principal, signature: str, signed_at: float, repeats: bool = True) -> bool:
        """Remember a signature until its window closes; True if it was already used
        (`repeats`: an identical request within a few seconds is an honest repeat, for
        APIs whose clients sign no nonce; kmsserve.auth.replay)."""

    def resolve(self, key: str) -> tuple[str | None, str | None]:
        """(key id, alias) of a key named by id or alias (Kms.key_name)."""

    def audit(self, principal: Principal | None, operation: str, key_id: str | None, outcome: str) -> None:
        """Record a request that was refused before it reached the facade."""

    def calling_as(self, principal: Principal) -> Any:
        """A context manager: facade calls inside it are audited as `principal`."""


def json_object(body: bytes, refuse: Callable[[str], Exception] = MalformedRequest,
                not_json: str = "the body is not JSON",
                not_object: str = "the body is not a JSON object") -> dict[str, Any]:
    """A request body as the JSON object every API's `fields` reads (an empty body is {}),
    or `refuse(message)` raised. One place for what json.loads lets through besides
    ValueError: RecursionError, on nesting deeper than Python's stack."""
    try:
        data = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        raise refuse(not_json) from None
    if not isinstance(data, dict):
        raise refuse(not_object)
    return data


def _as_named(key: str) -> tuple[str | None, str | None]:
    """(key id, alias) as a name that resolves to no key reads: an id, or an alias."""
    try:
        return str(uuid.UUID(key)), None
    except ValueError:
        return None, key


def dispatch(api: WireApi, req: WireRequest, ctx: ServeContext) -> WireResponse:
    """Authenticate, find the operation, authorize, call the facade, answer; the one path
    from a request to the facade. Blocking: the ASGI app runs it in a worker thread.

    Every refusal before the facade is audited here (the facade records its own), as the
    access key that signed the request, or "unauthenticated"; an operation name the API
    does not have is recorded as `<api>.(unknown)`, so a caller cannot write arbitrary
    text into the audit log."""
    request_id = str(uuid.uuid4())
    principal: Principal | None = None
    name, called, refused_key = "?", False, None
    try:
        name = api.operation(req)
        principal = api.authenticate(req, ctx)
        op = api.operations.get(name)
        if op is None:
            raise UnknownOperation(f"{api.name} has no operation {name!r}")
        args = op.args(api.fields(req))
        wanted = [(op.action, k) if isinstance(k, str) else k for k in op.keys(args)]
        policy = principal.policy

        def refuse(key: str | None, action: str) -> AccessDenied:
            # the key as the caller named it: never the id behind an alias it may not use
            on = f" on key {key}" if key else ""
            what = op.name if action == op.action else f"{op.name} ({action})"
            return AccessDenied(f"access key {principal.access_key_id} is not allowed to call {what}{on}")

        def resolve(action: str, key: str | None) -> tuple[str | None, str | None]:
            if key is None:  # (action, None): the action on no key, beside others
                return None, None
            if isinstance(key, NewAlias):
                return None, str(key)
            try:
                return ctx.resolve(key)
            except NotFound:
                # a name no key has is refused like a key the policy does not allow, unless
                # the policy could allow it: whether a key exists outside one's policy is
                # not for the caller to find out
                if policy is not None and policy.allows(action, *_as_named(key)):
                    raise
                raise refuse(key, action) from None

        checks = [(action, k, *resolve(action, k)) for action, k in wanted] or [(op.action, None, None, None)]
        args = pinned(args, {name: key_id for _, name, key_id, _ in checks if name is not None})
        for action, named, key_id, alias in checks:
            if policy is None or not policy.allows(action, key_id, alias):
                refused_key = key_id
                raise refuse(named, action)
        called = True
        with ctx.calling_as(principal):
            call = getattr(ctx.kms, op.method) if isinstance(op.method, str) else functools.partial(op.method, ctx.kms)
            result = call(**args)
        return api.respond(op, op.result(result, args), request_id)
    except (ServeError, KmsError) as e:
        shown = name if name in api.operations else "(unknown)"
        if not called:  # the facade records its own refusals
            try:
                ctx.audit(principal, f"{api.name}.{shown}", refused_key, f"denied: {type(e).__name__}")
            except KmsError as audit_error:  # fail closed: no answer but the internal error
                log.error("%s %s.%s: the refusal could not be audited: %s", request_id, api.name, shown, audit_error)
                return api.fail(RuntimeError("internal error"), request_id)
        log.info("%s %s.%s refused: %s (%s)", request_id, api.name, shown, type(e).__name__,
                 "unauthenticated" if principal is None else principal.access_key_id)
        return api.fail(e, request_id)
    except Exception:  # a bug: logged with its traceback here, never sent to the client
        log.exception("%s %s.%s: internal error", request_id, api.name, name if name in api.operations else "(unknown)")
        return api.fail(RuntimeError("internal error"), request_id)
