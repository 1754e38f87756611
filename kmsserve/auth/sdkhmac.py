"""The reference cloud's AK/SK request signing, `SDK-HMAC-SHA256`, both ends, sans-IO.

What its SDK (huaweicloudsdkcore/signer/signer.py) computes, and so what `verify`
recomputes from the request as the server received it:

    CanonicalRequest = METHOD \\n URI \\n QUERY \\n HEADERS \\n SIGNED \\n hex(sha256(body))
        URI     the path, percent-decoded, each segment encoded again (only `~` kept),
                always ending in `/`
        QUERY   (name, value) pairs, decoded, sorted, encoded again, joined by `&`
        HEADERS `name:value\\n` per signed header, name lower-case, value stripped
        SIGNED  the signed header names, lower-case, sorted, joined by `;`
    StringToSign = "SDK-HMAC-SHA256" \\n X-Sdk-Date \\n hex(sha256(CanonicalRequest))
    Signature    = hex(HMAC-SHA256(secret, StringToSign))
    Authorization: SDK-HMAC-SHA256 Access=<AK>, SignedHeaders=<SIGNED>, Signature=<hex>

What is checked beyond the signature: `host` and `x-sdk-date` are signed; a signed
header is sent exactly once (a second copy could be the one an intermediary reads);
the X-Sdk-Date is within 15 minutes of the server's clock (as the reference cloud's
gateway); the body is covered (an `X-Sdk-Content-Sha256` header, which the SDK sends as
`UNSIGNED-PAYLOAD` for non-JSON bodies, must be the body's real hash: a KMS request is
JSON and its body is what matters). The signature is compared in constant time and is
computed even for an unknown access key, so timing does not tell whether one exists.

Replays: the scheme carries no nonce, only the second of signing and the body, so
identical requests made in the same second carry the same signature and cannot be told
from a replay. `authenticate` asks the server's replay memory (ServeContext.seen), which
refuses a signature used before (an immediate honest repeat aside, if the memory allows
one); the vendor's request bodies carry an optional `sequence` (a fresh UUID per
request) that makes every request distinct.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from kmsserve.auth import caller
from kmsserve.errors import AuthFailed, RequestExpired

if TYPE_CHECKING:
    from kmsserve.wire import Principal, ServeContext, WireRequest

ALGORITHM = "SDK-HMAC-SHA256"
DATE_HEADER = "x-sdk-date"
CONTENT_HASH_HEADER = "x-sdk-content-sha256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
SKEW = 15 * 60.0
_AUTH = re.compile(
    r"^SDK-HMAC-SHA256 +Access=(?P<ak>[^,\s]+), *SignedHeaders=(?P<signed>[^,\s]+), *Signature=(?P<sig>[0-9a-f]{64})$"
)


@dataclass(frozen=True)
class Signed:
    """What a verified signature says: who, and which signature (for replay detection)."""

    access_key_id: str
    signature: str
    signed_at: float


def _encode(text: str) -> str:
    return quote(text, safe="~")


def canonical_uri(raw_path: str) -> str:
    path = "/".join(_encode(segment) for segment in unquote(raw_path).split("/"))
    return path if path.endswith("/") else path + "/"


def canonical_query(raw_query: str) -> str:
    pairs = []
    for part in raw_query.split("&") if raw_query else []:
        name, _, value = part.partition("=")
        pairs.append((unquote(name.replace("+", "%20")), unquote(value.replace("+", "%20"))))
    return "&".join(f"{_encode(n)}={_encode(v)}" for n, v in sorted(pairs))


def _wire_text(value: str) -> str:
    """A header value as the client signed it: the SDK sends its text as UTF-8 bytes,
    which the server's HTTP layer hands over decoded as latin-1."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def canonical_request(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str],
                      signed: list[str], payload_hash: str) -> str:
    lines = "".join(f"{name}:{headers[name].strip()}\n" for name in signed)
    return "\n".join([method.upper(), canonical_uri(raw_path), canonical_query(raw_query),
                      lines, ";".join(signed), payload_hash])


def _string_to_sign(sdk_date: str, canonical: str) -> str:
    return f"{ALGORITHM}\n{sdk_date}\n{hashlib.sha256(canonical.encode()).hexdigest()}"


def _signature(secret: str, sdk_date: str, canonical: str) -> str:
    return hmac.new(secret.encode(), _string_to_sign(sdk_date, canonical).encode(), hashlib.sha256).hexdigest()


def sign(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str], body: bytes, *,
         access_key_id: str, secret: str, now: float | None = None) -> dict[str, str]:
    """The headers to add (X-Sdk-Date, Authorization); `headers` must hold Host and every
    other header to be signed (all of them are, as the SDK signs every header it sends)."""
    sdk_date = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc).strftime(DATE_FORMAT)
    all_headers = {k.lower(): str(v) for k, v in headers.items() if "_" not in k}
    all_headers[DATE_HEADER] = sdk_date
    signed = sorted(all_headers)
    canonical = canonical_request(method, raw_path, raw_query, all_headers, signed, hashlib.sha256(body).hexdigest())
    return {
        "X-Sdk-Date": sdk_date,
        "Authorization": f"{ALGORITHM} Access={access_key_id}, SignedHeaders={';'.join(signed)}, "
                         f"Signature={_signature(secret, sdk_date, canonical)}",
    }


def verify(method: str, raw_path: str, raw_query: str, headers: Iterable[tuple[str, str]], body: bytes, *,
           secret_of: Callable[[str], str | None], now: float) -> Signed:
    """The verified signer, or AuthFailed / RequestExpired. `secret_of(access key id)` is
    the secret of a usable access key, None for an unknown or disabled one (the same
    answer to the client either way)."""
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.lower(), []).append(_wire_text(value))
    auth = values.get("authorization", [""])
    m = _AUTH.match(auth[0].strip()) if len(auth) == 1 else None
    if m is None:
        raise AuthFailed("the request is not signed with SDK-HMAC-SHA256")
    signed = m["signed"].split(";")
    if signed != sorted(set(signed)) or "host" not in signed or DATE_HEADER not in signed:
        raise AuthFailed("the signature must cover host and x-sdk-date")
    if any(len(values.get(name, ())) != 1 for name in signed):
        raise AuthFailed("a signed header is missing or sent more than once")
    one = {name: values[name][0] for name in signed}
    # looked up before the date checks, so that a refusal below is recorded for the access
    # key it claims (a client with a wrong clock shows up by name in the audit log)
    secret = secret_of(m["ak"])
    sdk_date = one[DATE_HEADER].strip()
    try:
        signed_at = datetime.strptime(sdk_date, DATE_FORMAT).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        raise AuthFailed("X-Sdk-Date is not a valid date") from None
    if abs(now - signed_at) > SKEW:
        raise RequestExpired("the request was signed more than 15 minutes from the server's time")
    payload = hashlib.sha256(body).hexdigest()
    claimed = values.get(CONTENT_HASH_HEADER)
    if claimed is not None and claimed != [payload]:
        raise AuthFailed("the signature does not match")  # UNSIGNED-PAYLOAD included: the body must be covered
    canonical = canonical_request(method, raw_path, raw_query, one, signed, payload)
    expected = _signature(secret or "\0unknown", sdk_date, canonical)
    if not hmac.compare_digest(expected, m["sig"]) or secret is None:
        raise AuthFailed("the signature does not match")
    return Signed(m["ak"], m["sig"], signed_at)


def authenticate(req: WireRequest, ctx: ServeContext) -> Principal:
    """The Principal of an SDK-HMAC-SHA256-signed WireRequest (kmsserve.wire), checked
    against the server's access keys and its replay memory."""
    return caller.authenticate(ctx, lambda secret_of: verify(
        req.method, req.path, req.query, req.headers, req.body, secret_of=secret_of, now=ctx.now()),
        replayed="this signature was already used (give each request a fresh `sequence`)")
