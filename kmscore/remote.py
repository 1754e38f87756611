"""RemoteKms: the Kms facade over HTTP, a client of `kms serve`'s facade API.

Front ends on a host without the key store get one of these instead of a `Kms`
(`[kms] url` in the deployment file; `kmscore.deploy.open_kms` chooses) and cannot tell
the difference: the same methods with the same signatures and defaults (taken from
`kmscore.Kms`), the same results (KeyMetadata, DataKey, ...), the same exception classes
with the same messages (the server sends the class name and the message; see
`kmscore.remotewire`). Two more errors exist only here: `KmsUnreachable` (no answer:
connection refused, timeout, TLS failure, a server that is not keyhold) and
`AccessDenied` (the access key or its policy refused the call). Either way nothing was
done and no plaintext was returned, so a front end fails closed; every call opens a new
connection if the pooled one is gone, so it recovers by itself when the server is back.

Transport: one httpx client per RemoteKms (a connection pool, keep-alive, timeouts),
every request signed with AWS SigV4 (service `keyhold`) by the access key read from a
0600 file. TLS is verified against a CA file, the system's trust store, or a pinned
SHA-256 fingerprint of the server's (self-signed) certificate: the certificate is
fetched, its fingerprint compared, and only then trusted as the one CA of the
connection, so no request leaves before the pin holds.

The revocation bound holds across the network: `key_usable` is asked of the server
(whose view of the store is at most its own refresh interval old, `refresh_interval`
here), and `kmscore.dkcache.DataKeyCache` remembers an answer only for the rest of its
bound, as it does for the embedded facade.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import inspect
import json
import os
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kmscore import remotewire as rw
from kmscore.errors import AccessDenied, InvalidRequest, KmsError, KmsUnreachable

DEFAULT_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
KEEPALIVE = 2.0
RETRY_AFTER = 0.5
MAX_RESPONSE = 1024 * 1024
"""A facade answer is small (4 KiB of plaintext, a key's metadata, a page of keys): a
server that sends more is not keyhold, and is not read into memory."""
"""After a failed attempt, calls fail at once for this long (then one tries again)."""


def is_loopback(host: str) -> bool:
    """Plain HTTP is allowed to these only: nothing of it crosses a network. Both ends
    ask it: this client of a `http://` url, and `kms serve --plain-http` of its listen
    address (kmsserve imports it from here)."""
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def kms_url_problem(url: str) -> str | None:
    """What is wrong with `url` as the address of a `kms serve`, or None: the one check
    behind both `[kms] url` in a deployment and the client itself. Plain http:// only
    to loopback, because data keys and plaintext cross the connection."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
        return f"expected https://HOST[:PORT], got {url!r}"
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return f"plain http:// is only allowed to a loopback address (keys and plaintext cross it): use https://, got {url!r}"
    return None


@dataclass(frozen=True)
class Credentials:
    """An access key issued by `kms access-key create` (its id and secret)."""

    access_key_id: str
    secret: str

    def __repr__(self) -> str:  # never the secret
        return f"<Credentials {self.access_key_id}>"

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Credentials":
        """From a file holding what `kms access-key create --json` printed (JSON with
        access_key_id and secret), or two lines `id` and `secret`. The file must not be
        readable by group or others (it is a password)."""
        where = str(path)
        try:
            fd = os.open(where, os.O_RDONLY | os.O_CLOEXEC)
            try:
                mode = os.fstat(fd).st_mode
                text = os.read(fd, 64 * 1024).decode("utf-8")
            finally:
                os.close(fd)
        except OSError as e:
            raise InvalidRequest(f"cannot read the access key file {where}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise InvalidRequest(f"the access key file {where} is not text") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InvalidRequest(f"the access key file {where} is readable by others (mode {stat.S_IMODE(mode):o}): "
                                 f"chmod 600 {where}")
        return cls.parse(text, where)

    @classmethod
    def parse(cls, text: str, where: str = "access key") -> "Credentials":
        stripped = text.strip()
        if stripped.startswith("{"):
            try:
                data = json.loads(stripped)
            except ValueError:
                raise InvalidRequest(f"{where}: not valid JSON") from None
            key_id, secret = (data.get("access_key_id"), data.get("secret")) if isinstance(data, dict) else (None, None)
        else:
            lines = [line.strip() for line in stripped.splitlines() if line.strip()]
            key_id, secret = (lines + [None, None])[:2] if len(lines) == 2 else (None, None)
        if not isinstance(key_id, str) or not isinstance(secret, str) or not key_id or not secret:
            raise InvalidRequest(f"{where}: expected the JSON that `kms access-key create --json` prints "
                                 "(access_key_id and secret), or two lines: id, secret")
        return cls(key_id, secret)


def normalize_fingerprint(text: str) -> str:
    """`AB:CD:...` or `abcd...` (SHA-256, 32 bytes) as lower-case hex; InvalidRequest otherwise."""
    hexed = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(hexed) != 64 or any(c not in "0123456789abcdef" for c in hexed):
        raise InvalidRequest(f"a certificate fingerprint is the SHA-256 of the certificate, 64 hex digits "
                             f"(colons allowed), not {text!r}")
    return hexed


def _pinned_context(host: str, port: int, fingerprint: str, timeout: float) -> ssl.SSLContext:
    """A context that trusts exactly the certificate whose SHA-256 is `fingerprint`:
    the server's certificate is fetched (no data is sent), compared with the pin in
    constant time, then made the connection's only trust anchor. A server presenting
    another certificate later fails the handshake."""
    try:
        pem = ssl.get_server_certificate((host, port), timeout=timeout)
    except (OSError, ssl.SSLError) as e:
        raise KmsUnreachable(f"the KMS at {host}:{port} cannot be reached: {_reason(e)}") from None
    der = ssl.PEM_cert_to_DER_cert(pem)
    got = hashlib.sha256(der).hexdigest()
    if not hmac.compare_digest(got, fingerprint):
        raise KmsUnreachable(f"the KMS at {host}:{port} presented a certificate whose SHA-256 fingerprint is "
                             f"{_colons(got)}, not the pinned {_colons(fingerprint)}: refusing to talk to it")
    ctx = ssl.create_default_context(cadata=pem)
    ctx.check_hostname = False  # the pin is the server's identity, whatever name it has
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def _colons(hexed: str) -> str:
    return ":".join(hexed[i:i + 2] for i in range(0, len(hexed), 2)).upper()


def _reason(e: BaseException) -> str:
    """A short reason for a transport failure (never a request or response body)."""
    inner = e.__context__ or e.__cause__
    text = str(e) or (str(inner) if inner else "") or type(e).__name__
    return text.replace("\n", " ")[:200]


class RemoteKms:
    """The facade of a `kms serve` server. Thread-safe (httpx's client is); one per process.

    >>> with RemoteKms("https://kms.internal:8443", Credentials.load("app.key"), fingerprint="AB:...") as kms:
    ...     blob = kms.encrypt_data("app/db", b"secret")
    """

    def __init__(
        self,
        url: str,
        credentials: Credentials,
        *,
        ca_file: str | os.PathLike | None = None,
        fingerprint: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        refresh_interval: float = 1.0,
        revocation_bound: float = 5.0,
        home: str | os.PathLike | None = None,
        cli_args: tuple[str, ...] = (),
        max_connections: int = 32,
        retry_after: float = RETRY_AFTER,
    ) -> None:
        import httpx  # here: `import kmscore` stays light for the embedded facade

        problem = kms_url_problem(url)
        if problem:
            raise InvalidRequest(f"the KMS url: {problem}")
        parts = urlsplit(url)
        if ca_file is not None and fingerprint is not None:
            raise InvalidRequest("give a CA file or a certificate fingerprint for the KMS, not both")
        self.url = url.rstrip("/")
        self.credentials = credentials
        self.timeout = timeout
        self.refresh_interval = refresh_interval
        """How old the server's view of the key store may be (its Kms's refresh interval,
        1 s for `kms serve`): DataKeyCache adds it to the revocation bound it keeps."""
        self.revocation_bound = revocation_bound
        """`[kms] revocation_bound`: what front ends on this host keep (fsmount's mounts)."""
        self.clock: Callable[[], float] = time.time
        self.notices: list[str] = []
        self.cli_args = cli_args
        """The `kms` options that make a child process (a mount) open this same KMS."""
        from kmscore.home import resolve_home

        self.home = resolve_home(home)
        """A local folder for logs only: no key store is opened or created there."""
        self._host, self._port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        self._ca_file = None if ca_file is None else str(ca_file)
        self._fingerprint = None if fingerprint is None else normalize_fingerprint(fingerprint)
        self._https = parts.scheme == "https"
        self._netloc = parts.netloc
        self._base_path = parts.path.rstrip("/")
        self._httpx = httpx
        self._client: Any = None
        self._lock = threading.Lock()
        # idle connections are dropped before the server would close them (uvicorn: 5 s),
        # so a request is rarely sent on a connection that is closing under it
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                                    keepalive_expiry=KEEPALIVE)
        self._closed = False
        self._down_until, self._down_reason = 0.0, ""
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"<RemoteKms {self.url} as {self.credentials.access_key_id}>"

    # -- transport ---------------------------------------------------------------------
    def _verify(self) -> Any:
        if not self._https:
            return False
        if self._fingerprint is not None:
            return _pinned_context(self._host, self._port, self._fingerprint, min(self.timeout, CONNECT_TIMEOUT))
        if self._ca_file is not None:
            try:
                return ssl.create_default_context(cafile=self._ca_file)
            except (OSError, ssl.SSLError) as e:
                raise InvalidRequest(f"cannot use the CA file {self._ca_file}: {_reason(e)}") from None
        return ssl.create_default_context()

    def _http(self) -> Any:
        """The pooled client, made on first use (a pin is checked then, so a server that
        is down at start is no error until a call needs it)."""
        with self._lock:
            if self._closed:
                raise KmsUnreachable("this RemoteKms is closed")
            if self._client is None:
                httpx = self._httpx
                verify = self._verify()
                self._client = httpx.Client(
                    transport=httpx.HTTPTransport(verify=verify, retries=1, limits=self._limits,
                                                  socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]),
                    timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, CONNECT_TIMEOUT)),
                    follow_redirects=False,
                )
            return self._client

    def _drop_client(self) -> None:
        """After a TLS failure: the next call fetches (and checks) the certificate again."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def call(self, method: str, arguments: Mapping[str, Any]) -> Any:
        """One facade call: encode, sign, send, decode; kmscore's errors only."""
        spec = rw.CALLS[method]
        body = json.dumps(rw.encode_args(spec, arguments)).encode()
        path = self._base_path + rw.PATH_PREFIX + method
        url = self.url[: len(self.url) - len(self._base_path)] + path
        httpx = self._httpx
        self._fail_fast(method)
        for attempt in (1, 2):
            try:
                status, raw = self._send(url, body, self._signed(path, body), method)
                break
            except (httpx.RemoteProtocolError, httpx.ReadError) as e:
                # a pooled connection that broke under the request (the server restarted)
                if attempt == 1 and spec.repeatable:
                    continue
                raise self._down(f"the connection to the KMS at {self.url} broke ({method}): {_reason(e)}") from None
            except httpx.TimeoutException as e:
                raise self._down(f"the KMS at {self.url} did not answer within {self.timeout:g} s ({method}): "
                                 f"{_reason(e)}") from None
            except httpx.TransportError as e:
                if self._fingerprint is not None:  # perhaps a new certificate: fetch and compare it again
                    self._drop_client()
                raise self._down(f"the KMS at {self.url} cannot be reached ({method}): {_reason(e)}") from None
            except KmsUnreachable as e:  # the pinned certificate could not be fetched or did not match
                raise self._down(str(e)) from None
        self._down_until, self._down_reason = 0.0, ""
        return self._result(spec, status, raw)

    def _send(self, url: str, body: bytes, headers: Mapping[str, str], method: str) -> tuple[int, bytes]:
        """(status, body) of one POST, the body read whole within `timeout` (httpx's read
        timeout is per read: a server trickling a byte at a time would hold the caller
        forever) and at most MAX_RESPONSE bytes."""
        deadline = time.monotonic() + self.timeout
        with self._http().stream("POST", url, content=body, headers=headers) as response:
            raw = bytearray()
            for chunk in response.iter_raw():
                raw += chunk
                if len(raw) > MAX_RESPONSE:
                    raise KmsUnreachable(f"the KMS at {self.url} sent an answer over {MAX_RESPONSE} bytes ({method}): "
                                         "not a keyhold server")
                if time.monotonic() > deadline:
                    raise self._httpx.ReadTimeout("the answer did not arrive whole in time")
            return response.status_code, bytes(raw)

    # -- failing fast while the server is away ---------------------------------------------
    def _down(self, reason: str) -> KmsUnreachable:
        """Remember a failed attempt: for RETRY_AFTER seconds calls fail at once instead of
        each waiting for its own timeout (a blackholed server would otherwise hold every
        caller, e.g. a proxy's event loop, for the connect timeout); then calls try again."""
        self._down_until, self._down_reason = time.monotonic() + self.retry_after, reason
        return KmsUnreachable(reason)

    def _fail_fast(self, method: str) -> None:
        if self._down_until and time.monotonic() < self._down_until:
            raise KmsUnreachable(f"{self._down_reason} (not tried again for {method}: calls try again "
                                 f"{self.retry_after:g} s after the last failure)")

    def _signed(self, path: str, body: bytes) -> dict[str, str]:
        """Headers for one attempt, SigV4-signed (service `keyhold`). A signed random nonce
        makes every signature unique: two equal calls in one second (key_usable polls,
        a blob decrypted twice, a retry) must not look like a replay, which the server refuses."""
        from kmsserve.auth.sigv4 import sign  # sans-IO, both ends in one module (checked against botocore)

        headers = {"host": self._netloc, "content-type": rw.CONTENT_TYPE, rw.NONCE_HEADER: os.urandom(12).hex()}
        headers.update(sign("POST", path, "", headers, body, access_key_id=self.credentials.access_key_id,
                            secret=self.credentials.secret, region=rw.REGION, service=rw.SERVICE))
        return headers

    def _result(self, spec: rw.Call, status: int, raw: bytes) -> Any:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, or nested past the stack: not keyhold's
            data = None
        if status == 200 and isinstance(data, dict) and "result" in data:
            try:
                return spec.result.decode(data["result"])
            except InvalidRequest as e:
                raise KmsUnreachable(f"the KMS at {self.url} sent a result that is not a {spec.result.name}: {e}") from None
        raise rw.error_from(data, status)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> "RemoteKms":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- what stays on the KMS host --------------------------------------------------------
    def flush_audit(self) -> None:
        """Every call is audited by the server before it answers: nothing to flush here."""

    def _on_host_only(self, *args: Any, **kwargs: Any) -> Any:
        raise InvalidRequest("the audit log and the store's integrity checks are read on the KMS host "
                             "(`kms audit`, `kms store verify` there), not over the network")

    verify_audit = audit_records = verify_store = reanchor_store = maintain = _on_host_only


def _facade_method(spec: rw.Call) -> Callable[..., Any]:
    signature = spec.signature

    def method(self: RemoteKms, *args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise InvalidRequest(f"{spec.method}: {e}") from None
        bound.apply_defaults()
        return self.call(spec.method, bound.arguments)

    from kmscore.facade import Kms

    functools.update_wrapper(method, getattr(Kms, spec.method), assigned=("__doc__", "__name__", "__qualname__"))
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__signature__ = signature.replace(parameters=[self_param, *signature.parameters.values()])  # type: ignore[attr-defined]
    method.__qualname__ = f"RemoteKms.{spec.method}"
    return method


for _name, _spec in rw.CALLS.items():
    setattr(RemoteKms, _name, _facade_method(_spec))


__all__ = ["Credentials", "RemoteKms", "KmsUnreachable", "AccessDenied", "KmsError", "normalize_fingerprint"]
