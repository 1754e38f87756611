"""Hostile request bodies from a client with a valid key, against a real `kms serve`:
each gets the API's documented 400 answer, never an internal error, and the server
keeps serving.

- JSON nested deeper than Python's stack (json.loads raises RecursionError, not
  ValueError), over every API that reads JSON.
"""

from __future__ import annotations

import json

import httpx

from tests.serve.conftest import remote_kms
from tests.serve.servecore import signed_request

DEEP = b"[" * 200_000  # under the body limit (256 KiB)


def test_json_nested_deeper_than_the_stack_is_a_serialization_error(server):
    key = server.access_key()
    url, headers, body = signed_request(server.url, key, "Encrypt", DEEP)
    r = httpx.post(url, headers=headers, content=body)
    assert r.status_code == 400, r.text
    assert r.json()["__type"] == "SerializationException"
    url, headers, body = signed_request(server.url, key, "GenerateRandom", json.dumps({"NumberOfBytes": 8}).encode())
    assert httpx.post(url, headers=headers, content=body).status_code == 200  # still serving
    assert b"Traceback" not in server.log.read_bytes()


def test_deep_json_over_the_facade_api_is_an_invalid_request(server):
    from kmscore import remotewire as rw
    from kmsserve.auth import sigv4

    key = server.access_key()
    path = rw.PATH_PREFIX + "gen_random"
    headers = {"Host": server.url.split("//")[1], "Content-Type": rw.CONTENT_TYPE}
    headers.update(sigv4.sign("POST", path, "", headers, DEEP, access_key_id=key.access_key_id,
                              secret=key.secret, region="keyhold", service=rw.SERVICE))
    r = httpx.post(server.url + path, headers=headers, content=DEEP)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "InvalidRequest"
    with remote_kms(server, key) as remote:
        assert len(remote.gen_random(8)) == 8
    assert b"Traceback" not in server.log.read_bytes()
