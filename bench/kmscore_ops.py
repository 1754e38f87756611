"""kmscore facade overhead: operations per second through `Kms` beside the same
`cryptography` primitive called directly, measured side by side in one run.

    .venv/bin/python bench/kmscore_ops.py [--seconds 1.0] [--rounds 3] [--profile OP]

Each row alternates facade and primitive in `--rounds` short slices (the machine may be
shared; interleaving keeps both sides under the same load) and prints ops/s and the
ratio facade/primitive. The goal for the symmetric rows is a ratio of at least 0.5.
The facade keeps its audit record: every facade call queues one (batched, see
kmscore/audit.py). `--profile encrypt-data` prints a cProfile of the facade side.
"""

from __future__ import annotations

import argparse
import cProfile
import hmac
import os
import pstats
import sys
import tempfile
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per row and side (default 1 s)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved slices per row")
    ap.add_argument("--profile", metavar="OP", help="profile the facade side of the row starting with OP")
    args = ap.parse_args(argv)
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
