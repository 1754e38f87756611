"""The vendor's own SDK (huaweicloudsdkkms, explicit endpoint) runs every listed operation
against a real `kms serve` process, unchanged: the shapes it builds its models from
(string-typed numbers and booleans, hex data keys, base64 ciphertexts) are the ones
keyhold answers.

Two requests with the same body in the same second carry the same signature, which the
server's replay memory may refuse; so every request here is made unique by a fresh
`sequence` (the vendor's own field for that) or by its content."""

from __future__ import annotations

import base64
import hashlib
import os
import time
import uuid

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from tests.serve.vendorsdk import vendor_client

pytestmark = pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")  # the SDK's signer

pytest.importorskip("huaweicloudsdkkms")
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException  # noqa: E402
from huaweicloudsdkkms.v2 import (  # noqa: E402
    CancelKeyDeletionRequest, CreateDatakeyRequest, CreateDatakeyRequestBody, CreateDatakeyWithoutPlaintextRequest,
    CreateKeyRequest, CreateKeyRequestBody, CreateParametersForImportRequest, CreateRandomRequest, DecryptDataRequest,
    DecryptDataRequestBody, DecryptDatakeyRequest, DecryptDatakeyRequestBody, DeleteImportedKeyMaterialRequest,
    DeleteKeyRequest, DisableKeyRequest, DisableKeyRotationRequest, EnableKeyRequest, EnableKeyRotationRequest,
    EncryptDataRequest, EncryptDataRequestBody, EncryptDatakeyRequest, EncryptDatakeyRequestBody, GenerateMacRequest,
    GenerateMacRequestBody, GenRandomRequestBody, GetParametersForImportRequestBody, ImportKeyMaterialRequest,
    ImportKeyMaterialRequestBody, ListKeyDetailRequest, ListKeysRequest, ListKeysRequestBody, OperateKeyRequestBody,
    RotateOnDemandRequest, RotateOnDemandRequestBody, ScheduleKeyDeletionRequestBody, ShowKeyRotationStatusRequest,
    ShowPublicKeyRequest, SignRequest, SignRequestBody, UpdateKeyAliasRequest, UpdateKeyAliasRequestBody,
    UpdateKeyDescriptionRequest, UpdateKeyDescriptionRequestBody, UpdateKeyRotationIntervalRequest,
    UpdateKeyRotationIntervalRequestBody, ValidateSignatureRequest, VerifyMacRequest, VerifyMacRequestBody,
    VerifyRequestBody,
)


def seq() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="module")
def kms(module_server):
    return vendor_client(module_server, module_server.access_key())


def create(kms, **body) -> str:
    return kms.create_key(CreateKeyRequest(body=CreateKeyRequestBody(sequence=seq(), **body))).key_info.key_id


def on_key(key_id: str) -> OperateKeyRequestBody:
    return OperateKeyRequestBody(key_id=key_id, sequence=seq())


def describe(kms, key_id: str):
    return kms.list_key_detail(ListKeyDetailRequest(body=on_key(key_id))).key_info


def vendor_error(call) -> ClientRequestException:
    with pytest.raises(ClientRequestException) as e:
        call()
    return e.value


def test_key_lifecycle(kms):
    alias = f"app/db-{uuid.uuid4().hex[:8]}"
    key_id = create(kms, key_alias=alias, key_description="orders database")
    info = describe(kms, key_id)
    assert (info.key_id, info.key_alias, info.key_description) == (key_id, alias, "orders database")
    assert (info.key_spec, info.key_usage, info.origin, info.key_state) == ("AES_256", "ENCRYPT_DECRYPT", "kms", "2")
    assert info.default_key_flag == "0" and info.key_rotation_enabled == "false" and info.scheduled_deletion_date == ""
    assert abs(int(info.creation_date) / 1000 - time.time()) < 3600  # milliseconds, as a string

    renamed = alias + "-v2"
    out = kms.update_key_alias(UpdateKeyAliasRequest(body=UpdateKeyAliasRequestBody(key_id=key_id, key_alias=renamed, sequence=seq())))
    assert out.key_info.key_alias == renamed
    out = kms.update_key_description(UpdateKeyDescriptionRequest(
        body=UpdateKeyDescriptionRequestBody(key_id=key_id, key_description="renamed", sequence=seq())))
    assert out.key_info.key_description == "renamed"
    assert describe(kms, renamed).key_id == key_id  # keyhold's addition: an alias names the key too

    assert kms.disable_key(DisableKeyRequest(body=on_key(key_id))).key_info.key_state == "3"
    assert kms.enable_key(EnableKeyRequest(body=on_key(key_id))).key_info.key_state == "2"
    out = kms.delete_key(DeleteKeyRequest(
        body=ScheduleKeyDeletionRequestBody(key_id=key_id, pending_days="7", sequence=seq())))
    assert (out.key_id, out.key_state) == (key_id, "4")
    info = describe(kms, key_id)
    assert int(info.scheduled_deletion_date) / 1000 - time.time() > 6.9 * 86400
    out = kms.cancel_key_deletion(CancelKeyDeletionRequest(body=on_key(key_id)))
    assert out.key_state == "3"  # cancelled deletion leaves the key disabled


def test_list_keys_pages_and_filters(kms):
    ids = {create(kms, key_alias=f"list/k{i}-{uuid.uuid4().hex[:6]}") for i in range(3)}
    rsa_id = create(kms, key_spec="RSA_2048")
    listed = kms.list_keys(ListKeysRequest(body=ListKeysRequestBody(sequence=seq())))
    assert ids <= set(listed.keys) and rsa_id not in listed.keys  # the vendor lists AES_256 unless asked
    assert listed.truncated == "false" and listed.total == len(listed.keys)
    everything = kms.list_keys(ListKeysRequest(body=ListKeysRequestBody(key_spec="ALL", sequence=seq())))
    assert rsa_id in everything.keys
    pages, marker = [], None
    while True:
        page = kms.list_keys(ListKeysRequest(body=ListKeysRequestBody(limit="2", marker=marker, sequence=seq())))
        pages += page.keys
        if page.truncated == "false":
            break
        marker = page.next_marker
    assert pages == listed.keys
    disabled = next(iter(ids))
    kms.disable_key(DisableKeyRequest(body=on_key(disabled)))
    only = kms.list_keys(ListKeysRequest(body=ListKeysRequestBody(key_state="3", sequence=seq())))
    assert disabled in only.keys and all(d.key_state == "3" for d in only.key_details)


def test_encrypt_and_decrypt_data_with_aad(kms):
    key_id = create(kms)
    out = kms.encrypt_data(EncryptDataRequest(body=EncryptDataRequestBody(
        key_id=key_id, plain_text="hello world", additional_authenticated_data="order-17", sequence=seq())))
    assert out.key_id == key_id
    back = kms.decrypt_data(DecryptDataRequest(body=DecryptDataRequestBody(
        cipher_text=out.cipher_text, additional_authenticated_data="order-17", sequence=seq())))
    assert (back.key_id, back.plain_text, base64.b64decode(back.plain_text_base64)) == (key_id, "hello world", b"hello world")
    for aad in ("order-18", None):  # the AAD is enforced
        e = vendor_error(lambda: kms.decrypt_data(DecryptDataRequest(body=DecryptDataRequestBody(
            cipher_text=out.cipher_text, additional_authenticated_data=aad, sequence=seq()))))
        assert (e.status_code, e.error_code) == (400, "KMS.0308")


def test_data_keys_with_and_without_plaintext(kms):
    key_id = create(kms)
    dk = kms.create_datakey(CreateDatakeyRequest(body=CreateDatakeyRequestBody(key_id=key_id, datakey_length="512", sequence=seq())))
    assert len(bytes.fromhex(dk.plain_text)) == 64
    back = kms.decrypt_datakey(DecryptDatakeyRequest(body=DecryptDatakeyRequestBody(
        key_id=key_id, cipher_text=dk.cipher_text, datakey_cipher_length="64", sequence=seq())))
    assert back.data_key == dk.plain_text and back.datakey_length == "64"
    assert bytes.fromhex(back.datakey_dgst) == hashlib.sha256(bytes.fromhex(dk.plain_text)).digest()

    bare = kms.create_datakey_without_plaintext(CreateDatakeyWithoutPlaintextRequest(
        body=CreateDatakeyRequestBody(key_id=key_id, key_spec="AES_256", additional_authenticated_data="ctx", sequence=seq())))
    assert bare.key_id == key_id and bytes.fromhex(bare.cipher_text)
    back = kms.decrypt_datakey(DecryptDatakeyRequest(body=DecryptDatakeyRequestBody(
        key_id=key_id, cipher_text=bare.cipher_text, additional_authenticated_data="ctx", sequence=seq())))
    assert back.datakey_length == "32"

    dek = os.urandom(64)
    wrapped = kms.encrypt_datakey(EncryptDatakeyRequest(body=EncryptDatakeyRequestBody(
        key_id=key_id, plain_text=(dek + hashlib.sha256(dek).digest()).hex(), datakey_plain_length="64", sequence=seq())))
    assert wrapped.datakey_length == "64"
    back = kms.decrypt_datakey(DecryptDatakeyRequest(body=DecryptDatakeyRequestBody(
        key_id=key_id, cipher_text=wrapped.cipher_text, datakey_cipher_length="64", sequence=seq())))
    assert bytes.fromhex(back.data_key) == dek
    e = vendor_error(lambda: kms.encrypt_datakey(EncryptDatakeyRequest(body=EncryptDatakeyRequestBody(
        key_id=key_id, plain_text=(dek + bytes(32)).hex(), datakey_plain_length="64", sequence=seq()))))
    assert e.error_code == "KMS.2103"  # the digest must hold


def test_gen_random(kms):
    out = kms.create_random(CreateRandomRequest(body=GenRandomRequestBody(random_data_length="512", sequence=seq())))
    assert len(bytes.fromhex(out.random_data)) == 64
    e = vendor_error(lambda: kms.create_random(CreateRandomRequest(body=GenRandomRequestBody(random_data_length="9000"))))
    assert e.error_code == "KMS.1801"


@pytest.mark.parametrize("spec, algorithm, curve_or_pad", [
    ("RSA_2048", "RSASSA_PSS_SHA_256", "pss"), ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_256", "pkcs1"),
    ("EC_P256", "ECDSA_SHA_256", "ec")])
def test_sign_verify_and_public_key(kms, spec, algorithm, curve_or_pad):
    key_id = create(kms, key_spec=spec, key_usage="SIGN_VERIFY")
    message = f"pay 10 to {uuid.uuid4()}".encode()
    digest = hashlib.sha256(message).digest()
    sig = kms.sign(SignRequest(body=SignRequestBody(key_id=key_id, message=base64.b64encode(digest).decode(),
                                                    signing_algorithm=algorithm, sequence=seq())))
    ok = kms.validate_signature(ValidateSignatureRequest(body=VerifyRequestBody(
        key_id=key_id, message=base64.b64encode(digest).decode(), signature=sig.signature,
        signing_algorithm=algorithm, sequence=seq())))
    assert ok.signature_valid == "true"
    bad = kms.validate_signature(ValidateSignatureRequest(body=VerifyRequestBody(
        key_id=key_id, message=base64.b64encode(hashlib.sha256(b"other").digest()).decode(),
        signature=sig.signature, signing_algorithm=algorithm, sequence=seq())))
    assert bad.signature_valid == "false"
    raw = kms.sign(SignRequest(body=SignRequestBody(key_id=key_id, message=base64.b64encode(message).decode(),
                                                    signing_algorithm=algorithm, message_type="RAW", sequence=seq())))
    pem = kms.show_public_key(ShowPublicKeyRequest(body=on_key(key_id))).public_key
    public = serialization.load_pem_public_key(pem.encode())
    for signature in (sig.signature, raw.signature):  # an independent check of what KMS signed
        s = base64.b64decode(signature)
        if curve_or_pad == "ec":
            public.verify(s, message, ec.ECDSA(hashes.SHA256()))
        else:
            pad = padding.PSS(padding.MGF1(hashes.SHA256()), 32) if curve_or_pad == "pss" else padding.PKCS1v15()
            public.verify(s, message, pad, hashes.SHA256())


def test_generate_and_verify_mac(kms):
    key_id = create(kms, key_spec="HMAC_256", key_usage="GENERATE_VERIFY_MAC")
    message = base64.b64encode(b"settle batch 42").decode()
    out = kms.generate_mac(GenerateMacRequest(body=GenerateMacRequestBody(key_id=key_id, mac_algorithm="HMAC_SHA_256", message=message)))
    assert out.key_id == key_id and len(base64.b64decode(out.mac)) == 32
    ok = kms.verify_mac(VerifyMacRequest(body=VerifyMacRequestBody(
        key_id=key_id, mac_algorithm="HMAC_SHA_256", message=message, mac=out.mac)))
    assert ok.mac_valid is True  # a real JSON boolean
    bad = kms.verify_mac(VerifyMacRequest(body=VerifyMacRequestBody(
        key_id=key_id, mac_algorithm="HMAC_SHA_256", message=base64.b64encode(b"settle batch 43").decode(), mac=out.mac)))
    assert bad.mac_valid is False


def test_rotation_calls(kms):
    key_id = create(kms)
    old = kms.encrypt_data(EncryptDataRequest(body=EncryptDataRequestBody(key_id=key_id, plain_text="v1", sequence=seq())))
    status = kms.show_key_rotation_status(ShowKeyRotationStatusRequest(body=on_key(key_id)))
    assert status.key_rotation_enabled is False and status.number_of_rotations == 0
    e = vendor_error(lambda: kms.update_key_rotation_interval(UpdateKeyRotationIntervalRequest(
        body=UpdateKeyRotationIntervalRequestBody(key_id=key_id, rotation_interval=90, sequence=seq()))))
    assert e.error_code == "KMS.0313"  # rotation is not enabled
    kms.enable_key_rotation(EnableKeyRotationRequest(body=on_key(key_id)))
    status = kms.show_key_rotation_status(ShowKeyRotationStatusRequest(body=on_key(key_id)))
    assert (status.key_rotation_enabled, status.rotation_interval) == (True, 365)
    kms.update_key_rotation_interval(UpdateKeyRotationIntervalRequest(
        body=UpdateKeyRotationIntervalRequestBody(key_id=key_id, rotation_interval=90, sequence=seq())))
    assert kms.show_key_rotation_status(ShowKeyRotationStatusRequest(body=on_key(key_id))).rotation_interval == 90
    e = vendor_error(lambda: kms.update_key_rotation_interval(UpdateKeyRotationIntervalRequest(
        body=UpdateKeyRotationIntervalRequestBody(key_id=key_id, rotation_interval=20, sequence=seq()))))
    assert e.error_code == "KMS.3001"
    assert kms.rotate_on_demand(RotateOnDemandRequest(body=RotateOnDemandRequestBody(key_id=key_id))).key_id == key_id
    status = kms.show_key_rotation_status(ShowKeyRotationStatusRequest(body=on_key(key_id)))
    assert status.number_of_rotations == 1 and int(status.last_rotation_time) > 0
    back = kms.decrypt_data(DecryptDataRequest(body=DecryptDataRequestBody(cipher_text=old.cipher_text, sequence=seq())))
    assert back.plain_text == "v1"  # the old version keeps decrypting
    kms.disable_key_rotation(DisableKeyRotationRequest(body=on_key(key_id)))
    assert kms.show_key_rotation_status(ShowKeyRotationStatusRequest(body=on_key(key_id))).key_rotation_enabled is False
    rsa_id = create(kms, key_spec="RSA_2048")
    e = vendor_error(lambda: kms.enable_key_rotation(EnableKeyRotationRequest(body=on_key(rsa_id))))
    assert e.error_code == "KMS.0324"


def _import_params(kms, key_id: str):
    p = kms.create_parameters_for_import(CreateParametersForImportRequest(body=GetParametersForImportRequestBody(
        key_id=key_id, wrapping_algorithm="RSAES_OAEP_SHA_256", sequence=seq())))
    assert p.expiration_time > time.time()  # an int, seconds
    return p, serialization.load_der_public_key(base64.b64decode(p.public_key))


OAEP = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)


def test_import_symmetric_material_expire_delete_reimport(kms):
    key_id = create(kms, origin="external")
    assert describe(kms, key_id).key_state == "5" and describe(kms, key_id).origin == "external"
    material = os.urandom(32)
    p, wrapping = _import_params(kms, key_id)
    expires = int(time.time()) + 86400 * 30
    kms.import_key_material(ImportKeyMaterialRequest(body=ImportKeyMaterialRequestBody(
        key_id=key_id, import_token=p.import_token, expiration_time=expires,
        encrypted_key_material=base64.b64encode(wrapping.encrypt(material, OAEP)).decode(), sequence=seq())))
    info = describe(kms, key_id)
    assert info.key_state == "2" and int(info.expiration_time) == expires * 1000
    ct = kms.encrypt_data(EncryptDataRequest(body=EncryptDataRequestBody(key_id=key_id, plain_text="imported", sequence=seq())))
    kms.delete_imported_key_material(DeleteImportedKeyMaterialRequest(body=on_key(key_id)))
    assert describe(kms, key_id).key_state == "5"
    p, wrapping = _import_params(kms, key_id)
    e = vendor_error(lambda: kms.import_key_material(ImportKeyMaterialRequest(body=ImportKeyMaterialRequestBody(
        key_id=key_id, import_token=p.import_token, sequence=seq(),
        encrypted_key_material=base64.b64encode(wrapping.encrypt(os.urandom(32), OAEP)).decode()))))
    assert e.error_code == "KMS.2606"  # only the same material comes back
    p, wrapping = _import_params(kms, key_id)
    kms.import_key_material(ImportKeyMaterialRequest(body=ImportKeyMaterialRequestBody(
        key_id=key_id, import_token=p.import_token, sequence=seq(),
        encrypted_key_material=base64.b64encode(wrapping.encrypt(material, OAEP)).decode())))
    back = kms.decrypt_data(DecryptDataRequest(body=DecryptDataRequestBody(cipher_text=ct.cipher_text, sequence=seq())))
    assert back.plain_text == "imported"


@pytest.mark.parametrize("spec", ["EC_P256", "RSA_2048"])
def test_import_asymmetric_material(kms, spec):
    """The vendor's asymmetric import: a temporary AES key, OAEP-wrapped, in
    encrypted_key_material; the PKCS#8 private key wrapped under it (AES key wrap with
    padding, RFC 5649) in encrypted_privatekey."""
    key_id = create(kms, origin="external", key_spec=spec, key_usage="SIGN_VERIFY")
    private = ec.generate_private_key(ec.SECP256R1()) if spec == "EC_P256" else rsa.generate_private_key(65537, 2048)
    pkcs8 = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    p, wrapping = _import_params(kms, key_id)
    temporary = os.urandom(32)
    kms.import_key_material(ImportKeyMaterialRequest(body=ImportKeyMaterialRequestBody(
        key_id=key_id, import_token=p.import_token, sequence=seq(),
        encrypted_key_material=base64.b64encode(wrapping.encrypt(temporary, OAEP)).decode(),
        encrypted_privatekey=base64.b64encode(aes_key_wrap_with_padding(temporary, pkcs8)).decode())))
    assert describe(kms, key_id).key_state == "2"
    digest = hashlib.sha256(b"imported signer").digest()
    algorithm = "ECDSA_SHA_256" if spec == "EC_P256" else "RSASSA_PKCS1_V1_5_SHA_256"
    sig = base64.b64decode(kms.sign(SignRequest(body=SignRequestBody(
        key_id=key_id, message=base64.b64encode(digest).decode(), signing_algorithm=algorithm, sequence=seq()))).signature)
    if spec == "EC_P256":
        private.public_key().verify(sig, b"imported signer", ec.ECDSA(hashes.SHA256()))
    else:
        private.public_key().verify(sig, b"imported signer", padding.PKCS1v15(), hashes.SHA256())


def test_rsa_encrypt_and_decrypt_data(kms):
    key_id = create(kms, key_spec="RSA_2048", key_usage="ENCRYPT_DECRYPT")
    out = kms.encrypt_data(EncryptDataRequest(body=EncryptDataRequestBody(
        key_id=key_id, plain_text="rsa secret", encryption_algorithm="RSAES_OAEP_SHA_256", sequence=seq())))
    assert out.key_id == key_id and len(base64.b64decode(out.cipher_text)) == 256
    back = kms.decrypt_data(DecryptDataRequest(body=DecryptDataRequestBody(
        key_id=key_id, cipher_text=out.cipher_text, encryption_algorithm="RSAES_OAEP_SHA_256", sequence=seq())))
    assert back.plain_text == "rsa secret"
    pem = kms.show_public_key(ShowPublicKeyRequest(body=on_key(key_id))).public_key
    mine = serialization.load_pem_public_key(pem.encode()).encrypt(b"from outside", OAEP)  # an outside encryption
    back = kms.decrypt_data(DecryptDataRequest(body=DecryptDataRequestBody(
        key_id=key_id, cipher_text=base64.b64encode(mine).decode(), encryption_algorithm="RSAES_OAEP_SHA_256",
        sequence=seq())))
    assert base64.b64decode(back.plain_text_base64) == b"from outside"
