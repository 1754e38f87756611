#!/usr/bin/env bash
# Run the pjdfstest POSIX conformance suite inside a directory of the filesystem under test.
#
#   tests/conformance/pjdfstest.sh DIR [TESTS...]
#
# DIR      an empty directory on the mounted filesystem (created if missing); run as root.
#          A FUSE mount must allow other users and check permissions in the kernel
#          (libfuse options allow_other,default_permissions), as the tests switch users.
# TESTS    optional test paths relative to pjdfstest/tests (e.g. chmod rename/09.t);
#          default: all of them.
#
# Builds pjdfstest once into $PJDFSTEST_BUILD (default /var/tmp/pjdfstest-build), since
# this folder may be read-only. Needs autoconf, automake, gcc, make and prove (perl);
# installs the first two with apt-get when missing. Prints prove's report, then one line
#   pjdfstest: files=N subtests=N failed_files=N failed_subtests=N
# and exits 0 only when nothing failed. The full report of the last run is copied to $PJDFSTEST_BUILD/last.log.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:?usage: pjdfstest.sh DIR [TESTS...]}
shift
build=${PJDFSTEST_BUILD:-/var/tmp/pjdfstest-build}

if [ "$(id -u)" -ne 0 ]; then echo "pjdfstest.sh: must run as root" >&2; exit 2; fi
for tool in autoreconf automake; do
    command -v "$tool" >/dev/null || { apt-get update -qq || true; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq autoconf automake >/dev/null; break; }
done
command -v prove >/dev/null || { echo "pjdfstest.sh: prove (perl) is missing" >&2; exit 2; }

# Rebuild only when the sources differ (by content, not mtime: several checkouts of the
# repository share one build), and build aside, so a run in progress keeps its copy.
sum=$(cd "$here/pjdfstest" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
if [ ! -x "$build/pjdfstest" ] || [ "$(cat "$build/.source-sum" 2>/dev/null)" != "$sum" ]; then
    fresh="$build.new.$$"
    rm -rf "$fresh"; mkdir -p "$fresh"
    cp -r "$here/pjdfstest/." "$fresh/"
    (cd "$fresh" && autoreconf -ifs >/dev/null 2>&1 && ./configure -q >/dev/null && make -s pjdfstest >/dev/null)
    echo "$sum" >"$fresh/.source-sum"
    rm -rf "$build"; mv "$fresh" "$build"
fi

mkdir -p "$dir"
tests=()
if [ $# -eq 0 ]; then tests=("$build/tests"); else for t in "$@"; do tests+=("$build/tests/$t"); done; fi
# a log of this run's own: several checkouts share $build, and two runs at once must not
# write one file (interleaved, it reads as binary and the summary below finds nothing)
log=$(mktemp "${TMPDIR:-/tmp}/pjdfstest.XXXXXX.log")
trap 'cp -f "$log" "$build/last.log" 2>/dev/null; rm -f "$log"' EXIT
set +e
(cd "$dir" && prove -r "${tests[@]}") >"$log" 2>&1
rc=$?
set -e
sed -n '/^Test Summary Report/,$p' "$log"
[ $rc -eq 0 ] && tail -n 3 "$log"
set +eo pipefail
files=$(grep -aoE 'Files=[0-9]+' "$log" | tail -1 | cut -d= -f2)
subtests=$(grep -aoE 'Tests=[0-9]+' "$log" | tail -1 | cut -d= -f2)
failed_files=$(grep -acE '\(Wstat: [0-9]+ Tests: [0-9]+ Failed: [1-9]' "$log")
failed_subtests=$(grep -aoE 'Failed: [0-9]+\)' "$log" | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}')
echo "pjdfstest: files=${files:-0} subtests=${subtests:-0} failed_files=$failed_files failed_subtests=$failed_subtests"
[ $rc -eq 0 ] && [ "$failed_subtests" -eq 0 ]
