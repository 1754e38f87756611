"""boto3, unchanged, runs every AWS KMS operation keyhold offers against a real `kms serve`
process: one server per module (each test makes its own keys), ARNs in the answers, the
encryption context enforced, import with material wrapped by the `openssl` CLI and by
`cryptography`, and the AWS error code of each way an operation is refused."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
import uuid

import botocore.exceptions
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

ARN = "arn:aws:kms:eu-west-1:000000000000:key/"


def distinct(client):
    """Sign one more header, unique per call. SigV4 has no nonce: botocore signs two
    identical calls made in the same second identically (its amz-sdk-invocation-id is
    added after signing), and the server's replay memory refuses the second as a replay
    (see test_identical_calls_in_one_second_are_not_replays). Tests that are about
    something else must not trip over that."""
    client.meta.events.register("before-sign.kms", lambda request, **kw: request.headers.__setitem__(
        "x-keyhold-test-nonce", uuid.uuid4().hex))
    return client


@pytest.fixture(scope="module")
def kms(module_server):
    return distinct(module_server.boto3(module_server.access_key()))


def code_of(call, *args, **kwargs) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(*args, **kwargs)
    return e.value.response["Error"]["Code"]


def alias() -> str:
    return f"alias/t/{uuid.uuid4().hex[:12]}"


def new_key(kms, **kw) -> str:
    return kms.create_key(**kw)["KeyMetadata"]["KeyId"]


# -- keys -----------------------------------------------------------------------------------
def test_create_describe_list_keys(kms):
    md = kms.create_key(Description="orders", KeyUsage="ENCRYPT_DECRYPT", KeySpec="SYMMETRIC_DEFAULT")["KeyMetadata"]
    key_id = md["KeyId"]
    assert md["Arn"] == ARN + key_id and md["AWSAccountId"] == "000000000000"
    assert (md["KeyState"], md["Enabled"], md["KeySpec"], md["Origin"], md["KeyManager"]) == (
        "Enabled", True, "SYMMETRIC_DEFAULT", "AWS_KMS", "CUSTOMER")
    assert md["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"] and md["Description"] == "orders"
    assert abs(md["CreationDate"].timestamp() - time.time()) < 3600
    for name in (key_id, ARN + key_id, key_id.upper()):
        assert kms.describe_key(KeyId=name)["KeyMetadata"]["KeyId"] == key_id
    ids = {k["KeyId"] for k in kms.list_keys()["Keys"]}
    assert key_id in ids


def test_arns_carry_the_region_the_request_was_signed_for(module_server):
    tokyo = distinct(module_server.boto3(module_server.access_key(), region="ap-northeast-1"))
    md = tokyo.create_key(Description="regional")["KeyMetadata"]
    assert md["Arn"] == f"arn:aws:kms:ap-northeast-1:000000000000:key/{md['KeyId']}"
    assert tokyo.encrypt(KeyId=ARN + md["KeyId"], Plaintext=b"x")["KeyId"] == md["Arn"]  # any region names it


def test_list_keys_pages(kms):
    made = {new_key(kms) for _ in range(3)}
    seen, marker, pages = [], None, 0
    while True:
        page = kms.list_keys(Limit=2, **({"Marker": marker} if marker else {}))
        seen += [k["KeyId"] for k in page["Keys"]]
        pages += 1
        if not page["Truncated"]:
            break
        marker = page["NextMarker"]
    assert made <= set(seen) and len(seen) == len(set(seen)) and pages >= 2
    paginated = [k["KeyId"] for p in kms.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 2}) for k in p["Keys"]]
    assert sorted(paginated) == sorted(seen)


def test_specs_and_usages(kms):
    for spec, usage, field, expected in [
        ("RSA_2048", "SIGN_VERIFY", "SigningAlgorithms", "RSASSA_PSS_SHA_256"),
        ("RSA_2048", "ENCRYPT_DECRYPT", "EncryptionAlgorithms", "RSAES_OAEP_SHA_256"),
        ("ECC_NIST_P256", "SIGN_VERIFY", "SigningAlgorithms", "ECDSA_SHA_256"),
        ("ECC_NIST_P384", "SIGN_VERIFY", "SigningAlgorithms", "ECDSA_SHA_384"),
        ("HMAC_384", "GENERATE_VERIFY_MAC", "MacAlgorithms", "HMAC_SHA_384"),
    ]:
        md = kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]
        assert (md["KeySpec"], md["CustomerMasterKeySpec"], md["KeyUsage"]) == (spec, spec, usage)
        assert expected in md[field]


def test_enable_disable_and_deletion(kms):
    key_id = new_key(kms)
    kms.disable_key(KeyId=key_id)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    kms.enable_key(KeyId=key_id)
    out = kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert out["KeyState"] == "PendingDeletion" and out["PendingWindowInDays"] == 7 and out["KeyId"] == ARN + key_id
    assert 6.9 * 86400 < out["DeletionDate"].timestamp() - time.time() < 7.1 * 86400
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["DeletionDate"] == out["DeletionDate"]
    assert kms.cancel_key_deletion(KeyId=key_id)["KeyId"] == ARN + key_id
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"  # as AWS


def test_update_key_description(kms):
    key_id = new_key(kms, Description="before")
    kms.update_key_description(KeyId=key_id, Description="after")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == "after"


# -- aliases ----------------------------------------------------------------------------------
def test_aliases_create_list_update_delete(kms):
    first, second, name = new_key(kms), new_key(kms), alias()
    kms.create_alias(AliasName=name, TargetKeyId=first)
    for spelling in (name, f"arn:aws:kms:eu-west-1:000000000000:{name}"):
        assert kms.describe_key(KeyId=spelling)["KeyMetadata"]["KeyId"] == first
    listed = {a["AliasName"]: a for a in kms.list_aliases()["Aliases"]}
    assert listed[name]["TargetKeyId"] == first
    assert listed[name]["AliasArn"] == f"arn:aws:kms:eu-west-1:000000000000:{name}"
    assert [a["AliasName"] for a in kms.list_aliases(KeyId=first)["Aliases"]] == [name]
    assert kms.list_aliases(KeyId=second)["Aliases"] == []
    kms.update_alias(AliasName=name, TargetKeyId=second)
    assert kms.describe_key(KeyId=name)["KeyMetadata"]["KeyId"] == second
    assert kms.list_aliases(KeyId=first)["Aliases"] == []
    kms.delete_alias(AliasName=name)
    assert code_of(kms.describe_key, KeyId=name) == "NotFoundException"
    assert kms.describe_key(KeyId=second)["KeyMetadata"]["KeyState"] == "Enabled"  # the key stays


def test_alias_refusals(kms):
    key_id, name = new_key(kms), alias()
    kms.create_alias(AliasName=name, TargetKeyId=key_id)
    assert code_of(kms.create_alias, AliasName=name, TargetKeyId=new_key(kms)) == "AlreadyExistsException"
    assert code_of(kms.create_alias, AliasName=alias(), TargetKeyId=key_id) == "LimitExceededException"
    assert code_of(kms.create_alias, AliasName="app/no-prefix", TargetKeyId=key_id) == "InvalidAliasNameException"
    assert code_of(kms.create_alias, AliasName="alias/app/default", TargetKeyId=new_key(kms)) == "InvalidAliasNameException"
    assert code_of(kms.update_alias, AliasName=name, TargetKeyId=new_key(kms, KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")) == "ValidationException"
    assert code_of(kms.delete_alias, AliasName=alias()) == "NotFoundException"
    assert kms.describe_key(KeyId=name)["KeyMetadata"]["KeyId"] == key_id  # a refused move keeps it


def test_concurrent_create_alias_on_one_key_keeps_one_alias(module_server, kms):
    """keyhold keys have one alias and renaming is the facade's primitive: without the
    adapter's serialisation two CreateAlias calls could both succeed, the first alias
    silently replaced by the second."""
    import threading

    key_id, names = new_key(kms), [alias() for _ in range(8)]
    shared = module_server.access_key(name="race")
    clients = [distinct(module_server.boto3(shared)) for _ in range(8)]
    results: dict[str, str] = {}
    start = threading.Barrier(8)

    def create(client, name):
        start.wait()
        try:
            client.create_alias(AliasName=name, TargetKeyId=key_id)
            results[name] = "ok"
        except botocore.exceptions.ClientError as e:
            results[name] = e.response["Error"]["Code"]

    threads = [threading.Thread(target=create, args=pair) for pair in zip(clients, names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    won = [n for n, r in results.items() if r == "ok"]
    assert len(won) == 1 and set(results.values()) <= {"ok", "LimitExceededException"}, results
    assert [a["AliasName"] for a in kms.list_aliases(KeyId=key_id)["Aliases"]] == won


def test_default_keys_are_aws_managed(kms):
    md = kms.describe_key(KeyId="alias/sidecar/default")["KeyMetadata"]  # made on first use, as AWS's
    assert md["KeyManager"] == "AWS" and md["KeySpec"] == "SYMMETRIC_DEFAULT"
    assert code_of(kms.disable_key, KeyId="alias/sidecar/default") == "UnsupportedOperationException"
    assert code_of(kms.delete_alias, AliasName="alias/sidecar/default") == "UnsupportedOperationException"
    blob = kms.encrypt(KeyId="alias/sidecar/default", Plaintext=b"x")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"


# -- encryption -------------------------------------------------------------------------------
def test_encrypt_decrypt_with_context(kms):
    key_id, name = new_key(kms), alias()
    kms.create_alias(AliasName=name, TargetKeyId=key_id)
    ctx = {"tenant": "a", "purpose": "test"}
    out = kms.encrypt(KeyId=name, Plaintext=b"secret", EncryptionContext=ctx)
    assert out["KeyId"] == ARN + key_id and out["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    blob = out["CiphertextBlob"]
    got = kms.decrypt(CiphertextBlob=blob, EncryptionContext=dict(reversed(ctx.items())))
    assert got["Plaintext"] == b"secret" and got["KeyId"] == ARN + key_id
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx, KeyId=name)["Plaintext"] == b"secret"


@pytest.mark.parametrize("context", [None, {}, {"tenant": "b", "purpose": "test"}, {"tenant": "a"},
                                     {"tenant": "a", "purpose": "test", "extra": "x"}])
def test_decrypt_with_a_wrong_or_missing_context_fails(kms, context):
    """The AWS emulators' most reported bug: the context must be the one encrypted with."""
    key_id = new_key(kms)
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"secret", EncryptionContext={"tenant": "a", "purpose": "test"})["CiphertextBlob"]
    extra = {} if context is None else {"EncryptionContext": context}
    assert code_of(kms.decrypt, CiphertextBlob=blob, **extra) == "InvalidCiphertextException"
    assert code_of(kms.re_encrypt, CiphertextBlob=blob, DestinationKeyId=key_id,
                   **({} if context is None else {"SourceEncryptionContext": context})) == "InvalidCiphertextException"


def test_a_context_given_only_at_decryption_fails(kms):
    key_id = new_key(kms)
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"secret")["CiphertextBlob"]
    assert code_of(kms.decrypt, CiphertextBlob=blob, EncryptionContext={"a": "b"}) == "InvalidCiphertextException"


def test_decrypt_refusals(kms):
    key_id, other = new_key(kms), new_key(kms)
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"secret")["CiphertextBlob"]
    assert code_of(kms.decrypt, CiphertextBlob=blob, KeyId=other) == "IncorrectKeyException"
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    assert code_of(kms.decrypt, CiphertextBlob=tampered) == "InvalidCiphertextException"
    assert code_of(kms.decrypt, CiphertextBlob=b"short") == "InvalidCiphertextException"


def test_re_encrypt(kms):
    source, destination = new_key(kms), new_key(kms)
    blob = kms.encrypt(KeyId=source, Plaintext=b"moving", EncryptionContext={"a": "1"})["CiphertextBlob"]
    out = kms.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext={"a": "1"}, DestinationKeyId=destination,
                         DestinationEncryptionContext={"b": "2"})
    assert out["SourceKeyId"] == ARN + source and out["KeyId"] == ARN + destination
    assert kms.decrypt(CiphertextBlob=out["CiphertextBlob"], EncryptionContext={"b": "2"})["Plaintext"] == b"moving"
    assert code_of(kms.decrypt, CiphertextBlob=out["CiphertextBlob"], EncryptionContext={"a": "1"}) == "InvalidCiphertextException"
    assert code_of(kms.re_encrypt, CiphertextBlob=blob, SourceKeyId=destination, SourceEncryptionContext={"a": "1"},
                   DestinationKeyId=destination) == "IncorrectKeyException"


def test_rsa_encryption(kms):
    key_id = new_key(kms, KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")
    public = serialization.load_der_public_key(kms.get_public_key(KeyId=key_id)["PublicKey"])
    mine = public.encrypt(b"to the key", padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    got = kms.decrypt(CiphertextBlob=mine, KeyId=key_id, EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert got["Plaintext"] == b"to the key" and got["EncryptionAlgorithm"] == "RSAES_OAEP_SHA_256"
    out = kms.encrypt(KeyId=key_id, Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_1")
    assert kms.decrypt(CiphertextBlob=out["CiphertextBlob"], KeyId=key_id, EncryptionAlgorithm="RSAES_OAEP_SHA_1")["Plaintext"] == b"x"
    assert code_of(kms.encrypt, KeyId=key_id, Plaintext=b"x") == "InvalidKeyUsageException"  # SYMMETRIC_DEFAULT


def test_generate_data_keys(kms):
    key_id = new_key(kms)
    dk = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext={"f": "1"})
    assert len(dk["Plaintext"]) == 32 and dk["KeyId"] == ARN + key_id
    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"f": "1"})["Plaintext"] == dk["Plaintext"]
    assert len(kms.generate_data_key(KeyId=key_id, NumberOfBytes=64)["Plaintext"]) == 64
    bare = kms.generate_data_key_without_plaintext(KeyId=key_id, KeySpec="AES_256")
    assert "Plaintext" not in bare and len(kms.decrypt(CiphertextBlob=bare["CiphertextBlob"])["Plaintext"]) == 32
    assert code_of(kms.generate_data_key, KeyId=key_id, KeySpec="AES_128") == "UnsupportedOperationException"
    assert code_of(kms.generate_data_key, KeyId=key_id) == "ValidationException"


def test_generate_random(kms):
    assert len(kms.generate_random(NumberOfBytes=1024)["Plaintext"]) == 1024
    assert code_of(kms.generate_random, NumberOfBytes=1025) == "ValidationException"


# -- signatures and MACs ---------------------------------------------------------------------------
@pytest.mark.parametrize("spec,algorithm", [("ECC_NIST_P256", "ECDSA_SHA_256"), ("RSA_2048", "RSASSA_PSS_SHA_256"),
                                            ("RSA_3072", "RSASSA_PKCS1_V1_5_SHA_384")])
def test_sign_verify_get_public_key(kms, spec, algorithm):
    key_id = new_key(kms, KeySpec=spec, KeyUsage="SIGN_VERIFY")
    sig = kms.sign(KeyId=key_id, Message=b"hello", SigningAlgorithm=algorithm)
    assert sig["KeyId"] == ARN + key_id and sig["SigningAlgorithm"] == algorithm
    ok = kms.verify(KeyId=key_id, Message=b"hello", Signature=sig["Signature"], SigningAlgorithm=algorithm)
    assert ok["SignatureValid"] is True
    assert code_of(kms.verify, KeyId=key_id, Message=b"hellO", Signature=sig["Signature"],
                   SigningAlgorithm=algorithm) == "KMSInvalidSignatureException"
    pub = kms.get_public_key(KeyId=key_id)
    assert pub["KeySpec"] == spec and pub["KeyUsage"] == "SIGN_VERIFY" and algorithm in pub["SigningAlgorithms"]
    public = serialization.load_der_public_key(pub["PublicKey"])  # a third party verifies it
    h = {"256": hashes.SHA256(), "384": hashes.SHA384()}[algorithm[-3:]]
    if spec.startswith("ECC"):
        public.verify(sig["Signature"], b"hello", ec.ECDSA(h))
    elif "PSS" in algorithm:
        public.verify(sig["Signature"], b"hello", padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
    else:
        public.verify(sig["Signature"], b"hello", padding.PKCS1v15(), h)
    digest = hashlib.new(h.name, b"hello").digest()
    by_digest = kms.sign(KeyId=key_id, Message=digest, MessageType="DIGEST", SigningAlgorithm=algorithm)["Signature"]
    assert kms.verify(KeyId=key_id, Message=b"hello", Signature=by_digest, SigningAlgorithm=algorithm)["SignatureValid"]


def test_generate_verify_mac(kms):
    key_id = new_key(kms, KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
    out = kms.generate_mac(KeyId=key_id, Message=b"msg", MacAlgorithm="HMAC_SHA_256")
    assert out["KeyId"] == ARN + key_id and len(out["Mac"]) == 32
    assert kms.verify_mac(KeyId=key_id, Message=b"msg", Mac=out["Mac"], MacAlgorithm="HMAC_SHA_256")["MacValid"] is True
    assert code_of(kms.verify_mac, KeyId=key_id, Message=b"msh", Mac=out["Mac"],
                   MacAlgorithm="HMAC_SHA_256") == "KMSInvalidMacException"
    assert code_of(kms.generate_mac, KeyId=key_id, Message=b"m", MacAlgorithm="HMAC_SHA_512") == "InvalidKeyUsageException"


# -- rotation -------------------------------------------------------------------------------------
def test_rotation(kms):
    key_id = new_key(kms)
    assert kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    status = kms.get_key_rotation_status(KeyId=key_id)
    assert status["KeyRotationEnabled"] is True and status["RotationPeriodInDays"] == 90
    assert 89 * 86400 < status["NextRotationDate"].timestamp() - time.time() <= 90 * 86400
    old = kms.encrypt(KeyId=key_id, Plaintext=b"v1")["CiphertextBlob"]
    assert kms.rotate_key_on_demand(KeyId=key_id)["KeyId"] == ARN + key_id
    assert kms.decrypt(CiphertextBlob=old)["Plaintext"] == b"v1"
    kms.disable_key_rotation(KeyId=key_id)
    assert kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False
    signing = new_key(kms, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    assert kms.get_key_rotation_status(KeyId=signing)["KeyRotationEnabled"] is False
    assert code_of(kms.enable_key_rotation, KeyId=signing) == "UnsupportedOperationException"
    assert code_of(kms.rotate_key_on_demand, KeyId=signing) == "UnsupportedOperationException"


# -- import ----------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_import_aes_material_wrapped_by_openssl(kms, tmp_path):
    """As AWS documents it: the wrapping key is DER; `openssl pkeyutl` with OAEP SHA-256."""
    key_id = new_key(kms, Origin="EXTERNAL")
    md = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (md["KeyState"], md["Origin"]) == ("PendingImport", "EXTERNAL") and "ExpirationModel" not in md
    params = kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    assert params["KeyId"] == ARN + key_id and params["ParametersValidTo"].timestamp() > time.time() + 23 * 3600
    (tmp_path / "wrapping.der").write_bytes(params["PublicKey"])
    material = bytes(range(32))
    (tmp_path / "material.bin").write_bytes(material)
    subprocess.run(["openssl", "pkeyutl", "-encrypt", "-in", str(tmp_path / "material.bin"),
                    "-out", str(tmp_path / "wrapped.bin"), "-inkey", str(tmp_path / "wrapping.der"),
                    "-keyform", "DER", "-pubin", "-pkeyopt", "rsa_padding_mode:oaep",
                    "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256"], check=True, capture_output=True)
    valid_to = time.time() + 86400 * 30
    kms.import_key_material(KeyId=key_id, ImportToken=params["ImportToken"],
                            EncryptedKeyMaterial=(tmp_path / "wrapped.bin").read_bytes(),
                            ExpirationModel="KEY_MATERIAL_EXPIRES", ValidTo=valid_to)
    md = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert md["KeyState"] == "Enabled" and md["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    assert abs(md["ValidTo"].timestamp() - valid_to) < 1
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"imported")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"imported"
    # the token is spent; other material is refused; the same material comes back after deletion
    assert code_of(kms.import_key_material, KeyId=key_id, ImportToken=params["ImportToken"],
                   EncryptedKeyMaterial=(tmp_path / "wrapped.bin").read_bytes(),
                   ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE") == "InvalidImportTokenException"
    assert kms.delete_imported_key_material(KeyId=key_id)["KeyId"] == ARN + key_id
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingImport"
    assert code_of(kms.decrypt, CiphertextBlob=blob) == "KMSInvalidStateException"
    params = kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    wrapping = serialization.load_der_public_key(params["PublicKey"])
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    assert code_of(kms.import_key_material, KeyId=key_id, ImportToken=params["ImportToken"],
                   EncryptedKeyMaterial=wrapping.encrypt(bytes(32), oaep),
                   ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE") == "IncorrectKeyMaterialException"
    params = kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    wrapping = serialization.load_der_public_key(params["PublicKey"])
    assert code_of(kms.import_key_material, KeyId=key_id, ImportToken=params["ImportToken"],
                   EncryptedKeyMaterial=b"\1" * 256, ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE") == "InvalidCiphertextException"
    kms.import_key_material(KeyId=key_id, ImportToken=params["ImportToken"],
                            EncryptedKeyMaterial=wrapping.encrypt(material, oaep), ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"imported"
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE"


def test_import_rsa_private_key_with_rsa_aes_key_wrap(kms):
    """RSA_AES_KEY_WRAP_SHA_256, built with `cryptography` as AWS documents it: a one-time
    AES key under OAEP, then the PKCS#8 private key under RFC 5649 key wrap with it."""
    key_id = new_key(kms, Origin="EXTERNAL", KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")
    params = kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSA_AES_KEY_WRAP_SHA_256", WrappingKeySpec="RSA_3072")
    wrapping = serialization.load_der_public_key(params["PublicKey"])
    private = rsa.generate_private_key(65537, 2048)
    pkcs8 = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    aes = bytes(range(32))
    wrapped = wrapping.encrypt(aes, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    kms.import_key_material(KeyId=key_id, ImportToken=params["ImportToken"],
                            EncryptedKeyMaterial=wrapped + aes_key_wrap_with_padding(aes, pkcs8),
                            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    sig = kms.sign(KeyId=key_id, Message=b"m", SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_256")["Signature"]
    private.public_key().verify(sig, b"m", padding.PKCS1v15(), hashes.SHA256())
    assert code_of(kms.delete_imported_key_material, KeyId=key_id) == "UnsupportedOperationException"  # permanent


def test_import_refusals(kms):
    made = new_key(kms)
    assert code_of(kms.get_parameters_for_import, KeyId=made, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                   WrappingKeySpec="RSA_2048") == "UnsupportedOperationException"
    assert code_of(kms.delete_imported_key_material, KeyId=made) == "UnsupportedOperationException"
    external = new_key(kms, Origin="EXTERNAL")
    assert code_of(kms.get_parameters_for_import, KeyId=external, WrappingAlgorithm="RSAES_PKCS1_V1_5",
                   WrappingKeySpec="RSA_2048") == "UnsupportedOperationException"
    assert code_of(kms.import_key_material, KeyId=external, ImportToken=b"kh1.0000", EncryptedKeyMaterial=b"x" * 256,
                   ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE") == "InvalidImportTokenException"
    assert code_of(kms.import_key_material, KeyId=external, ImportToken=b"kh1.0000", EncryptedKeyMaterial=b"x" * 256,
                   ExpirationModel="KEY_MATERIAL_EXPIRES") == "ValidationException"  # ValidTo missing


# -- the AWS code of each refusal ----------------------------------------------------------------------
def test_unknown_keys(kms):
    for name in (str(uuid.uuid4()), ARN + str(uuid.uuid4()), "alias/no/such", "app/db-without-prefix",
                 "arn:aws:kms:eu-west-1:123456789012:key/" + str(uuid.uuid4())):
        assert code_of(kms.describe_key, KeyId=name) == "NotFoundException", name
        assert code_of(kms.encrypt, KeyId=name, Plaintext=b"x") == "NotFoundException", name
    assert code_of(kms.describe_key, KeyId="arn:aws:s3:::bucket") == "InvalidArnException"


def test_disabled_key(kms):
    key_id = new_key(kms)
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    kms.disable_key(KeyId=key_id)
    assert code_of(kms.encrypt, KeyId=key_id, Plaintext=b"x") == "DisabledException"
    assert code_of(kms.decrypt, CiphertextBlob=blob) == "DisabledException"
    assert code_of(kms.generate_data_key, KeyId=key_id, KeySpec="AES_256") == "DisabledException"
    kms.enable_key(KeyId=key_id)
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"


def test_pending_deletion_and_pending_import(kms):
    key_id = new_key(kms)
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert code_of(kms.decrypt, CiphertextBlob=blob) == "KMSInvalidStateException"
    assert code_of(kms.encrypt, KeyId=key_id, Plaintext=b"x") == "KMSInvalidStateException"
    assert code_of(kms.enable_key, KeyId=key_id) == "KMSInvalidStateException"
    assert code_of(kms.schedule_key_deletion, KeyId=key_id) == "KMSInvalidStateException"
    external = new_key(kms, Origin="EXTERNAL")
    assert code_of(kms.encrypt, KeyId=external, Plaintext=b"x") == "KMSInvalidStateException"
    assert code_of(kms.enable_key, KeyId=external) == "KMSInvalidStateException"


def test_wrong_key_usage(kms):
    signing = new_key(kms, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    symmetric = new_key(kms)
    mac = new_key(kms, KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
    assert code_of(kms.encrypt, KeyId=signing, Plaintext=b"x") == "InvalidKeyUsageException"
    assert code_of(kms.generate_data_key, KeyId=mac, KeySpec="AES_256") == "InvalidKeyUsageException"
    assert code_of(kms.sign, KeyId=symmetric, Message=b"x", SigningAlgorithm="ECDSA_SHA_256") == "InvalidKeyUsageException"
    assert code_of(kms.sign, KeyId=signing, Message=b"x", SigningAlgorithm="RSASSA_PSS_SHA_256") == "InvalidKeyUsageException"
    assert code_of(kms.generate_mac, KeyId=symmetric, Message=b"x", MacAlgorithm="HMAC_SHA_256") == "InvalidKeyUsageException"
    assert code_of(kms.get_public_key, KeyId=symmetric) == "InvalidKeyUsageException"


def test_create_key_refusals(kms):
    assert code_of(kms.create_key, KeySpec="ECC_NIST_P521", KeyUsage="SIGN_VERIFY") == "UnsupportedOperationException"
    assert code_of(kms.create_key, KeySpec="ECC_NIST_P256", KeyUsage="ENCRYPT_DECRYPT") == "ValidationException"
    assert code_of(kms.create_key, KeySpec="HMAC_256", Origin="EXTERNAL", KeyUsage="GENERATE_VERIFY_MAC") == "ValidationException"
    assert code_of(kms.create_key, Origin="AWS_CLOUDHSM") == "UnsupportedOperationException"
    assert code_of(kms.create_key, Tags=[{"TagKey": "a", "TagValue": "b"}]) == "UnsupportedOperationException"
    assert code_of(kms.create_key, Policy='{"Version": "2012-10-17"}') == "UnsupportedOperationException"
    assert code_of(kms.create_key, MultiRegion=True) == "UnsupportedOperationException"
    assert code_of(kms.encrypt, KeyId=new_key(kms), Plaintext=b"x", DryRun=True) == "UnsupportedOperationException"


def test_operations_not_offered(kms):
    key_id = new_key(kms)
    assert code_of(kms.create_grant, KeyId=key_id, GranteePrincipal="p", Operations=["Decrypt"]) == "UnsupportedOperationException"
    assert code_of(kms.tag_resource, KeyId=key_id, Tags=[{"TagKey": "a", "TagValue": "b"}]) == "UnsupportedOperationException"
    assert code_of(kms.get_key_policy, KeyId=key_id) == "UnsupportedOperationException"
    assert code_of(kms.describe_custom_key_stores) == "UnsupportedOperationException"
    assert code_of(kms.generate_data_key_pair, KeyId=key_id, KeyPairSpec="RSA_2048") == "UnsupportedOperationException"


def test_mac_and_plaintext_bounds(kms):
    key_id = new_key(kms)
    assert code_of(kms.encrypt, KeyId=key_id, Plaintext=b"x" * 4097) == "ValidationException"
    mac_key = new_key(kms, KeySpec="HMAC_512", KeyUsage="GENERATE_VERIFY_MAC")
    assert len(kms.generate_mac(KeyId=mac_key, Message=b"m" * 4096, MacAlgorithm="HMAC_SHA_512")["Mac"]) == 64
    assert code_of(kms.generate_mac, KeyId=mac_key, Message=b"m" * 4097, MacAlgorithm="HMAC_SHA_512") == "ValidationException"


def test_every_response_field_is_in_botocores_model(module_server, kms):
    """botocore drops fields its model does not know: catch a misspelt one here."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("kms")
    raw: list[tuple[str, dict]] = []

    def keep(http_response, parsed, model, **kw):
        import json

        if http_response.status_code == 200 and http_response.content:
            raw.append((model.name, json.loads(http_response.content)))

    client = distinct(module_server.boto3(module_server.access_key()))
    client.meta.events.register("after-call.kms", keep)
    key_id = new_key(client, Description="x")
    client.create_alias(AliasName=alias(), TargetKeyId=key_id)
    client.list_aliases(KeyId=key_id)
    client.list_keys(Limit=1)
    client.get_key_rotation_status(KeyId=key_id)
    blob = client.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    client.re_encrypt(CiphertextBlob=blob, DestinationKeyId=key_id)
    client.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    client.schedule_key_deletion(KeyId=key_id)
    signing = new_key(client, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    client.get_public_key(KeyId=signing)
    client.get_parameters_for_import(KeyId=new_key(client, Origin="EXTERNAL"), WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                     WrappingKeySpec="RSA_2048")
    assert len(raw) >= 10
    for name, body in raw:
        shape = model.operation_model(name).output_shape
        known = set(shape.members) if shape else set()
        assert set(body) <= known, (name, set(body) - known)
        if "KeyMetadata" in body:
            assert set(body["KeyMetadata"]) <= set(shape.members["KeyMetadata"].members)


def test_identical_calls_in_one_second_are_not_replays(module_server):
    """SigV4 signs no nonce: unchanged boto3 signs identical calls of one second alike, and
    the server's replay memory accepts such a repeat for a few seconds (docs/API.md)."""
    plain = module_server.boto3(module_server.access_key())  # unchanged boto3: nothing unique is signed
    key_id = new_key(plain, Description=uuid.uuid4().hex)
    for _ in range(3):
        plain.generate_data_key(KeyId=key_id, KeySpec="AES_256")
