#!/usr/bin/env bash
# Installs what the slow-storage benchmark and tests/test_slowfs.py need, then builds the
# latency-injecting FUSE file system. Idempotent: installs only what is missing, rebuilds only
# when slowfs.c is newer than the binary. Needs root for apt-get (CI and this project's
# machines run as root); without root it only builds, if the pieces are already there.
#
#     bash benchmarks/slowfs/setup.sh            # fuse3, libfuse3-dev, gcc, pkg-config, rsync, rclone + build
#     bash benchmarks/slowfs/setup.sh --no-peers # without rsync and rclone (enough for the test)
#
# The binary goes to benchmarks/work/slowfs/slowfs (untracked); its path is printed last.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out_dir="$here/../work/slowfs"
binary="$out_dir/slowfs"

peers=1
[ "${1:-}" = "--no-peers" ] && peers=0

missing=()
command -v fusermount3 >/dev/null || missing+=(fuse3)
pkg-config --exists fuse3 2>/dev/null || missing+=(libfuse3-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v gcc >/dev/null || missing+=(gcc)
if [ "$peers" = 1 ]; then
    command -v rsync >/dev/null || missing+=(rsync)
    command -v rclone >/dev/null || missing+=(rclone)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "slowfs setup: missing ${missing[*]} and cannot apt-get install them (needs root and apt-get)" >&2
        exit 1
    fi
    echo "slowfs setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${missing[@]}" >/dev/null
fi

mkdir -p "$out_dir"
if [ ! -x "$binary" ] || [ "$here/slowfs.c" -nt "$binary" ]; then
    # shellcheck disable=SC2046  # pkg-config's flags are meant to split into words
    gcc -O2 -Wall -Wextra -o "$binary.tmp" "$here/slowfs.c" $(pkg-config --cflags --libs fuse3)
    mv "$binary.tmp" "$binary"
fi
if [ ! -c /dev/fuse ]; then
    echo "slowfs setup: built $binary, but /dev/fuse is missing: nothing can be mounted here" >&2
fi
echo "$binary"
