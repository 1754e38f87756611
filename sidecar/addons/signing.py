"""Signing: RFC 9421 signatures over an RFC 9530 Content-Digest, made and checked by the KMS.

A signature covers the whole body through its digest, and headers leave before a
streamed body, so sign/verify rules need the body buffered: bodies over
`limits.max_buffered_body` are refused with 413 (see Transform), never signed blind.

Verification requires the rule's components (`covers`; default: method, the target
URI with its query, Content-Digest, Content-Type) and, unless the rule says
`require_nonce = false`, a nonce that has not been seen within the window
(`sidecar.replay`; the guard lives in the Runtime, so a reload does not forget it).
Signatures made here always carry a fresh nonce.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Mapping

from mitmproxy import http

from sidecar import httpsig
from sidecar.addons.routing import Runtime, fail, state_of
from sidecar.errors import BadSignature, TooLarge
from sidecar.rules import Step

log = logging.getLogger("keyhold.sidecar")


class Signing:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def request(self, flow: http.HTTPFlow) -> None:
        self._run(flow, "request")

    def response(self, flow: http.HTTPFlow) -> None:
        self._run(flow, "response")

    def _run(self, flow: http.HTTPFlow, direction: str) -> None:
        st = state_of(flow)
        if st is None or st.error or (direction == "request" and flow.response is not None):
            return
        step = st.step(direction)
        if step is None or step.kind not in ("sign", "verify"):
            return
        msg = flow.request if direction == "request" else flow.response
        try:
            limit = st.table.entry.limits.max_buffered_body
            if msg.stream or len(msg.raw_content or b"") > limit:
                raise TooLarge(f"the body is over the {limit}-byte limit for {step.kind} rules")
            if step.kind == "sign":
                self._sign(flow, msg, step, direction)
            else:
                self._verify(flow, msg, step, direction, st.target_uri)
            st.key_ids.add(step.key_id or step.key)
        except Exception as e:  # noqa: BLE001 - every failure must fail closed
            fail(flow, direction, e)

    # -- sign ------------------------------------------------------------------------
    def _sign(self, flow, msg, step: Step, direction: str) -> None:
        body = msg.raw_content or b""
        msg.headers["Content-Digest"] = httpsig.content_digest(body)
        view = _view(flow, direction, flow.request.url)
        components = [c for c in _covers(step, direction) if c.startswith("@") or c in view.headers]
        nonce = base64.urlsafe_b64encode(self.rt.random(16)).decode().rstrip("=")
        sig_input = httpsig.make_input(components, int(self.rt.clock()), step.keyid or step.key, step.algorithm,
                                       nonce=nonce)
        base = httpsig.signature_base(sig_input, view)
        signature = self._kms_sign(step, base)
        sig_in, sig = httpsig.headers_for(step.label, sig_input, signature)
        msg.headers["Signature-Input"] = sig_in
        msg.headers["Signature"] = sig

    def _kms_sign(self, step: Step, base: bytes) -> bytes:
        alg, kms = step.algorithm, self.rt.kms
        if alg.family == "HMAC":
            return kms.generate_mac(step.key, base, alg.kms_algorithm)
        digest = hashlib.new(alg.hash_name, base).digest()
        der_or_raw = kms.sign(step.key, digest, alg.kms_algorithm, "DIGEST")
        return httpsig.ecdsa_raw(der_or_raw, alg.ec_size) if alg.family == "EC" else der_or_raw

    # -- verify ----------------------------------------------------------------------
    def _verify(self, flow, msg, step: Step, direction: str, target_uri: str) -> None:
        try:
            inputs = httpsig.parse_signature_input(msg.headers.get("Signature-Input", ""))
            signatures = httpsig.parse_signature(msg.headers.get("Signature", ""))
        except httpsig.SignatureFormatError as e:
            raise BadSignature(f"malformed signature headers: {e}") from None
        if not inputs or not signatures:
            raise BadSignature("the message is not signed (no Signature-Input / Signature)")
        label = step.label if step.label in inputs else next(iter(inputs))
        if label not in signatures:
            raise BadSignature(f"no Signature for label {label!r}")
        sig_input, signature = inputs[label], signatures[label]
        self._check_params(sig_input, step, direction, msg)
        body = msg.raw_content or b""
        if not httpsig.check_content_digest(msg.headers.get("Content-Digest"), body):
            raise BadSignature("Content-Digest is missing or does not match the body")
        url = target_uri if direction == "request" else flow.request.url
        try:
            base = httpsig.signature_base(sig_input, _view(flow, direction, url))
        except httpsig.SignatureFormatError as e:
            raise BadSignature(f"cannot rebuild the signature base: {e}") from None
        if not self._kms_verify(step, base, signature):
            raise BadSignature("the signature does not verify")
        self._claim_nonce(sig_input, step)

    def _claim_nonce(self, sig_input: httpsig.SignatureInput, step: Step) -> None:
        """Remember a verified signature's nonce until its window closes; refuse a replay."""
        nonce = sig_input.param("nonce")
        if nonce is None:
            return  # not required (checked before verifying)
        created = sig_input.param("created")
        until = created + step.max_age
        expires = sig_input.param("expires")
        if isinstance(expires, int) and not isinstance(expires, bool):
            until = min(until, expires)
        scope = f"{step.key_id or step.key}\0{sig_input.param('keyid')}"
        if not self.rt.replay.claim(scope, nonce, until, self.rt.clock()):  # may raise ReplayCacheFull (503)
            raise BadSignature("replayed: a signature with this nonce was already accepted", reason="replayed")

    def _check_params(self, sig_input: httpsig.SignatureInput, step: Step, direction: str, msg) -> None:
        missing = httpsig.missing_components(sig_input.components, _covers(step, direction), msg.headers.__contains__)
        if missing:
            raise BadSignature(f"the signature does not cover {', '.join(missing)}")
        nonce = sig_input.param("nonce")
        if nonce is not None and (not isinstance(nonce, str) or not 0 < len(nonce) <= httpsig.NONCE_MAX):
            raise BadSignature(f"the signature's nonce is not a string of 1 to {httpsig.NONCE_MAX} characters")
        if nonce is None and step.require_nonce:
            raise BadSignature("the signature has no nonce (this rule requires one against replays)")
        created = sig_input.param("created")
        if not isinstance(created, int) or isinstance(created, bool):
            raise BadSignature("the signature has no created time")
        now = self.rt.clock()
        if abs(now - created) > step.max_age:
            raise BadSignature(f"the signature is stale or from the future (created {int(now - created)} s ago, window {step.max_age} s)")
        expires = sig_input.param("expires")
        if isinstance(expires, int) and not isinstance(expires, bool) and now > expires:
            raise BadSignature("the signature has expired")
        alg = sig_input.param("alg")
        if alg is not None and alg != step.algorithm.name:
            raise BadSignature(f"the signature uses alg {alg!r}; this rule accepts {step.algorithm.name}")
        if step.keyid is not None and sig_input.param("keyid") != step.keyid:
            raise BadSignature("the signature names another keyid")

    def _kms_verify(self, step: Step, base: bytes, signature: bytes) -> bool:
        alg, kms = step.algorithm, self.rt.kms
        if alg.family == "HMAC":
            return kms.verify_mac(step.key, base, signature, alg.kms_algorithm)
        if alg.family == "EC":
            try:
                signature = httpsig.ecdsa_der(signature, alg.ec_size)
            except httpsig.SignatureFormatError:
                return False
        digest = hashlib.new(alg.hash_name, base).digest()
        return kms.verify(step.key, digest, signature, alg.kms_algorithm, "DIGEST")


def _covers(step: Step, direction: str) -> tuple[str, ...]:
    if step.covers is not None:
        return step.covers
    return httpsig.REQUEST_COMPONENTS if direction == "request" else httpsig.RESPONSE_COMPONENTS


class _Fields(Mapping):
    """mitmproxy headers as RFC 9421 sees them: lower-case names, field lines joined by
    ", " with outer whitespace trimmed. Looked up on demand (only covered fields)."""

    def __init__(self, headers) -> None:
        self._h = headers

    def __getitem__(self, name: str) -> str:
        values = self._h.get_all(name)
        if not values:
            raise KeyError(name)
        return ", ".join(v.strip() for v in values)

    def __contains__(self, name) -> bool:
        return name in self._h

    def __iter__(self):
        return (k.lower() for k in self._h.keys())

    def __len__(self) -> int:
        return len(self._h)


def _view(flow: http.HTTPFlow, direction: str, url: str) -> httpsig.Message:
    msg = flow.request if direction == "request" else flow.response
    headers = _Fields(msg.headers)
    return httpsig.Message(
        method=flow.request.method,
        target_uri=url,
        status=None if direction == "request" else flow.response.status_code,
        headers=headers,
    )
