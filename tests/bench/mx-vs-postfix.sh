#!/usr/bin/env bash
# Benchmark (docs/performance.md): messages per second accepted and relayed
# by palisade-mx with its durable queue (config/bench.toml, 127.0.0.1:2525),
# side by side in ONE interleaved run with Postfix 3.7 configured as a
# loopback relay (127.0.0.1:2530). Both relay to one smtp-sink on 2626; load
# comes from Postfix's smtp-source (shared/bench/ harness).
#
#   tests/bench/mx-vs-postfix.sh                      # 10 and 50 sessions, 5 KB, 2000 msgs x 3
#   SESSIONS=1,10,50 SIZES=5000,100000 REPEAT=3 MESSAGES=2000 tests/bench/mx-vs-postfix.sh
set -euo pipefail
. "$(dirname "$0")/common.sh"

cargo build --release -p palisade-mx -p palisade-cli
LISTEN=127.0.0.1:2530 "$BENCH/setup-postfix.sh" >/dev/null
"$BENCH/postfix-ctl.sh" start

rm -rf data-bench
target/release/palisade-mx --config config/bench.toml --node mx-1 2>"$OUT/palisade-mx.log" &
PAL=$!
cleanup() { kill "$PAL" 2>/dev/null || true; "$BENCH/postfix-ctl.sh" stop || true; }
trap cleanup EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/2525) 2>/dev/null && break; sleep 0.1; done

stamp=$(date -u +%Y%m%dT%H%M%SZ)
csv="$OUT/mx-vs-postfix-$stamp.csv"
"$BENCH/smtp-load.sh" --sizes "$SIZES" --sessions "$SESSIONS" --rcpts 1 \
  --messages "$MESSAGES" --repeat "$REPEAT" --warmup 200 \
  --pid "postfix=@$("$BENCH/postfix-ctl.sh" pidfile)" --pid "palisade=$PAL" \
  --queue-cmd "postfix=$BENCH/postfix-ctl.sh queue" \
  --queue-cmd "palisade=$REPO/target/release/palisade queue count --node mx-1 --config $REPO/config/bench.toml" \
  --postfix-log "postfix=$("$BENCH/postfix-ctl.sh" log)" \
  -o "$csv" postfix@127.0.0.1:2530 palisade@127.0.0.1:2525 2626
"${PY:-/usr/bin/python3}" "$BENCH/summarize.py" "$csv"
echo "results: $csv"
