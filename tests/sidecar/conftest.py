"""Fixtures: a real KMS home, a real recording upstream, a real embedded sidecar."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

sys.path.insert(0, str(Path(__file__).parent))

from upstream import start_upstream, stop_upstream  # noqa: E402

from kmscore import Kms  # noqa: E402
from sidecar.config import ProxyEntry, check  # noqa: E402
from sidecar.engine import Engine  # noqa: E402

LIMIT = 64 * 1024
FIELDS = ["user.ssn", "cards[*].number"]


EXTERNAL_EC = ec.generate_private_key(ec.SECP256R1())
"""An EC key the tests hold (imported into the KMS as app/ec-ext), so an independent
RFC 9421 library can sign with it."""


def import_ec(kms, alias, private_key) -> None:
    params = kms.get_parameters_for_import(alias, "RSAES_OAEP_SHA_256", "RSA_2048")
    der = private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    wrapping = serialization.load_pem_public_key(params.public_key_pem.encode())
    wrapped = wrapping.encrypt(der, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
    kms.import_key_material(alias, params.import_token, wrapped)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def routes() -> list[dict]:
    enc, dec = {"action": "encrypt", "key": "app/data"}, {"action": "decrypt", "key": "app/data"}
    return [
        {"name": "store-put", "match": {"path": "/store/*", "methods": ["PUT", "POST"]}, "request": enc},
        {"name": "store-get", "match": {"path": "/store/*", "methods": ["GET"]}, "response": dec},
        {"name": "body", "match": {"path": "/body*"}, "request": enc, "response": dec},
        {"name": "fields", "match": {"path": "/fields*"}, "request": {**enc, "fields": FIELDS},
         "response": {**dec, "fields": FIELDS}},
        {"name": "dec-body", "match": {"path": "/dec-body*"}, "request": dec},
        {"name": "dec-fields", "match": {"path": "/dec-fields*"}, "request": {**dec, "fields": FIELDS}},
        {"name": "reply-fields", "match": {"path": "/reply/fields"}, "response": {**dec, "fields": FIELDS}},
        {"name": "reply-body", "match": {"path": "/reply/body"}, "response": dec},
        {"name": "reply-enc", "match": {"path": "/reply/enc"}, "response": enc},
        {"name": "reply-off", "match": {"path": "/reply/off"}, "response": {"action": "decrypt", "key": "app/off"}},
        {"name": "reply-verify", "match": {"path": "/reply/verify"}, "response": {"action": "verify", "key": "app/mac"}},
        {"name": "reply-sign", "match": {"path": "/reply/sign"}, "response": {"action": "sign", "key": "app/ec"}},
        {"name": "off", "match": {"path": "/off*"}, "request": {"action": "encrypt", "key": "app/off", "fields": ["secret"]}},
        {"name": "host", "match": {"host": "*.example.com", "path": "/host*"}, "request": {**enc, "fields": ["s"]}},
        {"name": "put-only", "match": {"path": "/method*", "methods": ["PUT"]}, "request": {**enc, "fields": ["s"]}},
        {"name": "sign-hmac", "match": {"path": "/sign/hmac*"}, "request": {"action": "sign", "key": "app/mac"}},
        {"name": "sign-ec", "match": {"path": "/sign/ec*"}, "request": {"action": "sign", "key": "app/ec", "keyid": "ec-1"}},
        {"name": "sign-ec384", "match": {"path": "/sign/p384*"}, "request": {"action": "sign", "key": "app/ec384"}},
        {"name": "sign-pss", "match": {"path": "/sign/pss*"}, "request": {"action": "sign", "key": "app/rsa"}},
        {"name": "sign-pkcs1", "match": {"path": "/sign/pkcs1*"},
         "request": {"action": "sign", "key": "app/rsa", "algorithm": "rsa-v1_5-sha256"}},
        {"name": "verify-hmac", "match": {"path": "/verify/hmac*"}, "request": {"action": "verify", "key": "app/mac", "max_age": 60}},
        {"name": "verify-ec", "match": {"path": "/verify/ec*"}, "request": {"action": "verify", "key": "app/ec-ext"}},
    ]


@pytest.fixture(scope="session")
def kms(tmp_path_factory):
    home = tmp_path_factory.mktemp("kms-home")
    with Kms(home, caller="test:sidecar") as k:
        k.create_key("app/data", "AES_256")
        k.create_key("app/other", "AES_256")
        k.create_key("app/off", "AES_256")
        k.create_key("app/mac", "HMAC_256")
        k.create_key("app/ec", "EC_P256")
        k.create_key("app/ec384", "EC_P384")
        k.create_key("app/rsa", "RSA_2048", usage="SIGN_VERIFY")
        k.create_key("app/ec-ext", "EC_P256", origin="EXTERNAL")
        import_ec(k, "app/ec-ext", EXTERNAL_EC)
        yield k


@pytest.fixture(scope="session")
def upstream():
    up, server = start_upstream()
    yield up
    stop_upstream(up, server)


@pytest.fixture(scope="session")
def sidecar(kms, upstream):
    """One engine, two proxies: the main reverse proxy and a `deny unmatched` one."""
    main = ProxyEntry.model_validate({
        "name": "main", "listen": f"127.0.0.1:{free_port()}", "upstream": upstream.url,
        "limits": {"max_buffered_body": LIMIT}, "metrics": f"127.0.0.1:{free_port()}", "route": routes(),
    })
    strict = ProxyEntry.model_validate({
        "name": "strict", "listen": f"127.0.0.1:{free_port()}", "upstream": upstream.url, "unmatched": "deny",
        "route": [{"match": {"path": "/ok"}}],
    })
    assert check([main, strict], kms) == []
    engine = Engine([main, strict], kms)
    engine.start()
    engine.urls = {"main": f"http://{main.listen}", "strict": f"http://{strict.listen}"}
    engine.metrics_url = f"http://{main.metrics}/metrics"
    yield engine
    engine.stop(drain=5)


@pytest.fixture
def client(sidecar, upstream):
    upstream.clear()
    with httpx.Client(base_url=sidecar.urls["main"], timeout=60) as c:
        yield c


def error_of(response: httpx.Response) -> dict:
    assert response.headers["content-type"] == "application/json", response.text
    return response.json()["error"]
