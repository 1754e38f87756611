"""Interop with the real `openssl` CLI, through the real `kms` CLI: material wrapped by
`openssl pkeyutl` / `openssl enc -id-aes256-wrap-pad` imports; signatures from `kms sign`
verify with `openssl dgst` / `openssl pkeyutl`; data openssl encrypts to an RSA key's
public key decrypts with `kms decrypt-data`."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

OAEP = {
    "sha256": ["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256"],
    # OpenSSL 3 takes MGF1's digest from rsa_oaep_md unless told otherwise; say it anyway
    "sha1": ["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha1", "-pkeyopt", "rsa_mgf1_md:sha1"],
    "sha1-implicit-mgf": ["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha1"],
}


def openssl(*args, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["openssl", *map(str, args)], input=input, capture_output=True, timeout=120)
    if check:
        assert r.returncode == 0, (args, r.stderr.decode())
    return r


class Cli:
    """The `kms` console script on one home, plus an in-process Kms on the same store for
    setup steps a test is not about (each CLI start costs ~0.5 s of CPU)."""

    def __init__(self, kh, home, tmp, kms):
        self.kh, self.home, self.tmp, self.kms = kh, home, tmp, kms

    def params_via_facade(self, key: str, name: str, algorithm: str = "RSAES_OAEP_SHA_256"):
        params = self.kms.get_parameters_for_import(key, algorithm)
        pem, token = self.tmp / f"{name}.wrap.pem", self.tmp / f"{name}.token"
        pem.write_text(params.public_key_pem)
        token.write_text(params.import_token)  # a file: a token may start with '-' (see test_cli)
        return pem, token

    def __call__(self, *args, input: bytes | None = None, ok: bool = True):
        r = self.kh.kms_cli(self.home, *map(str, args), input=input)
        if ok:
            assert r.returncode == 0, (args, r.stderr.decode())
        return r

    def json(self, *args, input=None):
        return json.loads(self(*args, "--json", input=input).stdout)

    def import_params(self, key: str, name: str, algorithm: str = "RSAES_OAEP_SHA_256"):
        pem, token = self.tmp / f"{name}.wrap.pem", self.tmp / f"{name}.token"
        r = self("get-parameters-for-import", key, "--wrapping-algorithm", algorithm,
                 "--public-key-out", pem, "--token-out", token, "--json")
        report = json.loads(r.stdout)
        assert pem.read_text() == report["public_key_pem"] and report["import_token_file"] == str(token)
        assert token.read_text() and "import_token" not in report  # the secret goes to the file only
        return pem, token, r

    def wrap_oaep(self, pem, material_file, out, md: str = "sha256"):
        openssl("pkeyutl", "-encrypt", "-pubin", "-inkey", pem, *OAEP[md], "-in", material_file, "-out", out)
        return out


@pytest.fixture(scope="module")
def cli(tmp_path_factory, kh):
    from kmscore import Kms

    tmp = tmp_path_factory.mktemp("interop")
    with Kms(tmp / "home") as kms:
        yield Cli(kh, tmp / "home", tmp, kms)


@pytest.fixture(scope="module")
def tmp(cli):
    return cli.tmp


@pytest.mark.parametrize("md", ["sha256", "sha1", "sha1-implicit-mgf"])
def test_aes_material_wrapped_by_openssl_imports(cli, tmp, md):
    alias = f"ext/aes-{md}"
    algorithm = "RSAES_OAEP_SHA_256" if md == "sha256" else "RSAES_OAEP_SHA_1"
    material = tmp / f"{md}.material"
    openssl("rand", "-out", material, 32)
    if md == "sha256":  # the whole flow through the CLI
        meta = cli.json("create-key", "--alias", alias, "--origin", "EXTERNAL")
        assert (meta["state"], meta["origin"]) == ("PendingImport", "EXTERNAL")
        pem, token, r = cli.import_params(alias, md, algorithm)
        wrapped = cli.wrap_oaep(pem, material, tmp / f"{md}.wrapped", md)
        meta = cli.json("import-key-material", alias, "--import-token", token, "--material", wrapped)
        assert meta["state"] == "Enabled" and meta["material_expires_at"] is None
        blob = cli("encrypt-data", alias, "--out", "-", input=b"interop").stdout
    else:
        cli.kms.create_key(alias, origin="EXTERNAL")
        pem, token = cli.params_via_facade(alias, md, algorithm)
        wrapped = cli.wrap_oaep(pem, material, tmp / f"{md}.wrapped", md)
        assert cli.kms.import_key_material(alias, token.read_text(), wrapped.read_bytes()).state.value == "Enabled"
        blob = cli.kms.encrypt_data(alias, b"interop")
    # the KMS really uses the material openssl made: decrypt a KMS blob ourselves (docs/FORMAT.md layout)
    aad = blob[:21]
    assert AESGCM(material.read_bytes()).decrypt(blob[21:33], blob[33:], aad) == b"interop"


def test_sha1_token_warns_on_the_cli(cli, tmp):
    cli.kms.create_key("ext/warn", origin="EXTERNAL")
    _, _, r = cli.import_params("ext/warn", "warn", "RSAES_OAEP_SHA_1")
    assert "warning" in r.stderr.decode() and "SHA-1" in r.stderr.decode()


def test_wrapped_with_sha1_but_token_for_sha256_is_refused(cli, tmp, kh):
    cli.kms.create_key("ext/mismatch", origin="EXTERNAL")
    pem, token = cli.params_via_facade("ext/mismatch", "mismatch", "RSAES_OAEP_SHA_256")
    material = tmp / "mismatch.material"
    openssl("rand", "-out", material, 32)
    wrapped = cli.wrap_oaep(pem, material, tmp / "mismatch.wrapped", "sha1")
    r = cli("import-key-material", "ext/mismatch", "--import-token", token, "--material", wrapped, ok=False)
    kh.assert_refused(r, "unwrapped")
    assert cli.kms.describe_key("ext/mismatch").state.value == "PendingImport"


def test_reimport_through_the_cli_same_material_only(cli, tmp, kh):
    cli.kms.create_key("ext/again", origin="EXTERNAL")
    material, other = tmp / "again.material", tmp / "again.other"
    openssl("rand", "-out", material, 32)
    openssl("rand", "-out", other, 32)
    pem, token = cli.params_via_facade("ext/again", "again1")
    meta = cli.json("import-key-material", "ext/again", "--import-token", token,
                    "--material", cli.wrap_oaep(pem, material, tmp / "again1.wrapped"), "--expires", "+30")
    assert meta["material_expires_at"] is not None
    blob = cli.kms.encrypt_data("ext/again", b"kept")
    meta = cli.json("delete-imported-key-material", "ext/again")
    assert meta["state"] == "PendingImport" and meta["alias"] == "ext/again"
    pem, token = cli.params_via_facade("ext/again", "again2")
    r = cli("import-key-material", "ext/again", "--import-token", token,
            "--material", cli.wrap_oaep(pem, other, tmp / "again2.wrapped"), ok=False)
    kh.assert_refused(r, "ext/again", "different key material")
    pem, token = cli.params_via_facade("ext/again", "again3")
    cli("import-key-material", "ext/again", "--import-token", token,
        "--material", cli.wrap_oaep(pem, material, tmp / "again3.wrapped"))
    assert cli("decrypt-data", input=blob).stdout == b"kept"


def _public_pem(cli, key, out):
    cli("get-public-key", key, "--out", out)
    assert out.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    return out


@pytest.mark.parametrize("curve,spec,form", [("P-256", "EC_P256", "pkcs8"), ("P-384", "EC_P384", "sec1")])
def test_ec_private_key_imports_and_signatures_verify_with_openssl(cli, tmp, curve, spec, form):
    alias = f"ext/{spec.lower()}"
    pem_key = tmp / f"{spec}.pem"
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{curve}", "-out", pem_key)
    der = tmp / f"{spec}.der"
    if form == "pkcs8":
        openssl("pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in", pem_key, "-out", der)
    else:
        openssl("ec", "-outform", "DER", "-in", pem_key, "-out", der)
    cli.kms.create_key(alias, spec, origin="EXTERNAL")
    wrap_pem, token = cli.params_via_facade(alias, spec)
    wrapped = cli.wrap_oaep(wrap_pem, der, tmp / f"{spec}.wrapped")
    assert cli.kms.import_key_material(alias, token.read_text(), wrapped.read_bytes()).state.value == "Enabled"
    pub = _public_pem(cli, alias, tmp / f"{spec}.pub.pem")
    ours = openssl("pkey", "-in", pem_key, "-pubout").stdout.decode()
    assert pub.read_text() == ours
    msg = tmp / f"{spec}.msg"
    msg.write_bytes(b"signed by the KMS, checked by openssl")
    for n in (256, 384, 512):
        sig = tmp / f"{spec}.{n}.sig"
        if n == 256:
            cli("sign", alias, "--algorithm", f"ECDSA_SHA_{n}", "--in", msg, "--out", sig)
        else:
            sig.write_bytes(cli.kms.sign(alias, msg.read_bytes(), f"ECDSA_SHA_{n}"))
        assert b"Verified OK" in openssl("dgst", f"-sha{n}", "-verify", pub, "-signature", sig, msg).stdout
        bad = tmp / f"{spec}.{n}.bad"
        bad.write_bytes(b"different")
        assert openssl("dgst", f"-sha{n}", "-verify", pub, "-signature", sig, bad, check=False).returncode != 0
    # a signature openssl made with the private key verifies in the KMS
    sig = tmp / f"{spec}.openssl.sig"
    openssl("dgst", "-sha256", "-sign", pem_key, "-out", sig, msg)
    assert cli("verify", alias, "--algorithm", "ECDSA_SHA_256", "--signature", sig, "--in", msg).returncode == 0


@pytest.fixture(scope="module")
def rsa_ext(cli, tmp):
    """An RSA_2048 private key made by openssl, imported with RSA_AES_KEY_WRAP_SHA_256."""
    pem_key, der = tmp / "rsa.pem", tmp / "rsa.der"
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", pem_key)
    openssl("pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in", pem_key, "-out", der)
    cli.kms.create_key("ext/rsa", "RSA_2048", origin="EXTERNAL")
    wrap_pem, token = cli.params_via_facade("ext/rsa", "rsa", "RSA_AES_KEY_WRAP_SHA_256")
    aes_hex = openssl("rand", "-hex", 32).stdout.decode().strip()
    aes = tmp / "rsa.aes"
    aes.write_bytes(bytes.fromhex(aes_hex))
    wrapped_material = tmp / "rsa.material.wrapped"
    openssl("enc", "-id-aes256-wrap-pad", "-K", aes_hex, "-iv", "A65959A6", "-in", der, "-out", wrapped_material)
    wrapped_key = cli.wrap_oaep(wrap_pem, aes, tmp / "rsa.aes.wrapped")
    bundle = tmp / "rsa.bundle"
    bundle.write_bytes(wrapped_key.read_bytes() + wrapped_material.read_bytes())
    meta = cli.kms.import_key_material("ext/rsa", token.read_text(), bundle.read_bytes())
    assert (meta.state.value, meta.spec.value, meta.usage.value) == ("Enabled", "RSA_2048", "SIGN_VERIFY")
    return pem_key, bundle


def test_rsa_private_key_imports_with_aes_key_wrap(cli, tmp, rsa_ext):
    pem_key, _ = rsa_ext
    pub = _public_pem(cli, "ext/rsa", tmp / "rsa.pub.pem")
    assert pub.read_text() == openssl("pkey", "-in", pem_key, "-pubout").stdout.decode()


@pytest.mark.parametrize("alg", [f"RSASSA_{p}_SHA_{n}" for p in ("PSS", "PKCS1_V1_5") for n in (256, 384, 512)])
def test_rsa_signatures_verify_with_openssl(cli, tmp, rsa_ext, alg):
    pub = tmp / "rsa.pub.pem"
    if not pub.exists():
        _public_pem(cli, "ext/rsa", pub)
    n = alg.rsplit("_", 1)[1]
    pss = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"] if "PSS" in alg else []
    msg = tmp / f"{alg}.msg"
    msg.write_bytes(b"an RSA-signed message " + alg.encode())
    sig = tmp / f"{alg}.sig"
    if alg in ("RSASSA_PSS_SHA_256", "RSASSA_PKCS1_V1_5_SHA_512"):
        cli("sign", "ext/rsa", "--algorithm", alg, "--in", msg, "--out", sig)
    else:
        sig.write_bytes(cli.kms.sign("ext/rsa", msg.read_bytes(), alg))
    r = openssl("dgst", f"-sha{n}", *pss, "-verify", pub, "-signature", sig, msg)
    assert b"Verified OK" in r.stdout
    # the same signature, checked as a signature over the digest with pkeyutl
    digest = tmp / f"{alg}.digest"
    digest.write_bytes(hashlib.new(f"sha{n}", msg.read_bytes()).digest())
    popts = ["-pkeyopt", f"digest:sha{n}"] + (
        ["-pkeyopt", "rsa_padding_mode:pss", "-pkeyopt", "rsa_pss_saltlen:digest"] if "PSS" in alg else [])
    r = openssl("pkeyutl", "-verify", "-pubin", "-inkey", pub, "-in", digest, "-sigfile", sig, *popts)
    assert b"Signature Verified Successfully" in r.stdout
    # a DIGEST-type signature from the KMS verifies against the original message
    dsig = tmp / f"{alg}.dsig"
    if alg == "RSASSA_PSS_SHA_384":
        cli("sign", "ext/rsa", "--algorithm", alg, "--message-type", "DIGEST", "--in", digest, "--out", dsig)
    else:
        dsig.write_bytes(cli.kms.sign("ext/rsa", digest.read_bytes(), alg, "DIGEST"))
    assert b"Verified OK" in openssl("dgst", f"-sha{n}", *pss, "-verify", pub, "-signature", dsig, msg).stdout


def test_kms_generated_keys_sign_for_openssl(cli, tmp):
    for alias, spec, alg, dgst in (("gen/ec", "EC_P256", "ECDSA_SHA_256", []),
                                   ("gen/rsa", "RSA_2048", "RSASSA_PSS_SHA_256",
                                    ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"])):
        cli.kms.create_key(alias, spec)
        pub = _public_pem(cli, alias, tmp / f"{spec}.gen.pub")
        sig = tmp / f"{spec}.gen.sig"
        cli("sign", alias, "--algorithm", alg, "--out", sig, input=b"payload")
        msg = tmp / f"{spec}.gen.msg"
        msg.write_bytes(b"payload")
        assert b"Verified OK" in openssl("dgst", "-sha256", *dgst, "-verify", pub, "-signature", sig, msg).stdout
        # digest-based check with pkeyutl
        digest = tmp / f"{spec}.gen.digest"
        digest.write_bytes(hashlib.sha256(b"payload").digest())
        popts = ["-pkeyopt", "digest:sha256"] + (["-pkeyopt", "rsa_padding_mode:pss", "-pkeyopt", "rsa_pss_saltlen:digest"] if dgst else [])
        openssl("pkeyutl", "-verify", "-pubin", "-inkey", pub, "-in", digest, "-sigfile", sig, *popts)


@pytest.mark.parametrize("md,algorithm", [("sha256", "RSAES_OAEP_SHA_256"), ("sha1", "RSAES_OAEP_SHA_1")])
def test_openssl_encrypts_kms_rsa_key_decrypts(cli, tmp, md, algorithm, kh):
    if not (tmp / "rsaenc.pub").exists():
        cli.kms.create_key("gen/rsa-enc", "RSA_2048", "ENCRYPT_DECRYPT")
        _public_pem(cli, "gen/rsa-enc", tmp / "rsaenc.pub")
    msg = tmp / f"rsaenc.{md}.msg"
    msg.write_bytes(b"encrypted by openssl " + md.encode())
    ct = tmp / f"rsaenc.{md}.ct"
    openssl("pkeyutl", "-encrypt", "-pubin", "-inkey", tmp / "rsaenc.pub", *OAEP[md], "-in", msg, "-out", ct)
    r = cli("decrypt-data", "gen/rsa-enc", "--algorithm", algorithm, "--in", ct)
    assert r.stdout == msg.read_bytes()
    other = "RSAES_OAEP_SHA_1" if md == "sha256" else "RSAES_OAEP_SHA_256"
    kh.assert_refused(cli("decrypt-data", "gen/rsa-enc", "--algorithm", other, "--in", ct, ok=False))
