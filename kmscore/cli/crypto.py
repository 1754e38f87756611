"""Cryptographic commands: encrypt/decrypt, data keys, sign/verify, MACs, random."""

from __future__ import annotations

import argparse
import base64
import binascii
import sys
from pathlib import Path

from kmscore.cli.context import PRIVATE, PUBLIC, CliContext, maybe_base64, parse_context, read_file, write_file
from kmscore.errors import InvalidRequest
from kmscore.cli.main import common
from kmscore.specs import EncryptionAlgorithm, MacAlgorithm, MessageType, SigningAlgorithm


def _context_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--context", action="append", metavar="K=V", help="encryption context entry (repeatable)")


MIN_TAG = 16  # bytes: the shortest MAC (HMAC_224, 28) or signature is longer


def _binary_arg(value: str) -> bytes:
    """A signature or MAC: a file holding it, or base64 text.

    A value that is neither (a mistyped file name) is refused here, before the key is
    asked: otherwise its letters would be decoded as a tag, and the audit log would
    record a false "invalid" for a check that never happened."""
    try:
        if Path(value).is_file():
            return maybe_base64(read_file(value))
    except (OSError, ValueError):  # e.g. a NUL byte, a name too long
        pass
    text = value.strip()
    urlsafe = "-" in text or "_" in text
    raw = b""
    # one alphabet only (a path such as /tmp/my-sig mixes both), and not a file in a folder that exists
    folder = Path(text).parent
    if not (urlsafe and ("+" in text or "/" in text)) and not ("/" in text and folder != Path("/") and folder.is_dir()):
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if urlsafe else None, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
    if len(raw) < MIN_TAG:
        raise InvalidRequest(
            f"{ascii(value)} is no file here and not base64 text of a signature or MAC: "
            "give the path of the file holding it, or the base64 text itself"
        )
    return raw


def register(sub: argparse._SubParsersAction, ctx: CliContext) -> None:
    p = common(sub.add_parser("encrypt-data", help="encrypt up to 4096 bytes under a key"), io=True)
    p.add_argument("key", metavar="KEY")
    _context_arg(p)
    p.add_argument("--algorithm", type=str.upper, choices=[a.value for a in EncryptionAlgorithm])
    p.set_defaults(run=run_encrypt)

    p = common(sub.add_parser("decrypt-data", help="decrypt a KMS ciphertext (RSA: name the key)"), io=True)
    p.add_argument("key", metavar="KEY", nargs="?", help="required for RSA ciphertexts; checked for blobs")
    _context_arg(p)
    p.add_argument("--algorithm", type=str.upper, choices=[a.value for a in EncryptionAlgorithm])
    p.set_defaults(run=run_decrypt)

    p = common(sub.add_parser(
        "create-datakey", help="a fresh data key and its ciphertext",
        description="Without file options, print both (base64). With files, each output goes where it is "
        "named: --ciphertext-out for the wrapped key, --plaintext-out (0600) for the data key itself.",
    ))
    p.add_argument("key", metavar="KEY")
    p.add_argument("--bits", type=int, default=256, choices=[256, 512])
    p.add_argument("--without-plaintext", action="store_true", help="return only the ciphertext")
    p.add_argument("--ciphertext-out", metavar="FILE", help="write the wrapped data key (raw bytes) here")
    p.add_argument("--plaintext-out", metavar="FILE", help="write the plaintext data key (raw bytes, mode 0600) here")
    p.add_argument("--out", help=argparse.SUPPRESS)  # refused with a pointer to the two options above
    _context_arg(p)
    p.set_defaults(run=run_create_datakey)

    p = common(sub.add_parser("encrypt-datakey", help="wrap a 32- or 64-byte data key you hold"), io=True)
    p.add_argument("key", metavar="KEY")
    _context_arg(p)
    p.set_defaults(run=lambda a, c: c.write_binary(c.kms.encrypt_datakey(a.key, maybe_base64(c.read_input()), parse_context(a.context)), "ciphertext", mode=PUBLIC))

    p = common(sub.add_parser("decrypt-datakey", help="unwrap a data key ciphertext"), io=True)
    p.add_argument("key", metavar="KEY", nargs="?")
    _context_arg(p)
    p.set_defaults(run=lambda a, c: c.write_binary(c.kms.decrypt_datakey(c.read_input(binary_blob=True), parse_context(a.context), a.key), "plaintext"))

    p = common(sub.add_parser("sign", help="sign a message (RSA, EC keys)"), io=True)
    p.add_argument("key", metavar="KEY")
    p.add_argument("--algorithm", required=True, type=str.upper, choices=[a.value for a in SigningAlgorithm])
    p.add_argument("--message-type", default="RAW", type=str.upper, choices=[m.value for m in MessageType])
    p.set_defaults(run=lambda a, c: c.write_binary(c.kms.sign(a.key, c.read_input(), a.algorithm, a.message_type), "signature", {"key_id": c.kms.describe_key(a.key).key_id, "algorithm": a.algorithm}))

    p = common(sub.add_parser("verify", help="verify a signature; exit 1 if invalid"), io=True)
    p.add_argument("key", metavar="KEY")
    p.add_argument("--algorithm", required=True, type=str.upper, choices=[a.value for a in SigningAlgorithm])
    p.add_argument("--message-type", default="RAW", type=str.upper, choices=[m.value for m in MessageType])
    p.add_argument("--signature", required=True, metavar="FILE|BASE64")
    p.set_defaults(run=lambda a, c: _verdict(c, "signature", c.kms.verify(a.key, c.read_input(), _binary_arg(a.signature), a.algorithm, a.message_type)))

    p = common(sub.add_parser("get-public-key", help="the public key of an RSA or EC key (PEM)"))
    p.add_argument("key", metavar="KEY")
    p.add_argument("--out", metavar="FILE")
    p.set_defaults(run=run_public_key)

    p = common(sub.add_parser("generate-mac", help="HMAC of a message (HMAC keys)"), io=True)
    p.add_argument("key", metavar="KEY")
    p.add_argument("--algorithm", type=str.upper, choices=[a.value for a in MacAlgorithm])
    p.set_defaults(run=lambda a, c: c.write_binary(c.kms.generate_mac(a.key, c.read_input(), a.algorithm), "mac"))

    p = common(sub.add_parser("verify-mac", help="check an HMAC; exit 1 if invalid"), io=True)
    p.add_argument("key", metavar="KEY")
    p.add_argument("--algorithm", type=str.upper, choices=[a.value for a in MacAlgorithm])
    p.add_argument("--mac", required=True, metavar="FILE|BASE64")
    p.set_defaults(run=lambda a, c: _verdict(c, "MAC", c.kms.verify_mac(a.key, c.read_input(), _binary_arg(a.mac), a.algorithm)))

    p = common(sub.add_parser("gen-random", help="random bytes from the OS CSPRNG"), io=True)
    p.add_argument("length", type=int, metavar="BYTES")
    p.set_defaults(run=lambda a, c: c.write_binary(c.kms.gen_random(a.length), "random"))


def run_encrypt(args: argparse.Namespace, ctx: CliContext) -> None:
    blob = ctx.kms.encrypt_data(args.key, ctx.read_input(), parse_context(args.context), args.algorithm)
    ctx.write_binary(blob, "ciphertext", mode=PUBLIC)


def run_decrypt(args: argparse.Namespace, ctx: CliContext) -> None:
    data = ctx.kms.decrypt_data(ctx.read_input(binary_blob=True), parse_context(args.context), args.key, args.algorithm)
    if args.json:
        ctx.write_binary(data, "plaintext")
    elif (args.out and args.out != "-") or args.base64:
        ctx.write_binary(data, "plaintext")
    else:  # decrypted data goes out as it was put in
        ctx.settle()  # its audit record first
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def run_create_datakey(args: argparse.Namespace, ctx: CliContext) -> None:
    """Two outputs, each named: the plaintext key never goes to stdout when the
    ciphertext goes to a file unless asked for (`--plaintext-out -`)."""
    if args.out:
        raise InvalidRequest(
            "create-datakey has two outputs: name them with --ciphertext-out FILE and --plaintext-out FILE "
            "(or --without-plaintext)"
        )
    if args.without_plaintext and args.plaintext_out:
        raise InvalidRequest("--plaintext-out and --without-plaintext exclude each other")
    if args.ciphertext_out and not (args.plaintext_out or args.without_plaintext):
        raise InvalidRequest(
            "--ciphertext-out writes only the wrapped key: say where the plaintext key goes with "
            "--plaintext-out FILE (or '-' for standard output), or give --without-plaintext"
        )
    dk = ctx.kms.create_datakey(args.key, args.bits, parse_context(args.context), not args.without_plaintext)
    report = {"key_id": dk.key_id, "ciphertext": base64.b64encode(dk.ciphertext).decode()}
    if dk.plaintext is not None:
        report["plaintext"] = base64.b64encode(dk.plaintext).decode()
    if args.plaintext_out and args.plaintext_out != "-":
        write_file(args.plaintext_out, dk.plaintext, PRIVATE)  # type: ignore[arg-type]
        report.pop("plaintext")
        report["plaintext_file"] = args.plaintext_out
    if args.ciphertext_out:
        write_file(args.ciphertext_out, dk.ciphertext, PUBLIC)
        report.pop("ciphertext")
        report["ciphertext_file"] = args.ciphertext_out
    ctx.emit(report)


def run_public_key(args: argparse.Namespace, ctx: CliContext) -> None:
    pem = ctx.kms.get_public_key(args.key)
    if args.out:
        write_file(args.out, pem.encode(), PUBLIC)
    elif args.json:
        ctx.emit({"key_id": ctx.kms.describe_key(args.key).key_id, "public_key": pem})
    else:
        print(pem, end="")


def _verdict(ctx: CliContext, what: str, valid: bool) -> int:
    ctx.emit({"valid": valid}, f"{what} is {'valid' if valid else 'INVALID'}")
    return 0 if valid else 1
