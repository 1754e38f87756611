"""Command line: `kms mount`, `kms unmount`, `kms fs info|decrypt|fsck|rewrap`, and the
stand-alone `kms-mount CIPHERDIR MOUNTPOINT` (same options; `kms-mount -u MOUNTPOINT`
unmounts)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from kmscore.cli.context import CliContext
from kmscore.cli.main import run_command

from fsmount import mount as mounting
from fsmount import tools

MIN_FRAME, MAX_FRAME = 4096, 1 << 20


def frame_size(text: str) -> int:
    try:
        value = int(text[:-1]) * 1024 if text.lower().endswith("k") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if not MIN_FRAME <= value <= MAX_FRAME or value % 4096:
        raise argparse.ArgumentTypeError("frame size is a multiple of 4096 between 4096 and 1 MiB (e.g. 32k)")
    return value


def add_mount_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cipher_dir", metavar="CIPHERDIR", help="backing directory (envelopes on disk)")
    p.add_argument("mount_point", metavar="MOUNTPOINT", help="where the plaintext view appears")
    p.add_argument("--key", help="CMK for new files (default: the cipher directory's, else fsmount/default)")
    p.add_argument("--force-key", action="store_true", help="accept a --key other than the cipher directory's")
    p.add_argument("--frame-size", type=frame_size, default=None, help="plaintext bytes per frame for a new cipher directory (default 32k)")
    p.add_argument("--names", choices=("encrypted", "deterministic", "plain"), default=None,
                   help="file names of a NEW cipher directory: encrypted (default; per-directory values), "
                        "deterministic (equal names give equal backing names everywhere: for tools that sync "
                        "directories independently) or plain (visible, as format 1); recorded in its config")
    p.add_argument("--reverse", action="store_true",
                   help="show CIPHERDIR, a PLAIN directory, encrypted and read-only at MOUNTPOINT (deterministic: "
                        "for backups with rsync or restic; restore a copy with `kms fs decrypt COPY OUT`)")
    p.add_argument("--background", action="store_true", help="run detached; return once mounted")
    p.add_argument("--log", metavar="FILE", help="log file (default: stderr; with --background, HOME/logs/fsmount-*.log)")
    p.add_argument("--allow-other", action=argparse.BooleanOptionalAction, default=None, help="let other users in (default: when run by root)")
    p.add_argument("--revocation-bound", type=float, default=5.0, metavar="SECONDS",
                   help="a revoked CMK stops reads and writes within this time, also of open files (default 5)")
    p.add_argument("--xattrs", action=argparse.BooleanOptionalAction, default=True,
                   help="user.* extended attributes, values sealed (default on; off: ENOTSUP, and small "
                        "writes are faster: the kernel stops asking for security.capability before each)")
    p.add_argument("--debug", action="store_true", help="log every FUSE request (libfuse -d)")
    p.add_argument("--json", action="store_true", help="with --background: print the mount's status as JSON")
    p.set_defaults(run=run_mount)


def register_cli(sub: argparse._SubParsersAction, ctx: CliContext) -> None:
    """Add `mount`, `unmount` and `fs` to the `kms` command (kmscore.frontend)."""
    add_mount_arguments(sub.add_parser("mount", help="mount an encrypted directory (FUSE)"))

    p = sub.add_parser("unmount", help="unmount a keyhold mount")
    p.add_argument("mount_point", metavar="MOUNTPOINT")
    p.add_argument("--lazy", action="store_true", help="detach now, finish when no longer busy")
    p.set_defaults(run=run_unmount)

    fs = sub.add_parser("fs", help="offline tools for cipher directories").add_subparsers(
        dest="fs_command", metavar="COMMAND", required=True
    )
    p = fs.add_parser("info", help="a cipher directory's format and options, or a backing file's header, "
                                   "CMK, sizes and plaintext path")
    p.add_argument("file", metavar="FILE", help="a backing file or directory, or a cipher directory")
    p.add_argument("--plain", metavar="PATH", help="with a cipher directory: the backing path of this plaintext "
                                                   "path (as seen in the mount, e.g. /docs/a.txt)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=lambda a, c: c.emit(tools.info(c.kms, a.file, a.plain)))

    p = fs.add_parser("decrypt", help="recover one backing file's plaintext, or a whole cipher directory's "
                                      "tree with its names, without mounting")
    p.add_argument("file", metavar="CIPHERFILE", help="a backing file, or a cipher directory")
    p.add_argument("out", metavar="OUT", help="where the plaintext goes (a file: mode 0600, - for standard output; "
                                              "a cipher directory: a new or empty directory)")
    p.set_defaults(run=run_decrypt)

    p = fs.add_parser("fsck", help="authenticate every frame of every file")
    p.add_argument("cipher_dir", metavar="CIPHERDIR")
    p.add_argument("--json", action="store_true")
    p.add_argument("--repair", action="store_true",
                   help="cut files whose end a crash broke back to their longest authentic start (unmounted only)")
    p.set_defaults(run=run_fsck)

    p = fs.add_parser("rewrap", help="re-wrap every data key under the newest CMK version or another CMK")
    p.add_argument("cipher_dir", metavar="CIPHERDIR")
    p.add_argument("--to-key", metavar="KEY", help="wrap under this CMK (it becomes the directory's key)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_rewrap)


# -- handlers ----------------------------------------------------------------------------------
def run_mount(args: argparse.Namespace, ctx: CliContext) -> int:
    opts = mounting.MountOptions(
        key=args.key, force_key=args.force_key, frame_size=args.frame_size or mounting.DEFAULT_FRAME_SIZE,
        names=args.names,
        allow_other=args.allow_other, debug=args.debug, revocation_bound=args.revocation_bound,
        xattrs=args.xattrs,
    )
    if problem := mounting.check_paths(args.cipher_dir, args.mount_point):
        raise mounting.MountError(problem)
    if args.reverse:
        return run_reverse(args, ctx, opts)
    if args.background:
        from fsmount import cipherdir

        config = cipherdir.prepare(ctx.kms, args.cipher_dir, opts.key, opts.frame_size, opts.force_key, opts.names)
        mounting.check_mount_point(args.mount_point)
        log_file = args.log or str(ctx.kms.home / "logs" / f"fsmount-{_slug(args.mount_point)}.log")
        argv = list(getattr(ctx.kms, "cli_args", ()) or ["--home", str(ctx.kms.home)])  # a RemoteKms: its deployment
        if getattr(args, "root_key_file", None):
            argv += ["--root-key-file", args.root_key_file]
        argv += [os.path.abspath(args.cipher_dir), os.path.abspath(args.mount_point), "--key", config.key_id,
                 "--log", log_file, "--revocation-bound", str(args.revocation_bound)]
        if args.allow_other is not None:
            argv.append("--allow-other" if args.allow_other else "--no-allow-other")
        if not args.xattrs:
            argv.append("--no-xattrs")
        pid = mounting.start_background(argv, args.mount_point, log_file).pid
        if args.json:
            ctx.emit({"mounted": True, "cipher_dir": os.path.abspath(args.cipher_dir), "pid": pid, "log": log_file,
                      "mount_point": os.path.abspath(args.mount_point), "key_id": config.key_id})
        else:
            ctx.info(f"mounted {args.cipher_dir} on {args.mount_point} (pid {pid}; log {log_file})")
        return 0
    setup_logging(args.log, args.debug)
    mounting.run(ctx.kms, args.cipher_dir, args.mount_point, opts)
    return 0


def run_reverse(args: argparse.Namespace, ctx: CliContext, opts: mounting.MountOptions) -> int:
    """`kms mount --reverse PLAINDIR MOUNTPOINT` (fsmount.reverse)."""
    from fsmount import reverse

    if args.names is not None:
        raise mounting.MountError("--names does not apply to --reverse: a reverse view's names are deterministic")
    if args.background:
        reverse.prepare(ctx.kms, args.cipher_dir, opts.key, opts.frame_size)
        mounting.check_mount_point(args.mount_point)
        log_file = args.log or str(ctx.kms.home / "logs" / f"fsmount-{_slug(args.mount_point)}.log")
        argv = ["--home", str(ctx.kms.home)]
        if getattr(args, "root_key_file", None):
            argv += ["--root-key-file", args.root_key_file]
        argv += [os.path.abspath(args.cipher_dir), os.path.abspath(args.mount_point), "--reverse", "--log", log_file]
        if opts.key:
            argv += ["--key", opts.key]
        pid = mounting.start_background(argv, args.mount_point, log_file).pid
        ctx.info(f"reverse-mounted {args.cipher_dir} on {args.mount_point} (pid {pid}; log {log_file})")
        return 0
    setup_logging(args.log, args.debug)
    reverse.run(ctx.kms, args.cipher_dir, args.mount_point, opts.key, opts.frame_size, args.debug, opts.allow_other)
    return 0


def run_unmount(args: argparse.Namespace, ctx: CliContext) -> int:
    mounting.unmount(args.mount_point, lazy=args.lazy)
    return 0


def run_decrypt(args: argparse.Namespace, ctx: CliContext) -> int:
    if os.path.isdir(args.file):
        report = tools.decrypt_tree(ctx.kms, args.file, args.out)
        for path, why in report.failed:
            print(f"{path}: {why}", file=sys.stderr)
        ctx.info(f"restored {report.files} files, {report.dirs} directories, {report.links} symlinks to {args.out}"
                 + (f"; {len(report.failed)} failed" if report.failed else ""))
        return 1 if report.failed else 0
    n = tools.decrypt(ctx.kms, args.file, args.out, progress=not ctx.quiet)
    ctx.info(f"wrote {n} bytes to {'standard output' if args.out == '-' else args.out}")
    return 0


def run_fsck(args: argparse.Namespace, ctx: CliContext) -> int:
    report = tools.fsck(ctx.kms, args.cipher_dir, tools.terminal_progress("fsck"), repair=args.repair)
    if args.json:
        ctx.emit({"files": report.files, "frames": report.frames, "names": report.names, "clean": report.clean,
                  "damage": [{"file": f, "frame": i, "problem": p, **({"backing": report.backing[f]} if f in report.backing else {})}
                             for f, i, p in report.damage],
                  "repaired": [{"file": f, "done": what} for f, what in report.repaired]})
    else:
        for f, what in report.repaired:
            print(f"{f}: {what}")
        for f, i, p in report.damage:
            print(f"{f}: {'frame ' + str(i) + ': ' if i is not None else ''}{p}")
        print(f"{report.files} files, {report.frames} frames{f', {report.names} names' if report.names else ''} checked: "
              f"{'no damage' if report.clean else str(len(report.damage)) + ' damaged'}")
    return 0 if report.clean else 1


def run_rewrap(args: argparse.Namespace, ctx: CliContext) -> int:
    report = tools.rewrap(ctx.kms, args.cipher_dir, args.to_key, tools.terminal_progress("rewrap"))
    ctx.emit({"files": report.files, "rewrapped": report.rewrapped, "already_current": report.current, "xattrs": report.xattrs,
              "failed": len(report.failed)})
    for f, why in report.failed:
        print(f"{f}: {why}", file=sys.stderr)
    return 0 if not report.failed else 1


def setup_logging(log_file: str | None, debug: bool = False) -> None:
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    from kmscore.logs import FORMAT_ENV, formatter  # one log format for every keyhold process

    handler.setFormatter(formatter(os.environ.get(FORMAT_ENV, "text").lower()))
    root = logging.getLogger("fsmount")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def _slug(path: str) -> str:
    return os.path.abspath(path).strip("/").replace("/", "_") or "root"


# -- kms-mount ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from kmscore.cli.main import KmsArgumentParser  # one `kms-mount: error:` line per mistake

    p = KmsArgumentParser(
        prog="kms-mount",
        description="Mount a keyhold cipher directory: files written to MOUNTPOINT are stored "
        "envelope-encrypted in CIPHERDIR.",
        epilog="`kms-mount -u MOUNTPOINT` unmounts. Offline tools: `kms fs --help`.",
    )
    p.add_argument("--home", help="KMS home folder (default: $KMS_HOME or ~/.local/share/keyhold)")
    p.add_argument("--root-key-file", help="root key file (default: $KMS_ROOT_KEY, $KMS_PASSPHRASE or HOME/root.key)")
    p.add_argument("--deployment", metavar="CONFIG", help="use the KMS of this deployment file's [kms] (a remote one with url)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    ctx = CliContext()
    if "-u" in argv or "--unmount" in argv:
        p = build_parser()
        p.add_argument("-u", "--unmount", dest="mount_point", metavar="MOUNTPOINT", required=True)
        p.add_argument("--lazy", action="store_true")
        p.set_defaults(run=run_unmount)
    else:
        p = build_parser()
        add_mount_arguments(p)
    args = p.parse_args(argv)
    args.command = "mount"
    ctx.args = args
    return run_command(args, ctx, "kms-mount")


__all__ = ["main", "register_cli"]


if __name__ == "__main__":
    sys.exit(main())
