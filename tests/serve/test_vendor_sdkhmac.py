"""SDK-HMAC-SHA256 both ends (kmsserve.auth.sdkhmac), checked against the vendor SDK's own
signer (huaweicloudsdkcore.signer.Signer): what it signs, `verify` accepts; what
`sign` makes, the SDK's signer makes too; every tampered part is refused."""

from __future__ import annotations

import calendar
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsserve.auth import sdkhmac
from kmsserve.errors import AuthFailed, RequestExpired

pytest.importorskip("huaweicloudsdkcore")
from huaweicloudsdkcore.auth.credentials import BasicCredentials  # noqa: E402
from huaweicloudsdkcore.sdk_request import SdkRequest  # noqa: E402
from huaweicloudsdkcore.signer.signer import Signer  # noqa: E402

AK, SK = "KHAKEXAMPLE", "s3cr3t-example-secret"
NOW = calendar.timegm((2026, 12, 2, 1, 0, 0))
PATH = "/v1.0/0123456789abcdef/kms/encrypt-data"


def sdk_signed(body: bytes = b'{"key_id": "k", "plain_text": "hi"}', path: str = PATH,
               query: list | None = None, extra: dict | None = None, when: float = NOW):
    """A request exactly as the SDK signs it: (method, raw path, raw query, headers, body)."""
    headers = {"Content-Type": "application/json;charset=UTF-8", "User-Agent": "huaweicloud-usdk-python/3.0",
               "X-Project-Id": "0123456789abcdef", "X-Sdk-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when)),
               **(extra or {})}
    req = SdkRequest("POST", "http", "127.0.0.1:8443", path, query_params=query or [], header_params=headers, body=body)
    req = Signer(BasicCredentials(AK, SK, "0123456789abcdef")).sign(req)
    raw_path, _, raw_query = req.uri.partition("?")
    return "POST", raw_path, raw_query, [(k.lower(), v) for k, v in req.header_params.items()], req.body


def check(method, path, query, headers, body, *, secret=SK, now=NOW):
    return sdkhmac.verify(method, path, query, headers, body, secret_of=lambda ak: secret if ak == AK else None, now=now)


def test_the_sdk_signature_verifies():
    signed = check(*sdk_signed())
    assert signed.access_key_id == AK and signed.signed_at == NOW


@settings(max_examples=40, deadline=None)
@given(segment=st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=12),
       query=st.lists(st.tuples(st.text("abcxyz_-", min_size=1, max_size=5), st.text(max_size=8)), max_size=3),
       body=st.binary(max_size=64))
def test_any_path_query_and_body_the_sdk_signs_verifies(segment, query, body):
    from urllib.parse import quote

    path = f"/v1.0/{quote(segment, safe='')}/kms/x"
    check(*sdk_signed(body, path=path, query=query))


def test_sign_matches_the_sdk_signer():
    headers = {"Host": "127.0.0.1:8443", "Content-Type": "application/json", "X-Project-Id": "p"}
    ours = sdkhmac.sign("POST", PATH, "", headers, b"{}", access_key_id=AK, secret=SK, now=NOW)
    req = SdkRequest("POST", "http", "127.0.0.1:8443", PATH, query_params=[],
                     header_params={**headers, "X-Sdk-Date": ours["X-Sdk-Date"]}, body=b"{}")
    theirs = Signer(BasicCredentials(AK, SK)).sign(req).header_params["Authorization"]
    assert ours["Authorization"] == theirs


@pytest.mark.parametrize("tamper", ["body", "path", "header", "secret", "access key", "signature"])
def test_any_change_breaks_the_signature(tamper):
    method, path, query, headers, body = sdk_signed()
    secret = SK
    if tamper == "body":
        body = body.replace(b"hi", b"ho")
    elif tamper == "path":
        path = path.replace("encrypt-data", "decrypt-data")
    elif tamper == "header":
        headers = [(n, "other" if n == "x-project-id" else v) for n, v in headers]
    elif tamper == "secret":
        secret = "wrong"
    elif tamper == "access key":
        headers = [(n, v.replace(AK, "KHAKOTHER") if n == "authorization" else v) for n, v in headers]
    else:
        headers = [(n, v[:-4] + "0000" if n == "authorization" else v) for n, v in headers]
    with pytest.raises(AuthFailed) as e:
        check(method, path, query, headers, body, secret=secret)
    assert str(e.value) == "the signature does not match"  # one answer, whatever was wrong


def test_clock_skew_window_is_15_minutes_either_way():
    for offset in (-15 * 60, 15 * 60):
        check(*sdk_signed(when=NOW + offset))
    for offset in (-15 * 60 - 1, 15 * 60 + 1):
        with pytest.raises(RequestExpired):
            check(*sdk_signed(when=NOW + offset))


@pytest.mark.parametrize("case", ["unsigned payload", "host not signed", "date not signed", "duplicate signed header",
                                  "no authorization", "other scheme", "bad date"])
def test_malformed_or_weakened_signatures_are_refused(case):
    extra = {"X-Sdk-Content-Sha256": "UNSIGNED-PAYLOAD"} if case == "unsigned payload" else None
    method, path, query, headers, body = sdk_signed(extra=extra)
    auth = dict(headers)["authorization"]
    if case in ("host not signed", "date not signed"):
        name = "host;" if case == "host not signed" else ";x-sdk-date"
        headers = [(n, v.replace(name, "") if n == "authorization" else v) for n, v in headers]
    elif case == "duplicate signed header":
        headers = headers + [("x-project-id", "0123456789abcdef")]
    elif case == "no authorization":
        headers = [(n, v) for n, v in headers if n != "authorization"]
    elif case == "other scheme":
        headers = [(n, auth.replace("SDK-HMAC-SHA256", "V11-HMAC-SHA256") if n == "authorization" else v)
                   for n, v in headers]
    elif case == "bad date":
        headers = [(n, "yesterday" if n == "x-sdk-date" else v) for n, v in headers]
    with pytest.raises(AuthFailed):
        check(method, path, query, headers, body)


def test_the_access_key_is_looked_up_even_when_the_date_is_refused():
    """So that a client with a wrong clock is audited by the access key it claims."""
    asked = []
    with pytest.raises(RequestExpired):
        sdkhmac.verify(*sdk_signed(when=NOW - 3600), secret_of=lambda ak: asked.append(ak) or SK, now=NOW)
    assert asked == [AK]
