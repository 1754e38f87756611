"""Made once with keyhold before row MACs and the anchor (schema 1, commit 0dfc078):
a home whose store the tests open with today's code to check the migration.

    .venv/bin/python tests/kmscore/vectors/make_store_v1.py tests/kmscore/vectors/store-v1
"""

import json
import sys
from pathlib import Path

from kmscore import Kms

out = Path(sys.argv[1])
with Kms(out) as kms:
    aes = kms.create_key("legacy/aes", description="enabled AES")
    off = kms.create_key("legacy/off")
    rsa = kms.create_key("legacy/rsa", "RSA_2048", "ENCRYPT_DECRYPT")
    mac = kms.create_key("legacy/mac", "HMAC_256")
    blob = kms.encrypt_data("legacy/aes", b"legacy plaintext", {"k": "v"})
    off_blob = kms.encrypt_data("legacy/off", b"off plaintext")
    kms.rotate_key("legacy/aes")
    kms.disable_key("legacy/off")
    tag = kms.generate_mac("legacy/mac", b"message")
(out / "expected.json").write_text(json.dumps({
    "blob": blob.hex(), "off_blob": off_blob.hex(), "tag": tag.hex(),
    "keys": {"legacy/aes": aes.key_id, "legacy/off": off.key_id, "legacy/rsa": rsa.key_id, "legacy/mac": mac.key_id},
}, indent=1) + "\n")
