"""kmscore facade overhead: operations per second through `Kms` beside the same
`cryptography` primitive called directly, measured side by side in one run.

    .venv/bin/python bench/kmscore_ops.py [--seconds 1.0] [--rounds 3] [--profile OP]

Each row alternates facade and primitive in `--rounds` short slices (the machine may be
shared; interleaving keeps both sides under the same load) and prints ops/s and the
ratio facade/primitive. The goal for the symmetric rows is a ratio of at least 0.5.
The facade keeps its audit record: every facade call counts one in the process's
mapped audit journal before it returns (merged into the chain in batches, see
kmscore/audit.py). `--profile encrypt-data` prints a cProfile of the facade side.

`--kills N` measures what the audit log loses per kill -9 under load: a child process
encrypts in two threads and counts every result it got back in a shared file; it is
killed with SIGKILL N times (once after each of its first merges, so kills land at
every point of the merge cycle), and the records in the chain are counted against
the results returned. The design goal is 0 lost (at most one per thread may be
recorded without having returned).
"""

from __future__ import annotations

import argparse
import cProfile
import hmac
import mmap
import os
import pstats
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kmscore import Kms

PAYLOAD = os.urandom(4096)
MESSAGE = os.urandom(256)


def rows(kms: Kms):
    """(name, facade callable, primitive callable) for each measured operation."""
    kms.create_key("bench/aes")
    kms.create_key("bench/ec", "EC_P256")
    kms.create_key("bench/rsa", "RSA_2048")
    kms.create_key("bench/mac", "HMAC_256")
    # the primitives get keys of their own, of the same kind and built the same way
    aead = AESGCM(AESGCM.generate_key(256))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = kms._cached("bench/rsa").current._private  # same key object type/size as the facade uses
    mac_key = os.urandom(32)
    aad = os.urandom(21)
    blob = kms.encrypt_data("bench/aes", PAYLOAD)
    nonce = os.urandom(12)
    sealed = aead.encrypt(nonce, PAYLOAD, aad)
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), 32)
    return [
        ("encrypt-data 4 KiB",
         lambda: kms.encrypt_data("bench/aes", PAYLOAD),
         lambda: aead.encrypt(os.urandom(12), PAYLOAD, aad)),
        ("decrypt-data 4 KiB",
         lambda: kms.decrypt_data(blob),
         lambda: aead.decrypt(nonce, sealed, aad)),
        ("create-datakey",
         lambda: kms.create_datakey("bench/aes"),
         lambda: aead.encrypt(os.urandom(12), os.urandom(32), aad)),
        ("generate-mac",
         lambda: kms.generate_mac("bench/mac", MESSAGE),
         lambda: hmac.digest(mac_key, MESSAGE, "sha256")),
        ("sign EC_P256",
         lambda: kms.sign("bench/ec", MESSAGE, "ECDSA_SHA_256"),
         lambda: ec_key.sign(MESSAGE, ec.ECDSA(hashes.SHA256()))),
        ("sign RSA_2048 (PSS)",
         lambda: kms.sign("bench/rsa", MESSAGE, "RSASSA_PSS_SHA_256"),
         lambda: rsa_key.sign(MESSAGE, pss, hashes.SHA256())),
    ]


def rate(fn, seconds: float) -> tuple[int, float]:
    """Call fn for about `seconds`; return (calls, elapsed)."""
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            fn()
        n += 50
        now = time.perf_counter()
        if now >= deadline:
            return n, now - start


LOADER = textwrap.dedent(
    """
    import mmap, os, struct, sys, threading
    from kmscore import Kms
    kms = Kms(sys.argv[1], caller="loader")
    mm = mmap.mmap(os.open(sys.argv[2], os.O_RDWR), 4096)
    kms.encrypt_data("bench/aes", b"warm")
    def work(slot):
        n = 0
        while True:
            kms.encrypt_data("bench/aes", b"x" * 4096)
            n += 1
            struct.pack_into("<Q", mm, 8 * slot, n)
    for i in range(2):
        threading.Thread(target=work, args=(i,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
    """
)


def kill_losses(kills: int, after_ops: int) -> list[tuple[int, int]]:
    """(results returned, records in the chain) per kill -9 of a loaded encryptor."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        home = os.path.join(tmp, "home")
        with Kms(home, caller="bench") as kms:
            kms.create_key("bench/aes")
        script, counts = os.path.join(tmp, "loader.py"), os.path.join(tmp, "counts")
        with open(script, "w") as f:
            f.write(LOADER)
        for _ in range(kills):
            with open(counts, "wb") as f:
                f.write(bytes(4096))
            child = subprocess.Popen([sys.executable, script, home, counts], stdout=subprocess.PIPE)
            assert child.stdout.readline().strip() == b"ready"
            fd = os.open(counts, os.O_RDONLY)
            mm = mmap.mmap(fd, 4096, prot=mmap.PROT_READ)
            target = after_ops + int.from_bytes(os.urandom(2), "big")  # land anywhere in a merge cycle
            while sum(struct.unpack_from("<2Q", mm)) < target:
                time.sleep(0.001)
            child.send_signal(signal.SIGKILL)
            child.wait()
            returned = sum(struct.unpack_from("<2Q", mm))
            mm.close()
            os.close(fd)
            with Kms(home, caller="bench") as kms:  # opening merges the dead child's journal
                got = sum(r["count"] for r in kms.audit_records()
                          if r["operation"] == "Encrypt" and f"pid={child.pid}" in r["caller"]) - 1
            out.append((returned, got))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per row and side (default 1 s)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved slices per row")
    ap.add_argument("--profile", metavar="OP", help="profile the facade side of the row starting with OP")
    ap.add_argument("--kills", type=int, metavar="N", help="measure audit records lost per kill -9 under load")
    args = ap.parse_args(argv)
    if args.kills:
        results = kill_losses(args.kills, 20_000)
        for returned, got in results:
            print(f"kill -9 after {returned:>8,} results returned: {got:>8,} recorded, lost {max(0, returned - got)}")
        lost = [max(0, r - g) for r, g in results]
        print(f"records lost per kill -9 under load: max {max(lost)}, mean {sum(lost) / len(lost):.1f} ({len(lost)} kills)")
        return 0
    with tempfile.TemporaryDirectory() as tmp, Kms(os.path.join(tmp, "home"), caller="bench") as kms:
        table = rows(kms)
        if args.profile:
            name, facade, _ = next(r for r in table if r[0].startswith(args.profile))
            rate(facade, 0.2)
            prof = cProfile.Profile()
            prof.enable()
            rate(facade, args.seconds)
            prof.disable()
            print(f"profile of the facade side of {name!r}:")
            pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(18)
            return 0
        print(f"{'operation':<22} {'facade ops/s':>13} {'primitive ops/s':>16} {'ratio':>6}")
        for name, facade, primitive in table:
            facade(), primitive()  # warm up (loads the key into the facade's cache)
            f_n = f_t = p_n = p_t = 0.0
            for _ in range(args.rounds):
                n, t = rate(facade, args.seconds / args.rounds)
                f_n, f_t = f_n + n, f_t + t
                n, t = rate(primitive, args.seconds / args.rounds)
                p_n, p_t = p_n + n, p_t + t
            f_rate, p_rate = f_n / f_t, p_n / p_t
            print(f"{name:<22} {f_rate:>13,.0f} {p_rate:>16,.0f} {f_rate / p_rate:>6.2f}")
        kms.flush_audit()
        recs = kms.audit_records()
        audited = sum(r["count"] for r in recs)
        print(f"\naudit: {audited:,} operations recorded in {len(recs):,} records; chain ok: {kms.verify_audit().ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
