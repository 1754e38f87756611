#!/usr/bin/env bash
# keyhold's one setup script: system packages, a Python >= 3.12 virtualenv, the package.
#   ./setup.sh run    set up, then run the example deployment (kms up config/example.toml)
#   ./setup.sh test   set up, then run the whole test suite
#   ./setup.sh        set up only
# Idempotent: steps that are already done are skipped.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv

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

# mitmproxy 12 needs Python >= 3.12 (on 3.11 pip stops at mitmproxy 11, which pins an
# old cryptography). Debian 12 ships 3.11, so look for a newer interpreter first.
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

setup() {
    apt_install fuse3 libfuse3-3 openssl curl
    apt_install sqlite3 faketime strace  # kmscore store tests: real sqlite3 edits, wrong clocks, fsync counts
    if [ ! -x "$VENV/bin/python" ]; then
        local py
        if ! py=$(find_python); then
            say "no Python >= 3.12 found; trying Debian's python3 (mitmproxy 11 will be used)"
            apt_install python3 python3-venv
            py=$(command -v python3)
        fi
        say "creating $VENV with $py ($("$py" -V))"
        "$py" -m venv "$VENV"
    fi
    if ! "$VENV/bin/python" -c 'import kmscore, fsmount, sidecar, pytest' 2>/dev/null \
        || [ pyproject.toml -nt "$VENV/.installed" ]; then
        say "installing keyhold and its dependencies into $VENV"
        "$VENV/bin/pip" install -q --upgrade pip 2>/dev/null || true
        "$VENV/bin/pip" install -q -e '.[test]'
        touch "$VENV/.installed"
    fi
}

setup
case "${1:-}" in
    run)  say "starting the example deployment (Ctrl-C stops it)"
          exec "$VENV/bin/kms" up config/example.toml ;;
    test) exec "$VENV/bin/python" -m pytest -q ;;
    "")   say "ready: $VENV/bin/kms --help" ;;
    *)    echo "usage: $0 [run|test]" >&2; exit 2 ;;
esac
