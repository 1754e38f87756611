"""A store file that exists but is not a valid key store is refused, never replaced, and
a damaged page never lets a plaintext out before the operation and its audit record
are in the store. Real files, the real `kms` CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kmscore import Kms, StoreError

PLAINTEXT = b"plaintext that must not leak"
PAGE = 4096


def test_zero_byte_store_is_refused_not_replaced(home, run_kms, kh):
    with Kms(home) as kms:
        kms.create_key("app/db")
    (home / "keys.db").write_bytes(b"")
    for name in ("keys.db-wal", "keys.db-shm"):
        (home / name).unlink(missing_ok=True)
    kh.assert_refused(run_kms("list-keys"), "empty (0 bytes)")
    kh.assert_refused(run_kms("audit", "verify"), "empty (0 bytes)")
    assert (home / "keys.db").stat().st_size == 0  # left as it was, for the operator
    with pytest.raises(StoreError, match="0 bytes"):
        Kms(home)


def test_zero_byte_store_in_a_new_home_is_refused(home, run_kms, kh):
    """Even with no anchor yet (nothing else says a store was here)."""
    home.mkdir(mode=0o700)
    (home / "keys.db").write_bytes(b"")
    kh.assert_refused(run_kms("create-key", "--alias", "app/db"), "empty (0 bytes)")
    assert (home / "keys.db").stat().st_size == 0


@pytest.mark.parametrize("content", [b"not a database\n" * 100, b"SQLite format 3\x00" + b"\xff" * 4000],
                         ids=["text", "bad header"])
def test_file_that_is_not_a_store_is_refused(home, run_kms, kh, content):
    home.mkdir(mode=0o700)
    (home / "keys.db").write_bytes(content)
    out = run_kms("list-keys")
    kh.assert_refused(out)
    assert (home / "keys.db").read_bytes() == content


@pytest.fixture
def sample(tmp_path) -> tuple[Path, Path]:
    """A home with one key, a ciphertext under it and a few hundred audit records."""
    home = tmp_path / "sample"
    with Kms(home) as kms:
        kms.create_key("app/db")
        for i in range(300):
            kms.create_key(f"app/k{i}") if i % 50 == 0 else kms.encrypt_data("app/db", b"x", {"i": str(i)})
        blob = kms.encrypt_data("app/db", PLAINTEXT)
    (tmp_path / "blob").write_bytes(blob)
    return home, tmp_path / "blob"


def test_flipped_page_never_releases_plaintext(sample, tmp_path, kh):
    home, blob = sample
    pages = (home / "keys.db").stat().st_size // PAGE
    assert pages > 3
    refused = flipped = 0
    for page in range(1, pages):  # every b-tree page but the header page
        header = (home / "keys.db").read_bytes()[page * PAGE: page * PAGE + 8]
        cells, content = int.from_bytes(header[3:5], "big"), int.from_bytes(header[5:7], "big")
        if header[0] not in (2, 5, 10, 13) or cells == 0:
            continue  # free or overflow page: nothing live to damage
        flipped += 1
        copy = tmp_path / f"p{page}"
        shutil.copytree(home, copy)
        with open(copy / "keys.db", "r+b") as f:  # damage the first live cell of the page
            f.seek(page * PAGE + content)
            original = f.read(32)
            f.seek(page * PAGE + content)
            f.write(bytes(b ^ 0x5A for b in original))
        out = kh.kms_cli(copy, "decrypt-data", "--in", str(blob))
        err = out.stderr.decode()
        assert "Traceback" not in err and "internal error" not in err, (page, err)
        if out.returncode == 0:
            assert out.stdout == PLAINTEXT, page  # the damage was where this did not look,
            report = kh.kms_cli(copy, "store", "verify")  # but the full check sees it
            assert report.returncode == 1 and b"BROKEN" in report.stdout, (page, report)
        else:
            refused += 1
            assert PLAINTEXT not in out.stdout, (page, out.stdout)
            kh.assert_refused(out)
        shutil.rmtree(copy)
    print("refused", refused, "of", flipped)
    assert refused > 0  # the test can fail: most damage is seen
