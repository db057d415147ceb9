#!/usr/bin/env bash
# Benchmark: the throughput cost of the MX's defense mechanisms (issue 4).
# Two palisade-mx nodes side by side in ONE interleaved run, both relaying to
# one smtp-sink on 2626, load from Postfix's smtp-source (shared/bench/):
#   none      127.0.0.1:2525  config/bench.toml as is (no mechanisms)
#   defended  127.0.0.1:2527  the same plus every mechanism enabled: DM7, DM10,
#             DM11, DM17, DM18 (lists with entries), DM19 (HELO, sender domain
#             resolves, forgery), DM20 (a DNSBL zone that does not list us),
#             DM22 (greylisting; the SPF-pass sender bypasses it), DM23 (rules
#             on HELO, envelope and headers), DM27, DM30/31 (SPF, DKIM, DMARC,
#             ARC, Authentication-Results), DM33, DM34, DM36 — resolving through
#             a local dnsmasq that serves source.test (MX, SPF pass, DMARC).
#
#   tests/bench/mx-defenses.sh                         # 50 sessions, 5 KB, 2000 msgs x 3
#   SESSIONS=10,50 MESSAGES=2000 REPEAT=3 tests/bench/mx-defenses.sh
set -euo pipefail
DEFAULT_SESSIONS=50
. "$(dirname "$0")/common.sh"

cargo build --release -p palisade-mx -p palisade-cli

WORK=$(mktemp -d /tmp/palisade-bench-defenses.XXXXXX)
DNS_PORT=$(free_port)
# local-ttl: real zones publish TTLs (dnsmasq's default for its own records
# is 0, which would defeat every resolver cache).
cat >"$WORK/dnsmasq.conf" <<EOF
local=/test/
local-ttl=300
mx-host=source.test,mx.source.test,10
host-record=mx.source.test,192.0.2.10
txt-record=source.test,"v=spf1 ip4:127.0.0.0/8 -all"
txt-record=_dmarc.source.test,"v=DMARC1; p=none"
host-record=2.0.0.127.bl.test,127.0.0.2
EOF
dnsmasq --no-daemon --port="$DNS_PORT" --listen-address=127.0.0.1 --bind-interfaces \
  --no-resolv --no-hosts --conf-file="$WORK/dnsmasq.conf" --pid-file= --user=root \
  2>"$WORK/dnsmasq.log" &
DNS_PID=$!

# The defended node: bench.toml's node on 2527 with its own data dir and
# metrics port, the gateway resolving through dnsmasq, every mechanism on.
sed -e "s|data_dir = \"data-bench\"|data_dir = \"$WORK/data\"\ndns = \"127.0.0.1:$DNS_PORT\"|" \
    -e 's|smtp = "127.0.0.1:2525"|smtp = "127.0.0.1:2527"|' \
    -e 's|metrics = "127.0.0.1:9101"|metrics = "127.0.0.1:9121"|' \
    config/bench.toml >"$WORK/defended.toml"
cat >>"$WORK/defended.toml" <<'EOF'

[stage.mx.mechanisms]
trusted_networks = []                      # the load comes from 127.0.0.1: check it all
[stage.mx.mechanisms.dm7_relay_access]
[stage.mx.mechanisms.dm17_rfc2505]
[stage.mx.mechanisms.dm18_lists]
client_blacklist = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.7"]
sender_blacklist = ["spammer.test", "bad@source.test"]
[stage.mx.mechanisms.dm19_mta_rules]
[stage.mx.mechanisms.dm20_dnsbl]
zones = [{ zone = "bl.test", answers = ["127.0.0.2"] }]
[stage.mx.mechanisms.dm22_greylist]
delay = "5m"
[stage.mx.mechanisms.dm23_regex]
[[stage.mx.mechanisms.dm23_regex.rules]]
on = "helo"
pattern = "^[0-9]+-[0-9]+-[0-9]+"
action = "tempfail"
[[stage.mx.mechanisms.dm23_regex.rules]]
on = "mail_from"
pattern = "@(casino|pills)\\."
action = "reject"
[[stage.mx.mechanisms.dm23_regex.rules]]
on = "header:Subject"
pattern = "v[i1]agra|lottery"
action = "reject"
[stage.mx.mechanisms.dm27_spamtraps]
addresses = ["trap@example.test"]
[stage.mx.mechanisms.dm30_dm31_auth]
[stage.mx.mechanisms.dm10_connections]
per_client = 200
total = 1000
[stage.mx.mechanisms.dm11_rates]
connections_per_minute = 1000000
messages_per_minute = 1000000
[stage.mx.mechanisms.dm33_data_rate]
bytes_per_second = 104857600
[stage.mx.mechanisms.dm34_sender_rate]
messages = 1000000
window = "1m"
[stage.mx.mechanisms.dm36_bad_rcpt]
EOF
target/release/palisade check-config --config "$WORK/defended.toml"

rm -rf data-bench
target/release/palisade-mx --config config/bench.toml --node mx-1 2>"$OUT/palisade-mx-none.log" &
NONE=$!
target/release/palisade-mx --config "$WORK/defended.toml" --node mx-1 2>"$OUT/palisade-mx-defended.log" &
DEF=$!
cleanup() {
  kill "$NONE" "$DEF" "$DNS_PID" 2>/dev/null || true
  wait "$NONE" "$DEF" "$DNS_PID" 2>/dev/null || true
  rm -rf "$WORK" data-bench
}
trap cleanup EXIT
for port in 2525 2527; do
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done

stamp=$(date -u +%Y%m%dT%H%M%SZ)
csv="$OUT/mx-defenses-$stamp.csv"
"$BENCH/smtp-load.sh" --sizes "$SIZES" --sessions "$SESSIONS" --rcpts 1 \
  --messages "$MESSAGES" --repeat "$REPEAT" --warmup 200 \
  --pid "none=$NONE" --pid "defended=$DEF" \
  --queue-cmd "none=$REPO/target/release/palisade queue count --node mx-1 --config $REPO/config/bench.toml" \
  --queue-cmd "defended=$REPO/target/release/palisade queue count --node mx-1 --config $WORK/defended.toml" \
  -o "$csv" none@127.0.0.1:2525 defended@127.0.0.1:2527 2626
"${PY:-/usr/bin/python3}" "$BENCH/summarize.py" "$csv"
# Evidence that the mechanisms ran on the defended node during the load.
curl -s http://127.0.0.1:9121/metrics | grep -E '^palisade_defense_actions_total' || true
echo "results: $csv"
