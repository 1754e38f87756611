#!/usr/bin/env bash
# keyhold's one setup script: system packages, a virtualenv, the package.
#   ./setup.sh run       set up, then run the example deployment (kms up config/example.toml)
#   ./setup.sh test      set up, then run the whole test suite
#   ./setup.sh install   install for systemd: /opt/keyhold, /usr/local/bin/kms, the units
#   ./setup.sh           set up only
# PYTHON=python3.11 ./setup.sh test   uses that interpreter (in .venv-py3.11): the core
# and the mount run on Python >= 3.11; the sidecar needs mitmproxy 12, so Python >= 3.12.
# Idempotent: steps that are already done are skipped.
set -euo pipefail
cd "$(dirname "$0")"
HERE=$PWD

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_install() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing system packages: ${missing[*]}"
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# What pip needs to build fsmount/_fastpath.c (the C entry of the mount's hot FUSE
# callbacks) for interpreter $1: gcc, the libfuse 3 headers, and Python's own headers,
# which Debian's interpreters keep apart (pyenv's and python.org's ship them). Without
# them the install still succeeds and the mount goes through ctypes only.
build_deps() {
    apt_install gcc libfuse3-dev
    "$1" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || apt_install "python$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-dev"
}

# The sidecar (mitmproxy 12) needs Python >= 3.12; Debian 12 ships 3.11, so look for a
# newer interpreter first and fall back to the system's python3 without the sidecar.
find_python() {
    local root="${PYENV_ROOT:-$HOME/.pyenv}" c
    # pyenv shims exist for versions that are not selected and then fail: run each one.
    for c in python3.12 "$root"/versions/3.12*/bin/python python3.13 "$root"/versions/3.13*/bin/python python3; do
        if "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
            command -v "$c"; return
        fi
    done
    return 1
}

VENV=.venv
if [ -n "${PYTHON:-}" ]; then
    VENV=".venv-py$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
        || { say "cannot run the interpreter $PYTHON"; exit 1; }
fi

setup() {
    apt_install fuse3 libfuse3-3 openssl curl
    apt_install sqlite3 faketime strace  # kmscore store tests: real sqlite3 edits, wrong clocks, fsync counts
    apt_install rsync  # fsmount: mtime kept by rsync -a, and rsync of a reverse view twice (issue 13)
    if [ ! -x "$VENV/bin/python" ]; then
        local py
        if [ -n "${PYTHON:-}" ]; then
            py=$(command -v "$PYTHON") || { say "no interpreter $PYTHON"; exit 1; }
            "$py" -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
        elif ! py=$(find_python); then
            say "no Python >= 3.12 found: using Debian's python3 (core and mount only, no sidecar)"
            apt_install python3 python3-venv
            py=$(command -v python3)
        fi
        say "creating $VENV with $py ($("$py" -V))"
        "$py" -m venv "$VENV"
    fi
    local extras="test"
    if "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
        extras="sidecar,test"
    else
        say "$("$VENV/bin/python" -V): installing the core and the mount; the sidecar needs Python >= 3.12"
    fi
    build_deps "$VENV/bin/python"
    if ! "$VENV/bin/python" -c 'import kmscore, fsmount, pytest' 2>/dev/null \
        || [ pyproject.toml -nt "$VENV/.installed" ] || [ fsmount/_fastpath.c -nt "$VENV/.installed" ] || [ setup.py -nt "$VENV/.installed" ]; then
        say "installing keyhold[$extras] and its dependencies into $VENV"
        "$VENV/bin/pip" install -q --upgrade pip 2>/dev/null || true
        "$VENV/bin/pip" install -q -e ".[$extras]"
        touch "$VENV/.installed"
    fi
    # bytecode for our own packages, as an installed package ships it (pip compiles what it
    # installs into site-packages; an editable install counts on the first run writing it,
    # which PYTHONDONTWRITEBYTECODE prevents, and every `kms` would compile ~40 modules)
    "$VENV/bin/python" -m compileall -q -j 0 kmscore fsmount sidecar kmsserve >/dev/null || true
}

# Where the CLI is and how to reach the quick start's key store: printed after setup.
next_steps() {
    cat >&2 <<MSG
==> ready. Put kms on your PATH (this shell):  . $VENV/bin/activate
    or link it:                                 ln -s $HERE/$VENV/bin/kms ~/.local/bin/kms
    the quick start's key store (after ./setup.sh run):
        kms --deployment config/example.toml list-keys
        (or: export KMS_HOME=$HERE/config/run/kms)
    shell completion:                          kms completion bash > ~/.local/share/bash-completion/completions/kms
MSG
}

# System install for config/systemd/*.service: a venv in /opt/keyhold, the commands in
# /usr/local/bin (what the units start), the units, and /etc/keyhold. DESTDIR stages it.
system_install() {
    local root="${DESTDIR:-}" opt=/opt/keyhold bin=/usr/local/bin
    apt_install fuse3 libfuse3-3
    local py; py=$(find_python) || py=$(command -v python3)
    say "installing keyhold into $root$opt ($("$py" -V))"
    [ -x "$root$opt/bin/python" ] || "$py" -m venv "$root$opt"
    build_deps "$root$opt/bin/python"
    local extras=""
    "$root$opt/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 12))' && extras="[sidecar]"
    "$root$opt/bin/pip" install -q ".$extras"
    install -d "$root$bin" "$root/etc/systemd/system"
    for cmd in kms kms-mount kms-proxy; do
        [ -e "$root$opt/bin/$cmd" ] && ln -sfn "$opt/bin/$cmd" "$root$bin/$cmd"
    done
    install -m 0644 config/systemd/keyhold.service config/systemd/keyhold-sidecar.service \
        config/systemd/keyhold-maintain.service config/systemd/keyhold-maintain.timer "$root/etc/systemd/system/"
    install -d -m 0700 "$root/etc/keyhold" "$root/var/lib/keyhold" "$root/var/log/keyhold"
    [ -e "$root/etc/keyhold/keyhold.toml" ] || install -m 0644 config/production.toml "$root/etc/keyhold/keyhold.toml"
    [ -e "$root/etc/keyhold/keyhold.env" ] || install -m 0600 config/systemd/keyhold.env.example "$root/etc/keyhold/keyhold.env"
    cat >&2 <<MSG
==> installed. Next (docs/OPERATIONS.md, "systemd"):
    kms init --home /var/lib/keyhold --root-key-file /etc/keyhold/root.key
    edit /etc/keyhold/keyhold.toml, then: kms check /etc/keyhold/keyhold.toml  (outside the unit: --root-key-file)
    systemctl daemon-reload && systemctl enable --now keyhold
    the CLI on the service's store: kms --home /var/lib/keyhold --root-key-file /etc/keyhold/root.key list-keys
MSG
}

case "${1:-}" in
    install) system_install; exit 0 ;;
esac
setup
case "${1:-}" in
    run)  config=config/example.toml
          if ! "$VENV/bin/python" -c 'import mitmproxy' 2>/dev/null; then
              config=config/example-mount.toml
              say "no sidecar on $("$VENV/bin/python" -V) (it needs Python >= 3.12): running the mount only ($config)"
          else
              say "starting the example deployment (Ctrl-C stops it); in another shell: $VENV/bin/kms demo upstream"
          fi
          exec "$VENV/bin/kms" up "$config" ;;
    test) # pjdfstest (tests/fsmount/test_pjdfstest.py) is built from source and run by prove
          apt_install autoconf automake gcc make perl
          # on two pytest-xdist workers (KEYHOLD_TEST_JOBS=0: in one process); how the tests
          # are shared out between them: tests/conftest.py
          exec "$VENV/bin/python" -m pytest -q -n "${KEYHOLD_TEST_JOBS:-2}" --dist loadgroup --no-loadscope-reorder ;;
    "")   next_steps ;;
    *)    echo "usage: $0 [run|test|install]" >&2; exit 2 ;;
esac
