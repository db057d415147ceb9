#!/usr/bin/env bash
# The gateway on this machine in one command: installs what `palisade up`
# needs (clamd for the antivirus pair) on Debian, builds the release
# binaries and runs the default architecture of config/local.toml (every
# node on 127.0.0.1, data under ./data). Extra arguments go to `palisade up`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v clamd >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends clamav-daemon
fi
cargo build --release --workspace --bins
exec target/release/palisade up "$@"
