"""No reader or cached operation waits for another process's key generation or write lock.

Asserted on lock behaviour and on the order of events, never on durations: a process
that generates key material is stopped *inside* the generation (the real generator
runs after the pause) and, while it is stopped there, the store's write lock must be
free and other real `kms` processes must run decrypt-data and list-keys to the end.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from kmscore import Kms

GENERATOR = textwrap.dedent(
    """
    import sys
    from kmscore import Kms, importing, material

    def paused(real):
        def generate(spec):
            print("generating", spec.value, flush=True)
            sys.stdin.readline()  # the test looks at the store while we are in here
            return real(spec)
        return generate

    material.generate = paused(material.generate)
    importing.new_wrapping_key = paused(importing.new_wrapping_key)
    with Kms(sys.argv[1], caller="generator") as kms:
        for i in range(2):
            kms.create_key(f"gen/rsa{i}", "RSA_4096")
        kms.rotate_key("app/aes")
        kms.get_parameters_for_import("app/ext", wrapping_key_spec="RSA_4096")
    print("done", flush=True)
    """
)


def write_lock_is_free(home) -> bool:
    db = sqlite3.connect(home / "keys.db", timeout=0, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        db.close()


def test_key_generation_holds_no_lock_and_blocks_no_reader(tmp_path, home, kh):
    with Kms(home) as kms:
        kms.create_key("app/aes")
        kms.create_key("app/ext", origin="EXTERNAL")
        blob = kms.encrypt_data("app/aes", b"read me while RSA keys are generated")
    script = tmp_path / "generator.py"
    script.write_text(GENERATOR)
    gen = subprocess.Popen([sys.executable, str(script), str(home)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kh.clean_env())
    seen = []
    try:
        for line in gen.stdout:
            words = line.decode().split()
            if words == ["done"]:
                break
            assert words[0] == "generating", words
            seen.append(words[1])
            assert write_lock_is_free(home), f"the write lock is held while generating {words[1]}"
            if len(seen) == 1:  # real readers, in other processes, finish while it generates
                out = kh.kms_cli(home, "decrypt-data", input=blob, timeout=30)
                assert out.returncode == 0 and out.stdout == b"read me while RSA keys are generated", out.stderr
                out = kh.kms_cli(home, "list-keys", timeout=30)
                assert out.returncode == 0 and b"app/aes" in out.stdout, out.stderr
            gen.stdin.write(b"\n")
            gen.stdin.flush()
        assert gen.wait() == 0, gen.stderr.read().decode()
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.wait()
    assert seen == ["RSA_4096", "RSA_4096", "AES_256", "RSA_4096"]
    with Kms(home) as kms:
        names = {k.alias for k in kms.list_keys()}
        assert {"gen/rsa0", "gen/rsa1"} <= names
        assert kms.describe_key("app/aes").current_version == 2


ENCRYPTOR = textwrap.dedent(
    """
    import sys, time
    from kmscore import Kms

    kms = Kms(sys.argv[1], caller="encryptor", refresh_interval=0.01)
    kms.encrypt_data("app/aes", b"warm")
    print("ready", flush=True)
    sys.stdin.readline()  # the test now holds the store's write lock
    base = getattr(kms._audit, "merge_attempts", None)
    start, n = time.monotonic(), 0
    # work until our audit thread has tried to merge (and is waiting for the lock), and
    # our cache has gone back to the store for its generation counter many times
    while n < 5000 or (kms._audit.merge_attempts <= base if base is not None else time.monotonic() < start + 1):
        kms.encrypt_data("app/aes", b"x" * 64)
        n += 1
    print("done", n, flush=True)
    sys.stdin.readline()
    kms.close()
    """
)


def test_cached_operations_go_on_while_another_process_holds_the_write_lock(tmp_path, home, kh):
    with Kms(home) as kms:
        kms.create_key("app/aes")
    script = tmp_path / "encryptor.py"
    script.write_text(ENCRYPTOR)
    child = subprocess.Popen([sys.executable, str(script), str(home)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kh.clean_env())
    events: list[str] = []
    blocker = sqlite3.connect(home / "keys.db", timeout=60, isolation_level=None, check_same_thread=False)
    try:
        assert child.stdout.readline().split() == [b"ready"], child.stderr.read().decode()
        blocker.execute("BEGIN IMMEDIATE")

        def release_eventually():  # only so that a failing run ends; not a measurement
            if not finished.wait(60):
                events.append("lock released")
                blocker.execute("ROLLBACK")

        finished = threading.Event()
        watchdog = threading.Thread(target=release_eventually)
        watchdog.start()
        child.stdin.write(b"go\n")
        child.stdin.flush()
        line = child.stdout.readline().split()
        events.append("child done")
        finished.set()
        watchdog.join()
        assert events[0] == "child done", "the cached encryptions waited for the other process's lock"
        assert line[:1] == [b"done"], child.stderr.read().decode()
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        child.stdin.write(b"\n")
        child.stdin.flush()
        assert child.wait(60) == 0, child.stderr.read().decode()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        blocker.close()
    with Kms(home) as kms:
        n = sum(r["count"] for r in kms.audit_records() if r["operation"] == "Encrypt" and "encryptor" in r["caller"])
        assert n == int(line[1]) + 1  # every one of them recorded, plus the warm-up
