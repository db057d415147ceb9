#!/usr/bin/env bash
# Installs what the tests need on a Debian machine, builds everything and
# runs every test: the crates' unit and integration tests (cargo), then the
# cross-stage tests with real clients and peers (pytest).
#
#   tests/run-all.sh            # what CI runs (.ci/run)
#   tests/run-all.sh -k flow1   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive: Python's pytest (for smtplib/poplib
# tests), swaks, Postfix (the peer and load generator), clamd, a DNS
# server, Redis, mutt/fetchmail, chromium (the HTML report), nftables,
# haproxy, iproute2 and systemd-analyze (the deployment kit and netns tests).
packages=(python3 python3-pytest python3-pytest-xdist swaks postfix clamav-daemon clamav dnsmasq-base
          redis-server fetchmail mutt ca-certificates openssl chromium
          nftables haproxy iproute2 systemd dovecot-imapd keepalived
          nsd ldnsutils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "run-all: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# One release build serves the cargo tests and the stage binaries; the
# test targets are built before anything runs (the probe run below wants
# a quiet machine for its latency baseline).
cargo build --release --workspace --bins
cargo test --release --workspace --no-run

# Debian's python3 sees Debian's pytest whatever python3 is first on PATH.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
pytest=("$PY" -m pytest -q -p no:cacheprovider)

if [ $# -gt 0 ]; then
  cargo test --release --workspace
  exec "${pytest[@]}" tests/integration "$@"
fi

# The cross-stage tests mostly wait (for retries, timeouts, a peer), so
# they run side by side, each on its own lane of ports
# (conftest.free_port_offset): two pytest-xdist workers, one test file at
# a time each, and the 5-minute probe run (issue 8), which starts beside
# the cargo tests; its output is printed at the end.
export PALISADE_PORT_LANES=3
long=tests/integration/test_probe.py::test_probe_reports_no_loss_and_the_latency_spike_of_a_hung_antispam_node
long_log=$(mktemp /tmp/palisade-probe-test.XXXXXX)
PALISADE_PORT_LANE=2 "${pytest[@]}" "$long" > "$long_log" 2>&1 &
long_pid=$!
# SIGTERM makes that pytest unwind (conftest.py), stopping its nodes.
stop_long() { kill "$long_pid" 2>/dev/null || true; wait "$long_pid" 2>/dev/null || true; }
trap stop_long EXIT

status=0
cargo test --release --workspace || status=$?
if [ "$status" -ne 0 ]; then
  stop_long
else
  PALISADE_PORT_LANE=0 "${pytest[@]}" -n 2 --dist loadfile tests/integration \
    --deselect "$long" || status=$?
fi
long_status=0
wait "$long_pid" || long_status=$?
trap - EXIT
echo "run-all: the probe run ($long):"
cat "$long_log"
rm -f "$long_log"
[ "$status" -ne 0 ] && exit "$status"
exit "$long_status"
