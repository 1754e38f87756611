"""fsmount as a front end: the [[mount]] model, checks, and `kms up`'s start/apply/stop."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kmscore.frontend import load_frontends

from fsmount.mount import is_mounted
from fsmount.plugin import FRONTEND, MountEntry


def test_registered_as_a_front_end():
    assert any(f.name == "fsmount" and f.config_key == "mount" for f in load_frontends())


def test_entry_model_validates():
    e = MountEntry(cipher_dir="c", mount_point="m")
    assert e.key == "fsmount/default" and e.cipher_dir.startswith("/")
    with pytest.raises(ValidationError):
        MountEntry(cipher_dir="c", mount_point="m", frame_size=1000)
    with pytest.raises(ValidationError):
        MountEntry(cipher_dir="c", mount_point="m", colour="blue")


def test_check_reports_problems_by_field(kms, tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "file").write_text("x")
    entries = [
        MountEntry(cipher_dir=str(tmp_path / "c"), mount_point=str(tmp_path / "file"), key="no/such"),
    ]
    problems = dict(FRONTEND.check(entries, kms))
    assert "is not a directory" in problems["mount_point"]
    assert "no/such" in problems["key"]


def test_start_apply_stop(kms, tmp_path):
    def entry(n: str) -> MountEntry:  # folders missing: made on start
        return MountEntry(cipher_dir=str(tmp_path / f"c{n}"), mount_point=str(tmp_path / f"m{n}"), log=str(tmp_path / f"{n}.log"))

    a, b = entry("a"), entry("b")
    service = FRONTEND.start([a], kms)
    try:
        assert is_mounted(a.mount_point)
        (tmp_path / "ma" / "f").write_bytes(b"x")
        changes = service.apply([b])
        assert changes == [f"unmounted {a.mount_point}", f"mounted {b.cipher_dir} on {b.mount_point}"]
        assert not is_mounted(a.mount_point) and is_mounted(b.mount_point)
    finally:
        service.stop()
    assert not is_mounted(b.mount_point)


def test_a_mount_entry_names_the_scheme_of_a_new_cipher_dir(tmp_path):
    from fsmount.plugin import MountEntry

    e = MountEntry(cipher_dir=str(tmp_path / "c"), mount_point=str(tmp_path / "m"), names="deterministic")
    assert e.names == "deterministic"
    with pytest.raises(ValueError):
        MountEntry(cipher_dir="c", mount_point="m", names="rot13")
