#!/usr/bin/env bash
# Benchmark (docs/performance.md, "State backends"): what sharing the
# per-client policy state through Redis costs an MX pair. Three targets in
# ONE interleaved run, load from Postfix's smtp-source (shared/bench/), all
# relaying to one smtp-sink on 2626:
#   postfix   127.0.0.1:2530  Postfix 3.7 as a loopback relay (the anchor)
#   embedded  127.0.0.1:2540  haproxy (TCP, round robin) -> mx-1 :2541, mx-2 :2542,
#                             [gateway.state] backend = "embedded"
#   redis     127.0.0.1:2545  haproxy (TCP, round robin) -> mx-1 :2546, mx-2 :2547,
#                             backend = "redis" (a redis-server on a free port)
# Both pairs run config/bench.toml plus the mechanisms whose state the
# backend holds, with limits the load never reaches: DM10 (a slot per
# session: acquire + release), DM11 (connection and message buckets), DM34
# (sender bucket), DM36 (events only on unknown recipients: none here), and
# trusted_networks = [] so every session is checked. DM22 greylisting is off
# (smtp-source would be greylisted). CPU: the nodes (and redis-server for
# the redis pair; haproxy is not counted for either pair).
#
#   tests/bench/state-backends.sh                    # 10 and 50 sessions, 5 KB, 2000 msgs x 3
#   SESSIONS=10,50 MESSAGES=2000 REPEAT=3 tests/bench/state-backends.sh
set -euo pipefail
. "$(dirname "$0")/common.sh"

cargo build --release -p palisade-mx -p palisade-cli
LISTEN=127.0.0.1:2530 "$BENCH/setup-postfix.sh" >/dev/null
"$BENCH/postfix-ctl.sh" start

WORK=$(mktemp -d /tmp/palisade-bench-state.XXXXXX)
REDIS_PORT=$(free_port)
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$WORK" \
  >"$WORK/redis.log" 2>&1 &
REDIS=$!

# One config per pair: bench.toml's node twice, the mechanisms, the backend.
pair_config() { # name first-port metrics-base state-section
  local name=$1 p=$2 m=$3 state=$4
  # allow_root: the harness runs as root (a development setup).
  sed -e "s|data_dir = \"data-bench\"|data_dir = \"$WORK/$name\"\nallow_root = true|" \
      -e '/^\[node\.mx-1\]/,$d' config/bench.toml >"$WORK/$name.toml"
  cat >>"$WORK/$name.toml" <<EOF
$state

[stage.mx.mechanisms]
trusted_networks = []
[stage.mx.mechanisms.dm10_connections]
per_client = 1000
total = 1000
[stage.mx.mechanisms.dm11_rates]
connections_per_minute = 100000000
messages_per_minute = 100000000
[stage.mx.mechanisms.dm34_sender_rate]
messages = 100000000
window = "1m"
[stage.mx.mechanisms.dm36_bad_rcpt]

[node.mx-1]
stage = "mx"
smtp = "127.0.0.1:$((p + 1))"
metrics = "127.0.0.1:$((m + 1))"

[node.mx-2]
stage = "mx"
smtp = "127.0.0.1:$((p + 2))"
metrics = "127.0.0.1:$((m + 2))"

[[domain]]
name = "example.test"
EOF
  # bench.toml's [[domain]] went with the node section; keep one.
  target/release/palisade check-config --config "$WORK/$name.toml" >/dev/null
  cat >"$WORK/$name-haproxy.cfg" <<EOF
global
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend smtp
    bind 127.0.0.1:$p
    default_backend pair
backend pair
    balance roundrobin
    server mx-1 127.0.0.1:$((p + 1))
    server mx-2 127.0.0.1:$((p + 2))
EOF
}
pair_config embedded 2540 9140 '[gateway.state]
backend = "embedded"'
pair_config redis 2545 9145 "[gateway.state]
backend = \"redis\"
url = \"redis://127.0.0.1:$REDIS_PORT/0\""

PIDS=()
start() { # config node log
  target/release/palisade-mx --config "$1" --node "$2" 2>"$3" &
  PIDS+=($!)
}
start "$WORK/embedded.toml" mx-1 "$OUT/state-embedded-mx-1.log"; E1=${PIDS[-1]}
start "$WORK/embedded.toml" mx-2 "$OUT/state-embedded-mx-2.log"; E2=${PIDS[-1]}
start "$WORK/redis.toml" mx-1 "$OUT/state-redis-mx-1.log"; R1=${PIDS[-1]}
start "$WORK/redis.toml" mx-2 "$OUT/state-redis-mx-2.log"; R2=${PIDS[-1]}
haproxy -f "$WORK/embedded-haproxy.cfg" -db >/dev/null 2>&1 & PIDS+=($!)
haproxy -f "$WORK/redis-haproxy.cfg" -db >/dev/null 2>&1 & PIDS+=($!)
cleanup() {
  kill "${PIDS[@]}" "$REDIS" 2>/dev/null || true
  wait "${PIDS[@]}" "$REDIS" 2>/dev/null || true
  "$BENCH/postfix-ctl.sh" stop || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for port in 2540 2541 2542 2545 2546 2547; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done

count() { # config: the pair's queued messages
  echo "\$(( \$($REPO/target/release/palisade queue count --node mx-1 --config $1) + \$($REPO/target/release/palisade queue count --node mx-2 --config $1) ))"
}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
csv="$OUT/state-backends-$stamp.csv"
"$BENCH/smtp-load.sh" --sizes "$SIZES" --sessions "$SESSIONS" --rcpts 1 \
  --messages "$MESSAGES" --repeat "$REPEAT" --warmup 200 \
  --pid "postfix=@$("$BENCH/postfix-ctl.sh" pidfile)" \
  --pid "embedded=$E1,$E2" --pid "redis=$R1,$R2,$REDIS" \
  --queue-cmd "postfix=$BENCH/postfix-ctl.sh queue" \
  --queue-cmd "embedded=echo $(count "$WORK/embedded.toml")" \
  --queue-cmd "redis=echo $(count "$WORK/redis.toml")" \
  --postfix-log "postfix=$("$BENCH/postfix-ctl.sh" log)" \
  -o "$csv" postfix@127.0.0.1:2530 embedded@127.0.0.1:2540 redis@127.0.0.1:2545 2626
"${PY:-/usr/bin/python3}" "$BENCH/summarize.py" "$csv"
# Evidence that the redis pair kept its state in Redis, and never fell back.
redis-cli -p "$REDIS_PORT" info commandstats | grep -E 'evalsha|zrem' || true
for m in 9146 9147; do
  curl -s "http://127.0.0.1:$m/metrics" | grep -E '^palisade_state_backend_degraded_total' || true
done
echo "results: $csv"
