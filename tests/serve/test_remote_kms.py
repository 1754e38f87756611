"""kmscore.remote.RemoteKms against real `kms serve` processes: fail closed when the
server is gone and recover by itself when it is back, policies per access key, the
access key file, and TLS (a CA file, or the pinned fingerprint of a self-signed
certificate) against the real app served over TLS by uvicorn."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

import kmscore
from kmscore import Kms
from kmscore.remote import Credentials, RemoteKms
from tests.serve.conftest import AccessKey, clean_env, free_port, remote_kms, restart_server, stop_process, stop_server
from tests.serve.conftest import kms as run_kms
from tests.serve.servecore import write_certificate

POLICY_APP_ONLY = """
[[allow]]
operations = ["encrypt_data", "decrypt_data", "describe_key", "key_usable"]
keys = ["app/*"]
"""


# -- unreachable: fail closed, then recover -------------------------------------------------
def test_server_down_fails_closed_and_the_same_client_recovers_on_restart(server):
    kms = remote_kms(server, timeout=5)
    try:
        kms.create_key("app/restart")
        blob = kms.encrypt_data("app/restart", b"before", {"k": "v"})
        stop_server(server)
        for call in (lambda: kms.encrypt_data("app/restart", b"while down"),
                     lambda: kms.decrypt_data(blob, {"k": "v"}),
                     lambda: kms.key_usable("app/restart")):
            with pytest.raises(kmscore.KmsUnreachable) as e:
                call()
            assert server.url in str(e.value) and b"while down".decode() not in str(e.value)
        assert isinstance(e.value, kmscore.KmsError) and e.value.exit_code == 10
        with restart_server(server):
            assert eventually(lambda: kms.decrypt_data(blob, {"k": "v"})) == b"before"
            assert kms.decrypt_data(kms.encrypt_data("app/restart", b"after"), None) == b"after"
    finally:
        kms.close()


def eventually(call, timeout: float = 30.0):
    """The call's result once the server answers again (it fails fast for a moment after
    a failure); bounded, never timed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except kmscore.KmsUnreachable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_after_a_failure_calls_fail_fast_until_the_retry_window_passes(server):
    kms = remote_kms(server, retry_after=3600)
    try:
        kms.gen_random(8)
        stop_server(server)
        with pytest.raises(kmscore.KmsUnreachable, match="cannot be reached") as first:
            kms.gen_random(8)
        with restart_server(server):
            # the server is back, but this client does not try before its window passes
            with pytest.raises(kmscore.KmsUnreachable, match="not tried again for gen_random") as e:
                kms.gen_random(8)
            assert str(first.value) in str(e.value)
    finally:
        kms.close()


def test_identical_calls_in_one_second_are_not_refused_as_replays(server):
    with remote_kms(server) as kms:
        kms.create_key("app/poll")
        assert [kms.key_usable("app/poll") for _ in range(5)] == [None] * 5


# -- policies -----------------------------------------------------------------------------------
def test_policy_limits_keys_and_operations_and_refusals_are_audited(server):
    admin = remote_kms(server)
    admin.create_key("app/ok")
    admin.create_key("other/no")
    theirs = admin.encrypt_data("other/no", b"not yours")
    key = server.access_key(POLICY_APP_ONLY, name="app1")
    limited = remote_kms(server, key)
    try:
        assert limited.decrypt_data(limited.encrypt_data("app/ok", b"mine")) == b"mine"
        with pytest.raises(kmscore.AccessDenied, match="not allowed to call encrypt_data on key"):
            limited.encrypt_data("other/no", b"x")
        # a decrypt that names no key is checked against the key inside the blob
        with pytest.raises(kmscore.AccessDenied, match="not allowed to call decrypt_data on key"):
            limited.decrypt_data(theirs)
        with pytest.raises(kmscore.AccessDenied, match="not allowed to call create_datakey"):
            limited.create_datakey("app/ok")
        with pytest.raises(kmscore.AccessDenied, match="not allowed to call list_keys"):
            limited.list_keys()
    finally:
        limited.close()
        admin.close()
    stop_server(server)
    with Kms(server.home) as kms:
        denied = [r for r in kms.audit_records(operation="keyhold.decrypt_data")]
    assert denied and denied[-1]["outcome"] == "denied: AccessDenied"
    assert denied[-1]["caller"] == f"access-key {key.access_key_id} (app1)"


def test_a_wrong_secret_is_access_denied_without_detail(server):
    key = server.access_key()
    with remote_kms(server, AccessKey(key.access_key_id, "w" * 40)) as kms:
        with pytest.raises(kmscore.AccessDenied) as e:
            kms.gen_random(8)
    assert "signature is not valid" in str(e.value) and key.access_key_id not in str(e.value)


# -- the access key file --------------------------------------------------------------------------
def test_access_key_file_formats_and_mode(tmp_path):
    f = tmp_path / "app.key"
    fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, json.dumps({"access_key_id": "KHAKX", "secret": "s3cret", "name": "app"}).encode())
    os.close(fd)
    creds = Credentials.load(f)
    assert (creds.access_key_id, creds.secret) == ("KHAKX", "s3cret") and "s3cret" not in repr(creds)
    f.write_text("KHAKY\nother\n")
    assert Credentials.load(f) == Credentials("KHAKY", "other")
    f.chmod(0o644)
    with pytest.raises(kmscore.InvalidRequest, match="readable by others.*chmod 600"):
        Credentials.load(f)
    f.chmod(0o600)
    f.write_text("just one line")
    with pytest.raises(kmscore.InvalidRequest, match="expected the JSON"):
        Credentials.load(f)
    with pytest.raises(kmscore.InvalidRequest, match="cannot read the access key file"):
        Credentials.load(tmp_path / "missing.key")


# -- kms check on a front-end host -----------------------------------------------------------
def test_check_names_an_unreachable_remote_kms(tmp_path):
    """`kms check` on a front-end host: the file's remote settings are validated, and a
    server that does not answer is a problem at kms.url (nothing is created locally)."""
    host = tmp_path / "h"
    host.mkdir()
    (host / "app.key").write_text('{"access_key_id": "KHAKX", "secret": "s"}')
    (host / "app.key").chmod(0o644)
    (host / "deploy.toml").write_text(
        f'[kms]\nurl = "http://127.0.0.1:{free_port()}"\naccess_key_file = "app.key"\n[[keys]]\nalias = "a/b"\n')
    out = run_kms(host / "unused-home", "check", str(host / "deploy.toml"))
    assert out.returncode == 2
    assert "kms.access_key_file: the access key file" in out.stderr.decode() and "chmod 600" in out.stderr.decode()
    (host / "app.key").chmod(0o600)
    out = run_kms(host / "unused-home", "check", str(host / "deploy.toml"))
    assert out.returncode == 2, out.stderr.decode()
    assert "kms.url: the remote KMS did not answer the checks" in out.stderr.decode()
    assert not list(host.rglob("keys.db"))
    (host / "deploy.toml").write_text('[kms]\nurl = "http://kms.example.com:8443"\nfingerprint = "ab"\n'
                                      '[[keys]]\nalias = "a/b"\n')
    err = run_kms(host / "unused-home", "check", str(host / "deploy.toml")).stderr.decode()
    assert "kms.url: " in err and "plain http:// is only allowed to a loopback address" in err
    assert "kms.fingerprint: " in err and "64 hex digits" in err


def test_the_cli_on_a_remote_deployment(server, tmp_path):
    """`kms --deployment FILE ...` works on the server; what belongs to the KMS host says so."""
    from tests.serve.conftest import KMS_BIN, write_access_key_file

    host = tmp_path / "frontend-host"
    host.mkdir()
    write_access_key_file(host / "cli.key", server.access_key())
    config = host / "remote.toml"
    config.write_text(f'[kms]\nurl = "{server.url}"\naccess_key_file = "cli.key"\n')

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([KMS_BIN, "--deployment", str(config), *args], capture_output=True, env=clean_env(),
                              stdin=subprocess.DEVNULL, timeout=60)

    made = cli("create-key", "--alias", "cli/remote", "--json")
    assert made.returncode == 0, made.stderr.decode()
    assert "cli/remote" in cli("list-keys").stdout.decode()
    init = cli("init")
    assert init.returncode == 2 and "kms init` there" in init.stderr.decode()
    audit = cli("audit", "list")
    assert audit.returncode == 2 and "read on the KMS host" in audit.stderr.decode()
    stop_server(server)
    down = cli("describe-key", "cli/remote")
    assert down.returncode == 10 and "cannot be reached" in down.stderr.decode()
    assert not list(host.rglob("keys.db"))


# -- TLS --------------------------------------------------------------------------------------------
def self_signed(folder: Path, ca: bool = True) -> tuple[Path, Path, str]:
    """A certificate for 127.0.0.1: (cert file, key file, its SHA-256 fingerprint in hex)."""
    cert_file, key_file, cert = write_certificate(folder, x509.IPAddress(ipaddress.ip_address("127.0.0.1")), ca=ca)
    return cert_file, key_file, cert.fingerprint(hashes.SHA256()).hex()


TLS_SERVER = """
import sys, uvicorn
from kmscore import Kms
from kmsserve.apis import all_apis
from kmsserve.app import ServerContext, create_app
from kmsserve.auth.accesskeys import AccessKeys
home, port, cert, key = sys.argv[1:]
kms = Kms(home, caller="tls test server")
app = create_app(all_apis(), ServerContext(kms, AccessKeys(kms)))
uvicorn.run(app, host="127.0.0.1", port=int(port), ssl_certfile=cert, ssl_keyfile=key,
            log_level="warning", lifespan="off")
"""


@pytest.fixture(params=["CA:TRUE", "CA:FALSE"])
def tls_server(server, tmp_path, request):
    """The real app over TLS (uvicorn, a self-signed certificate that does or does not say
    it is a CA: a pin must hold for both), on `server`'s key store."""
    cert, key, fingerprint = self_signed(tmp_path, ca=request.param == "CA:TRUE")
    port = free_port()
    log = tmp_path / "tls.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", TLS_SERVER, str(server.home), str(port), str(cert), str(key)],
                                stdout=out, stderr=subprocess.STDOUT, env=clean_env(), stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield f"https://127.0.0.1:{port}", cert, fingerprint
    finally:
        stop_process(proc)


def test_tls_with_a_pinned_fingerprint_or_a_ca_file(server, tls_server):
    url, cert, fingerprint = tls_server
    key = server.access_key()
    creds = Credentials(key.access_key_id, key.secret)
    colons = ":".join(fingerprint[i:i + 2] for i in range(0, 64, 2)).upper()
    with RemoteKms(url, creds, fingerprint=colons) as kms:
        kms.create_key("tls/pinned")
        assert kms.decrypt_data(kms.encrypt_data("tls/pinned", b"over tls")) == b"over tls"
    with RemoteKms(url, creds, ca_file=cert) as kms:
        assert kms.describe_key("tls/pinned").alias == "tls/pinned"


def test_tls_refuses_another_certificate_before_sending_anything(server, tls_server):
    url, cert, fingerprint = tls_server
    key = server.access_key()
    creds = Credentials(key.access_key_id, key.secret)
    wrong = ("00" if not fingerprint.startswith("00") else "11") + fingerprint[2:]
    with RemoteKms(url, creds, fingerprint=wrong) as kms:
        with pytest.raises(kmscore.KmsUnreachable, match="fingerprint is .* not the pinned"):
            kms.create_key("tls/never")
    with RemoteKms(url, creds) as kms:  # the system's CAs do not know a self-signed certificate
        with pytest.raises(kmscore.KmsUnreachable, match="certificate"):
            kms.create_key("tls/never")
    with RemoteKms(url, creds, fingerprint=fingerprint) as kms:
        with pytest.raises(kmscore.NotFound):
            kms.describe_key("tls/never")  # neither request reached the facade


@pytest.mark.parametrize("url", [
    "ftp://kms.internal:8443",
    "https://:8443",
    "https://kms.internal:8443/?x=1",
    "https://kms.internal:8443/#frag",
    "http://kms.internal:8080",  # plain http off loopback: keys and plaintext would cross it
    "http://10.0.0.7:8080",
])
def test_the_client_refuses_a_url_that_deployment_config_refuses(url):
    """The client and `[kms] url` share one check: neither accepts what the other refuses."""
    from kmscore.config.schema import KmsSection
    from kmscore.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="the KMS url: "):
        RemoteKms(url, Credentials("KHAKY", "secret"))
    with pytest.raises(ValueError):
        KmsSection.model_validate({"url": url, "access_key_file": "app.key"})


def test_plain_http_to_loopback_is_accepted_by_both():
    from kmscore.config.schema import KmsSection

    for url in ("http://127.0.0.1:8080", "http://[::1]:8080", "http://localhost:8080"):
        RemoteKms(url, Credentials("KHAKY", "secret")).close()
        assert KmsSection.model_validate({"url": url, "access_key_file": "app.key"}).url == url
