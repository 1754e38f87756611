"""AWS Signature Version 4, both ends, sans-IO.

`verify` checks a request as the server received it (raw path, raw query, headers,
body); `sign` makes the headers a client adds (kmscore.remote uses it, and tests check
it against botocore's own signer). One canonical-request function serves both, so the
two cannot drift apart.

What is checked: the `Authorization` header's form; the credential scope (date equal to
X-Amz-Date's day, the expected service, `aws4_request`; any region); that `host` and
`x-amz-date` are signed; the payload hash (X-Amz-Content-Sha256, when sent, must be the
body's); the clock-skew window (15 minutes either way, as AWS); and the signature,
compared in constant time. Query-string (presigned) authentication is not accepted: a
KMS request is a POST whose body must be covered.
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

ALGORITHM = "AWS4-HMAC-SHA256"
SKEW = 15 * 60.0
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 +Credential=(?P<cred>[^,\s]+), *SignedHeaders=(?P<signed>[^,\s]+), *Signature=(?P<sig>[0-9a-f]{64})$"
)
_SPACES = re.compile(r"\s+")
ONCE = ("authorization", "x-amz-date", "x-amz-content-sha256", "host")
"""Headers that must not be sent twice, signed or not."""


@dataclass(frozen=True)
class Signed:
    """What a verified signature says: who, and which signature (for replay detection)."""

    access_key_id: str
    region: str
    signature: str
    signed_at: float


def _canonical_uri(raw_path: str) -> str:
    # botocore: remove dot segments, then URI-encode the (already encoded) path again
    segments: list[str] = []
    for seg in raw_path.split("/")[1:]:
        if seg == "..":
            if segments:
                segments.pop()
        elif seg not in (".", ""):
            segments.append(seg)
    path = "/" + "/".join(segments)
    if raw_path.endswith("/") and path != "/":
        path += "/"
    return quote(path, safe="/~")


def _canonical_query(raw_query: str) -> str:
    pairs = []
    for part in raw_query.split("&") if raw_query else []:
        name, _, value = part.partition("=")
        pairs.append((quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def canonical_request(method: str, raw_path: str, raw_query: str, headers: Iterable[tuple[str, str]],
                      signed: list[str], payload_hash: str) -> str:
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.lower(), []).append(_SPACES.sub(" ", value.strip()))
    lines = [f"{name}:{','.join(values.get(name, []))}" for name in signed]
    return "\n".join([method.upper(), _canonical_uri(raw_path), _canonical_query(raw_query),
                      *lines, "", ";".join(signed), payload_hash])


def _key(secret: str, day: str, region: str, service: str) -> bytes:
    k = hmac.new(("AWS4" + secret).encode(), day.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def _string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])


def sign(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str], body: bytes, *,
         access_key_id: str, secret: str, region: str, service: str, now: float | None = None) -> dict[str, str]:
    """The headers to add (X-Amz-Date, X-Amz-Content-Sha256, Authorization); `headers`
    must hold Host and every other header that is to be signed."""
    when = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    payload = hashlib.sha256(body).hexdigest()
    all_headers = {k.lower(): v for k, v in headers.items()}
    all_headers.update({"x-amz-date": amz_date, "x-amz-content-sha256": payload})
    signed = sorted(all_headers)
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    canonical = canonical_request(method, raw_path, raw_query, all_headers.items(), signed, payload)
    signature = hmac.new(_key(secret, amz_date[:8], region, service),
                         _string_to_sign(amz_date, scope, canonical).encode(), hashlib.sha256).hexdigest()
    return {
        "X-Amz-Date": amz_date,
        "X-Amz-Content-Sha256": payload,
        "Authorization": f"{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={';'.join(signed)}, Signature={signature}",
    }


def verify(method: str, raw_path: str, raw_query: str, headers: Iterable[tuple[str, str]], body: bytes, *,
           service: str, secret_of: Callable[[str], str | None], now: float,
           must_sign: tuple[str, ...] = ()) -> Signed:
    """The verified signer, or AuthFailed / RequestExpired. `secret_of(access key id)` is
    the secret of a usable access key, None for an unknown or disabled one (the same
    answer to the client either way). `must_sign`: headers that, when sent, the signature
    must cover (the AWS API's X-Amz-Target names the operation: unsigned, a captured
    Encrypt could be replayed as a Decrypt)."""
    headers = [(n.lower(), v) for n, v in headers]
    first: dict[str, str] = {}
    count: dict[str, int] = {}
    for n, v in headers:
        first.setdefault(n, v)
        count[n] = count.get(n, 0) + 1
    m = _AUTH.match(first.get("authorization", "").strip()) if count.get("authorization") == 1 else None
    if m is None:
        raise AuthFailed("the request is not signed with AWS Signature Version 4")
    cred = m["cred"].split("/")
    if len(cred) != 5 or cred[3] != service or cred[4] != "aws4_request":
        raise AuthFailed("the credential scope is not valid for this service")
    access_key_id, day, region = cred[0], cred[1], cred[2]
    signed = m["signed"].split(";")
    if signed != sorted(set(signed)) or "host" not in signed or "x-amz-date" not in signed:
        raise AuthFailed("the signature must cover host and x-amz-date")
    if any(name not in signed for name in must_sign if name in count):
        raise AuthFailed(f"the signature must cover {', '.join(must_sign)}")
    if any(count.get(name, 0) > 1 for name in (*signed, *ONCE)):
        # AWS joins repeated values with commas, but the server reads the first copy (and a
        # proxy in between may read another): a signed header must mean one thing
        raise AuthFailed("a signed header is sent more than once")
    # looked up first, so that a refusal below is recorded for the access key it claims
    # (kmsserve.app: a client with a wrong clock shows up by name in the audit log)
    secret = secret_of(access_key_id)
    amz_date = first.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        raise AuthFailed("X-Amz-Date is not a valid date") from None
    if amz_date[:8] != day:
        raise AuthFailed("the credential scope's date is not the request's date")
    if abs(now - signed_at) > SKEW:
        raise RequestExpired("the request was signed more than 15 minutes from the server's time")
    payload = hashlib.sha256(body).hexdigest()
    claimed = first.get("x-amz-content-sha256")
    if claimed is not None and claimed != payload:
        raise AuthFailed("the signature does not match")
    # compute anyway when the key is unknown, so timing does not tell whether it exists
    key = _key(secret or "\0unknown", day, region, service)
    scope = f"{day}/{region}/{service}/aws4_request"
    canonical = canonical_request(method, raw_path, raw_query, headers, signed, payload)
    expected = hmac.new(key, _string_to_sign(amz_date, scope, canonical).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, m["sig"]) or secret is None:
        raise AuthFailed("the signature does not match")
    return Signed(access_key_id, region, m["sig"], signed_at)


def authenticate(req: WireRequest, ctx: ServeContext, service: str, must_sign: tuple[str, ...] = (),
                 repeats: bool = True) -> Principal:
    """The Principal of a SigV4-signed WireRequest (kmsserve.wire), checked against the
    server's access keys and replay memory: what every SigV4 API's `authenticate` is."""
    return caller.authenticate(ctx, lambda secret_of: verify(
        req.method, req.path, req.query, req.headers, req.body,
        service=service, secret_of=secret_of, now=ctx.now(), must_sign=must_sign), repeats=repeats)
