"""What a deployment looks like right now: the checks behind `kms status`, `/readyz`
and the start-up banner.

Front ends stay opaque to kmscore: an entry is read by its field names only
(`mount_point`/`cipher_dir` for mounts, `listen`/`upstream`/`mode` for proxies).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from kmscore.config import Deployment
from kmscore.errors import KmsError, NotFound

USABLE_STATES = ("Enabled",)


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"check": name, "ok": ok, "detail": detail}


def _listening(address: str, timeout: float = 0.5) -> bool:
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def key_checks(dep: Deployment, kms: Any) -> list[dict[str, Any]]:
    """The store answers, and every key the file names (keys, mounts, routes) is usable."""
    out = []
    store_ok, store_detail = True, str(getattr(kms, "url", None) or kms.home)  # a RemoteKms: its server
    for alias in sorted(named_keys(dep)):
        try:
            state = kms.describe_key(alias).state
            state = getattr(state, "value", state)
            out.append(_check(f"key {alias}", state in USABLE_STATES, str(state)))
        except NotFound as e:
            out.append(_check(f"key {alias}", False, str(e)))
        except KmsError as e:  # the store itself did not answer
            store_ok, store_detail = False, str(e)
            break
    return [_check("key store", store_ok, store_detail), *(out if store_ok else [])]


def named_keys(dep: Deployment) -> set[str]:
    names = {k.alias for k in dep.keys}
    for _key, entries in dep.sections:
        for entry in entries:
            _collect_keys(entry, names)
    return names


def _collect_keys(value: Any, names: set[str]) -> None:
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "key" and isinstance(v, str) and v:
                names.add(v)
            else:
                _collect_keys(v, names)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _collect_keys(v, names)


def front_end_checks(dep: Deployment) -> list[dict[str, Any]]:
    """Every mount mounted, every proxy accepting connections."""
    out = []
    for entry in dep.entries("mount"):
        point = getattr(entry, "mount_point", "")
        out.append(_check(f"mount {point}", os.path.ismount(point), "mounted" if os.path.ismount(point) else "not mounted"))
    for i, entry in enumerate(dep.entries("proxy")):
        listen = getattr(entry, "listen", "")
        up = _listening(listen)
        out.append(_check(f"proxy {getattr(entry, 'name', None) or i} {listen}", up, "listening" if up else "not listening"))
    for entry in dep.entries("serve"):
        listen = getattr(entry, "listen", "")
        up = _listening(listen)
        out.append(_check(f"serve {listen}", up, "listening" if up else "not listening"))
    return out


def deployment_status(dep: Deployment, kms: Any) -> list[dict[str, Any]]:
    return key_checks(dep, kms) + front_end_checks(dep)


# -- the banner -------------------------------------------------------------------------
def banner(dep: Deployment, kms_home: Path, *, log_format: str, metrics: str | None, pid: int,
           extra: Sequence[str] = ()) -> list[str]:
    """What runs where, how to reach it and how to stop it (printed once at start-up)."""
    config = str(Path(dep.file).absolute())
    lines = [f"running {Path(dep.file).name} ({config}, pid {pid})"]
    if dep.kms.url is not None:
        lines.append(f"  KMS        {dep.kms.url} (remote: no key store on this host)")
        lines.append(f"             the CLI on it: kms --deployment {config} list-keys")
    else:
        lines.append(f"  key store  {kms_home}")
        lines.append(f"             the CLI on it: kms --deployment {config} list-keys   (or: export KMS_HOME={kms_home})")
    for entry in dep.entries("mount"):
        slug = str(entry.mount_point).strip("/").replace("/", "_")  # fsmount's default log name
        log = getattr(entry, "log", None) or f"{kms_home}/logs/fsmount-{slug}.log"
        lines.append(f"  mount      {entry.mount_point}  (plaintext view; ciphertext in {entry.cipher_dir}; "
                     f"key {getattr(entry, 'key', '?')})")
        lines.append(f"             log: {log}")
    for i, entry in enumerate(dep.entries("proxy")):
        name = getattr(entry, "name", None) or f"proxy[{i}]"
        mode = getattr(entry, "mode", "reverse")
        target = f"-> {entry.upstream}" if getattr(entry, "upstream", None) else "(forward: clients set HTTP(S)_PROXY)"
        routes = len(getattr(entry, "route", ()) or ())
        lines.append(f"  proxy      {name}: http://{entry.listen} {target} ({mode}, {routes} route{'s' if routes != 1 else ''})")
        if mode == "forward":
            lines.append(f"             HTTPS clients must trust {kms_home}/sidecar/mitmproxy-ca-cert.pem")
        if getattr(entry, "metrics", None):
            lines.append(f"             metrics: http://{entry.metrics}/metrics (also /healthz, /readyz)")
        access = getattr(entry, "access_log", None)
        lines.append(f"             access log: {'stderr' if access == '-' else access or 'this log (logger keyhold.sidecar.access)'}")
    lines.extend(extra)  # what running services say of themselves (`banner()`: kms serve's URL and fingerprint)
    if metrics:
        lines.append(f"  health     http://{metrics}/healthz  /readyz  /metrics")
    lines.append(f"  logs       this terminal (stderr), format {log_format}; --log-format json for JSON lines")
    lines.append(f"  stop       Ctrl-C or `kill {pid}` (unmounts, drains); reload: edit the file or `kill -HUP {pid}`")
    return lines
