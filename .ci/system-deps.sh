#!/usr/bin/env bash
# The system tools the test suite needs, installed with apt only when one is missing.
# Idempotent and quiet: when every tool is present it does nothing (no apt-get update).
#
#   strace        tests/test_fsync_trace.py (fsync before the answer)
#   ip            tests/test_identity_netns.py (iproute2: namespaces, veth, bridge)
#   node          tests/test_crypto.py (WebCrypto client)
#   openssl       tests/test_crypto.py (a key wrapped by the openssl CLI)
#   redis-server  the Redis backend's tests (they start their own instances)
#   redis-cli     tests/redis_cluster_support.py (redis-cli --cluster create; Debian's redis-tools, which redis-server also brings)
#   ffmpeg        tests/test_convert.py (/msg convert=1 transcodes with it; it makes the test inputs)
#   ffprobe       tests/test_convert.py (reads the converted files back; Debian's ffmpeg package has it)
set -euo pipefail

declare -A PACKAGE=(
    [strace]=strace
    [ip]=iproute2
    [node]=nodejs
    [openssl]=openssl
    [redis-server]=redis-server
    [redis-cli]=redis-tools
    [ffmpeg]=ffmpeg
    [ffprobe]=ffmpeg
)

missing=()
for tool in "${!PACKAGE[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${PACKAGE[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "system-deps: missing ${missing[*]}; run as root (or install them) to run every test" >&2
    exit 1
fi
echo "system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
fi
# The Debian package starts a redis-server where an init system runs; the tests start their own.
for tool in "${!PACKAGE[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "system-deps: $tool still missing after apt-get install" >&2; exit 1; }
done
