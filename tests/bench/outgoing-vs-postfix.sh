#!/usr/bin/env bash
# Benchmark (docs/performance.md, docs/outgoing.md): the outgoing stage F
# delivering to loopback sinks.
#  1. One destination domain, side by side with Postfix's smtp delivery
#     agent in ONE interleaved run (shared/bench harness: smtp-source ->
#     server -> smtp-sink 127.0.0.1:2626). Palisade resolves the domain's
#     MX in a local dnsmasq (-> 127.0.0.1, smtp_port 2626); Postfix uses the
#     harness's fixed nexthop [127.0.0.1]:2626 (no DNS).
#  2. Palisade alone: 1 vs 100 destination domains (MX records of d0..d99.test
#     all -> the same sink), tests/bench/outgoing_domains.py as the client.
#     For 1 and 100 domains side by side with Postfix (which then resolves
#     MX records too) see tests/bench/outgoing-domains-vs-postfix.sh.
#
#   tests/bench/outgoing-vs-postfix.sh
#   SKIP_POSTFIX=1 tests/bench/outgoing-vs-postfix.sh   # only part 2
#   SESSIONS=10 SIZES=5000 MESSAGES=2000 REPEAT=3 tests/bench/outgoing-vs-postfix.sh
set -euo pipefail
DEFAULT_SESSIONS=10
. "$(dirname "$0")/common.sh"
cargo build --release -p palisade-outgoing -p palisade-cli

work=$(mktemp -d /tmp/palisade-outbench-XXXXXX)
DNSPORT=25399
{
  echo "local=/test/"
  for i in $(seq 0 99); do
    echo "mx-host=d$i.test,mx.d$i.test,10"
    echo "host-record=mx.d$i.test,127.0.0.1"
  done
  echo "mx-host=example.net,mx.example.net,10"
  echo "host-record=mx.example.net,127.0.0.1"
} >"$work/zones.conf"
dnsmasq --no-daemon --port=$DNSPORT --listen-address=127.0.0.1 --bind-interfaces \
  --no-resolv --no-hosts --conf-file="$work/zones.conf" 2>/dev/null &
DNS=$!
. "$REPO/tests/bench/outgoing-node.sh"
outgoing_toml "$work/data" "127.0.0.1:$DNSPORT" >"$work/outgoing.toml"

if [ "${SKIP_POSTFIX:-0}" != 1 ]; then
  LISTEN=127.0.0.1:2530 "$BENCH/setup-postfix.sh" >/dev/null
  "$BENCH/postfix-ctl.sh" start
fi
target/release/palisade-outgoing --config "$work/outgoing.toml" --node outgoing-1 2>"$OUT/palisade-outgoing.log" &
PAL=$!
SINK=""
cleanup() {
  kill "$PAL" 2>/dev/null || true
  [ -n "$SINK" ] && kill "$SINK" 2>/dev/null || true
  kill "$DNS" 2>/dev/null || true
  [ "${SKIP_POSTFIX:-0}" != 1 ] && { "$BENCH/postfix-ctl.sh" stop || true; }
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/2531) 2>/dev/null && break; sleep 0.1; done
QCMD="$REPO/target/release/palisade queue count --node outgoing-1 --config $work/outgoing.toml"

stamp=$(date -u +%Y%m%dT%H%M%SZ)
if [ "${SKIP_POSTFIX:-0}" != 1 ]; then
csv="$OUT/outgoing-vs-postfix-$stamp.csv"
"$BENCH/smtp-load.sh" --sizes "$SIZES" --sessions "$SESSIONS" --rcpts 1 --domain example.net \
  --messages "$MESSAGES" --repeat "$REPEAT" --warmup 200 \
  --pid "postfix=@$("$BENCH/postfix-ctl.sh" pidfile)" --pid "palisade=$PAL" \
  --queue-cmd "postfix=$BENCH/postfix-ctl.sh queue" --queue-cmd "palisade=$QCMD" \
  --postfix-log "postfix=$("$BENCH/postfix-ctl.sh" log)" \
  -o "$csv" postfix@127.0.0.1:2530 palisade@127.0.0.1:2531 2626
"$PY" "$BENCH/summarize.py" "$csv"
echo "results: $csv"
fi

# 1 vs 100 domains (Palisade only): smtp-sink counts transactions in its log.
smtp-sink -u nobody -c -h bench-sink 127.0.0.1:2626 1000 >"$work/sink.log" 2>&1 &
SINK=$!
sleep 0.5
for d in 1 100; do
  for r in $(seq "$REPEAT"); do
    "$PY" tests/bench/outgoing_domains.py --target 127.0.0.1:2531 --domains "$d" \
      --messages "$MESSAGES" --sessions "$SESSIONS" --size "${SIZES%%,*}" \
      --queue-cmd "$QCMD" \
      --sink-count-cmd "tr '\\r' '\\n' <$work/sink.log | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2" | tee -a "$OUT/outgoing-domains-$stamp.txt"
  done
done
