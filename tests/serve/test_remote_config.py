"""`[kms] url` in the deployment file: validated (every problem at its key path),
relative paths resolved against the file, and `open_kms` giving a RemoteKms that
opens and creates nothing locally."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kmscore.config import ConfigError, load_config
from kmscore.deploy import open_kms
from kmscore.remote import RemoteKms

FP = "AB:" * 31 + "AB"


def write(folder: Path, kms: str) -> Path:
    key = folder / "app.key"
    if not key.exists():
        fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b'{"access_key_id": "KHAKTEST", "secret": "s"}')
        os.close(fd)
    path = folder / "deploy.toml"
    path.write_text(f"[kms]\n{kms}\n")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(path, frontends=[])
    return [f"{p.path}: {p.message}" for p in e.value.problems]


@pytest.mark.parametrize("kms, expected", [
    ('url = "ftp://kms:1"\naccess_key_file = "app.key"', "kms.url: expected https://HOST[:PORT]"),
    ('url = "http://10.0.0.5:8443"\naccess_key_file = "app.key"', "kms.url: plain http:// is only allowed"),
    ('url = "https://kms:8443"', "kms: url needs access_key_file"),
    (f'url = "https://kms:8443"\naccess_key_file = "app.key"\nca_file = "ca.pem"\nfingerprint = "{FP}"',
     "kms: give ca_file or fingerprint, not both"),
    ('url = "https://kms:8443"\naccess_key_file = "app.key"\nroot_key = { source = "file", path = "root.key" }',
     "kms: with url the key store is remote"),
    ('access_key_file = "app.key"', "kms: access_key_file: only with url"),
    ('url = "https://kms:8443"\naccess_key_file = "app.key"\nfingerprint = "xyz"', "kms.fingerprint: a certificate fingerprint is the SHA-256"),
    ('url = "https://kms:8443"\naccess_key_file = "nope.key"', "kms.access_key_file: cannot read the access key file"),
    ('url = "https://kms:8443"\naccess_key_file = "app.key"\nca_file = "nope.pem"', "kms.ca_file: cannot use"),
    ('url = "https://kms:8443"\naccess_key_file = "app.key"\ntimeout = 0', "kms.timeout: "),
])
def test_bad_remote_settings_are_named_at_their_key(tmp_path, kms, expected):
    found = problems(write(tmp_path, kms))
    assert any(p.startswith(expected) for p in found), found


def test_open_kms_gives_a_remote_kms_and_touches_no_local_store(tmp_path):
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf", f'url = "https://kms.internal:8443/"\naccess_key_file = "app.key"\n'
                                    f'fingerprint = "{FP}"\nhome = "local"\nrevocation_bound = 3\ntimeout = 4')
    dep = load_config(path, frontends=[])
    assert dep.kms.access_key_file == str(tmp_path / "conf" / "app.key")
    assert dep.kms.fingerprint == "ab" * 32 and dep.kms.url == "https://kms.internal:8443"
    with open_kms(dep) as kms:
        assert isinstance(kms, RemoteKms)
        assert (kms.url, kms.revocation_bound, kms.timeout) == ("https://kms.internal:8443", 3, 4)
        assert kms.credentials.access_key_id == "KHAKTEST"
        assert kms.cli_args == ("--deployment", str(path.absolute()))
    assert sorted(p.name for p in (tmp_path / "conf").iterdir()) == ["app.key", "deploy.toml"]
