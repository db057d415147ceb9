#!/usr/bin/env bash
# Benchmark: delivery rate into the message store (stage G). Postfix's
# smtp-source plays the antispam stage and sends 5 KB messages straight to
# store-staff's SMTP intake (config/local.toml on private ports); each
# message is filed durably (LMDB, group commit) before its 250.
#   tests/bench/store-delivery.sh [MESSAGES] [SESSIONS...]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
MESSAGES=${1:-2000}; shift || true
SESSIONS=${*:-1 10 50}
cd "$REPO"
cargo build --release -p palisade-store -p palisade-cli >/dev/null
W=$(mktemp -d /tmp/palisade-store-bench.XXXXXX)
# config/local.toml moved to ports +30000 and a temporary data directory.
/usr/bin/python3 - "$W" <<'PY'
import re, sys
w = sys.argv[1]
t = open("config/local.toml").read().replace('data_dir = "data"', f'data_dir = "{w}/data"')
t = re.sub(r'127\.0\.0\.1:(\d+)', lambda m: f"127.0.0.1:{int(m.group(1)) + 30000}", t)
open(f"{w}/palisade.toml", "w").write(t)
PY
echo 'correct horse battery' | target/release/palisade user add bench@example.test --password-stdin --config "$W/palisade.toml" >/dev/null
target/release/palisade-store --config "$W/palisade.toml" --node store-staff 2>"$W/store.log" &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$W"' EXIT
PORT=$(grep -A4 '^\[node.store-staff\]' "$W/palisade.toml" | sed -n 's/^smtp = "127.0.0.1:\([0-9]*\)"/\1/p')
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
tick() { awk '{print $14+$15}' /proc/$PID/stat; }
echo "| sessions | messages | delivered msg/s | store CPU ms/msg |"
echo "|---:|---:|---:|---:|"
for s in $SESSIONS; do
  c0=$(tick); t0=$(date +%s.%N)
  smtp-source -s "$s" -m "$MESSAGES" -l 5000 -f sender@outside.test -t bench@example.test "127.0.0.1:$PORT"
  t1=$(date +%s.%N); c1=$(tick)
  awk -v m="$MESSAGES" -v s="$s" -v t="$(echo "$t1 - $t0" | bc -l)" -v c="$((c1 - c0))" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "| %d | %d | %.0f | %.2f |\n", s, m, m / t, c * 1000 / hz / m }'
done
grep -c "status=stored" "$W/store.log" | sed 's/^/stored: /'
