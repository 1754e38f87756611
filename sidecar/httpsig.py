"""RFC 9421 HTTP Message Signatures and RFC 9530 Content-Digest, sans-IO.

Only the subset the sidecar needs: covered components are derived components
(`@method`, `@target-uri`, `@authority`, `@path`, `@query`, `@status`, ...) and plain
header fields, without component parameters; signature parameters `created`,
`expires`, `keyid`, `alg`, `nonce`, `tag`. The signature base is rebuilt from a
`Message` view and the canonical serialization of the parsed parameters, exactly as
RFC 9421 section 2.5 lays out. Nothing here holds a key: signing and verifying the
base is the caller's business (the KMS).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}

REQUEST_COMPONENTS = ("@method", "@target-uri", "content-digest", "content-type")
RESPONSE_COMPONENTS = ("@status", "content-digest", "content-type")


@dataclass(frozen=True)
class Algorithm:
    """An RFC 9421 algorithm name mapped onto a KMS key family and KMS algorithm."""

    name: str
    family: str  # HMAC, RSA or EC
    kms_algorithm: str  # a SigningAlgorithm or MacAlgorithm value
    registered: bool  # in the IANA registry: sent as the `alg` parameter
    ec_size: int = 0  # coordinate size of r and s in the raw ECDSA encoding
    hash_name: str = "sha256"


ALGORITHMS = {
    a.name: a
    for a in (
        Algorithm("hmac-sha256", "HMAC", "HMAC_SHA_256", True),
        Algorithm("hmac-sha384", "HMAC", "HMAC_SHA_384", False),
        Algorithm("hmac-sha512", "HMAC", "HMAC_SHA_512", False),
        Algorithm("rsa-pss-sha512", "RSA", "RSASSA_PSS_SHA_512", True, hash_name="sha512"),
        Algorithm("rsa-pss-sha256", "RSA", "RSASSA_PSS_SHA_256", False),
        Algorithm("rsa-v1_5-sha256", "RSA", "RSASSA_PKCS1_V1_5_SHA_256", True),
        Algorithm("rsa-v1_5-sha512", "RSA", "RSASSA_PKCS1_V1_5_SHA_512", False, hash_name="sha512"),
        Algorithm("ecdsa-p256-sha256", "EC", "ECDSA_SHA_256", True, ec_size=32),
        Algorithm("ecdsa-p384-sha384", "EC", "ECDSA_SHA_384", True, ec_size=48, hash_name="sha384"),
    )
}

DEFAULT_FOR_SPEC = {
    "HMAC_256": "hmac-sha256",
    "HMAC_384": "hmac-sha384",
    "HMAC_512": "hmac-sha512",
    "RSA_2048": "rsa-pss-sha512",
    "RSA_3072": "rsa-pss-sha512",
    "RSA_4096": "rsa-pss-sha512",
    "EC_P256": "ecdsa-p256-sha256",
    "EC_P384": "ecdsa-p384-sha384",
}


class SignatureFormatError(ValueError):
    """A header that is not the structured field RFC 9421 / 9530 defines."""


# -- RFC 9530 ----------------------------------------------------------------------------
def content_digest(body: bytes, algorithm: str = "sha-256") -> str:
    return f"{algorithm}=:{base64.b64encode(DIGESTS[algorithm](body).digest()).decode()}:"


def check_content_digest(value: str | None, body: bytes) -> bool:
    """True if every digest we know in the header matches `body` (at least one must)."""
    if not value:
        return False
    known = 0
    for name, digest in _parse_byte_dict(value).items():
        if name in DIGESTS:
            known += 1
            if DIGESTS[name](body).digest() != digest:
                return False
    return known > 0


# -- the message view ------------------------------------------------------------------
@dataclass(frozen=True)
class Message:
    """What a signature can cover. `headers` maps lower-case names to combined values."""

    method: str = ""
    target_uri: str = ""
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


DERIVED = ("@method", "@target-uri", "@authority", "@scheme", "@path", "@query", "@request-target", "@status")

EQUIVALENT = {"@target-uri": (("@authority", "@path", "@query"), ("@authority", "@request-target"))}
"""A required component that others cover together (the whole target URI, query included)."""
NONCE_MAX = 256


def missing_components(covered, required, present) -> list[str]:
    """The required components a signature does not cover. A header is required only if
    the message carries it (`present(name)`), so a signer that had no Content-Type need
    not cover one, and a Content-Type added on the way is refused."""
    covered = set(covered)
    out = []
    for name in required:
        if name in covered or (not name.startswith("@") and name != "content-digest" and not present(name)):
            continue
        if any(covered.issuperset(alt) for alt in EQUIVALENT.get(name, ())):
            continue
        out.append(name)
    return out


def component_value(name: str, msg: Message) -> str:
    if name.startswith("@"):
        parts = urlsplit(msg.target_uri)
        derived = {
            "@method": lambda: msg.method.upper(),
            "@target-uri": lambda: msg.target_uri,
            "@authority": lambda: parts.netloc.lower(),
            "@scheme": lambda: parts.scheme.lower(),
            "@path": lambda: parts.path or "/",
            "@query": lambda: "?" + parts.query,
            "@request-target": lambda: (parts.path or "/") + ("?" + parts.query if parts.query else ""),
            "@status": lambda: "" if msg.status is None else str(msg.status),
        }.get(name)
        if derived is None:
            raise SignatureFormatError(f"unsupported derived component {name}")
        value = derived()
        if not value:
            raise SignatureFormatError(f"component {name} has no value in this message")
        return value
    if name not in msg.headers:
        raise SignatureFormatError(f"covered header {name} is not in the message")
    return msg.headers[name]


# -- signature parameters --------------------------------------------------------------
@dataclass(frozen=True)
class SignatureInput:
    components: tuple[str, ...]
    params: tuple[tuple[str, int | str | bool], ...]

    def param(self, name: str):
        return dict(self.params).get(name)

    def serialize(self) -> str:
        return self._serialized

    @cached_property
    def _serialized(self) -> str:
        inner = " ".join(_sf_string(c) for c in self.components)
        out = f"({inner})"
        for k, v in self.params:
            if v is True:
                out += f";{k}"
            elif isinstance(v, bool):
                out += f";{k}=?0"
            elif isinstance(v, int):
                out += f";{k}={v}"
            else:
                out += f";{k}={_sf_string(v)}"
        return out


def make_input(components, created: int, keyid: str, alg: Algorithm, **extra) -> SignatureInput:
    params: list[tuple[str, int | str | bool]] = [("created", int(created)), ("keyid", keyid)]
    if alg.registered:
        params.append(("alg", alg.name))
    params.extend(extra.items())
    return SignatureInput(tuple(components), tuple(params))


def signature_base(sig_input: SignatureInput, msg: Message) -> bytes:
    """RFC 9421 section 2.5: one line per component, then `@signature-params`."""
    lines = []
    for name in sig_input.components:
        value = component_value(name, msg)
        if "\n" in value or "\r" in value:
            raise SignatureFormatError(f"component {name} holds a line break")
        lines.append(f"{_sf_string(name)}: {value}")
    lines.append(f'"@signature-params": {sig_input.serialize()}')
    return "\n".join(lines).encode()


def headers_for(label: str, sig_input: SignatureInput, signature: bytes) -> tuple[str, str]:
    """(Signature-Input, Signature) header values for one signature."""
    return f"{label}={sig_input.serialize()}", f"{label}=:{base64.b64encode(signature).decode()}:"


# -- ECDSA encodings -------------------------------------------------------------------
def ecdsa_raw(der: bytes, size: int) -> bytes:
    r, s = decode_dss_signature(der)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def ecdsa_der(raw: bytes, size: int) -> bytes:
    if len(raw) != 2 * size:
        raise SignatureFormatError("ECDSA signature has the wrong length")
    return encode_dss_signature(int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big"))


# -- parsing (an RFC 8941 subset) ------------------------------------------------------
_KEY = r"[a-z*][a-z0-9_\-.*]*"
_TOKEN = r"[A-Za-z*][A-Za-z0-9:/!#$%&'*+\-.^_`|~]*"
_STRING = r'"(?:[^"\\]|\\["\\])*"'
_PARAM = re.compile(rf";\s*({_KEY})(?:=(\?[01]|-?[0-9]{{1,15}}|{_STRING}|{_TOKEN}))?")
_MEMBER = re.compile(rf"\s*({_KEY})=")


def parse_signature_input(value: str) -> dict[str, SignatureInput]:
    """A Signature-Input dictionary: label -> SignatureInput."""
    out: dict[str, SignatureInput] = {}
    pos = 0
    while pos < len(value):
        m = _MEMBER.match(value, pos)
        if not m or m.end() >= len(value) or value[m.end()] != "(":
            raise SignatureFormatError("Signature-Input is not a dictionary of inner lists")
        label = m.group(1)
        end = value.find(")", m.end())
        if end < 0:
            raise SignatureFormatError("Signature-Input has an unterminated inner list")
        inner = value[m.end() + 1 : end].split()
        components = []
        for item in inner:
            if not re.fullmatch(_STRING, item):
                raise SignatureFormatError("covered components must be plain strings (no parameters)")
            components.append(_sf_unstring(item))
        pos = end + 1
        params = []
        while (p := _PARAM.match(value, pos)) is not None:
            params.append((p.group(1), _sf_value(p.group(2))))
            pos = p.end()
        pos = _skip_comma(value, pos, "Signature-Input")
        out[label] = SignatureInput(tuple(components), tuple(params))
    return out


def parse_signature(value: str) -> dict[str, bytes]:
    return _parse_byte_dict(value)


def _parse_byte_dict(value: str) -> dict[str, bytes]:
    out = {}
    pos = 0
    while pos < len(value):
        m = re.compile(rf"\s*({_KEY})=:([A-Za-z0-9+/=]*):").match(value, pos)
        if not m:
            raise SignatureFormatError("expected a dictionary of byte sequences")
        try:
            out[m.group(1)] = base64.b64decode(m.group(2), validate=True)
        except (binascii.Error, ValueError):
            raise SignatureFormatError("bad base64 in a byte sequence") from None
        pos = m.end()
        while (p := _PARAM.match(value, pos)) is not None:
            pos = p.end()
        pos = _skip_comma(value, pos, "dictionary")
    return out


def _skip_comma(value: str, pos: int, what: str) -> int:
    m = re.compile(r"\s*(,\s*|$)").match(value, pos)
    if not m:
        raise SignatureFormatError(f"{what} has trailing garbage")
    return m.end() if m.group(1) else len(value)


def _sf_string(s: str) -> str:
    if not (s.isascii() and s.isprintable()):
        raise SignatureFormatError("structured field strings are printable ASCII")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _sf_unstring(s: str) -> str:
    return re.sub(r'\\(["\\])', r"\1", s[1:-1])


def _sf_value(raw: str | None):
    if raw is None or raw == "?1":
        return True
    if raw == "?0":
        return False
    if raw.startswith('"'):
        return _sf_unstring(raw)
    if re.fullmatch(r"-?[0-9]+", raw):
        return int(raw)
    return raw
