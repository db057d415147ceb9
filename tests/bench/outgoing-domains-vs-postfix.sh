#!/usr/bin/env bash
# Benchmark (docs/performance.md, outgoing section): stage F and Postfix's
# smtp delivery agent delivering to 1 and to 100 destination domains, in ONE
# interleaved run, both resolving every domain's MX in the same DNS server.
#
# Postfix reads its resolver from /etc/resolv.conf (port 53), so the whole
# run lives in a private network + mount namespace made here (unshare): lo
# only, dnsmasq on 127.0.0.1:53 with the zones d0.test..d99.test (MX ->
# mx.dN.test -> 127.0.0.2), /etc/resolv.conf bind-mounted to point at it
# (only inside the namespace), one smtp-sink on 127.0.0.2:2626. The sink is
# not on 127.0.0.1 because Postfix refuses an MX that is one of its own
# addresses ("loops back to myself").
#   - Postfix 3.7: a private instance (shared/bench/setup-postfix.sh, copied
#     to the scratch dir so shared/ is untouched) with MX lookups on
#     (default_transport = smtp, smtp_dns_support_level = enabled,
#     smtp_tcp_port = 2626); every other setting as the shared harness.
#   - palisade-outgoing: gateway.dns = 127.0.0.1:53, smtp_port = 2626,
#     queue.concurrency = per_domain_concurrency = 20 (Postfix's default
#     destination concurrency).
# Client: tests/bench/outgoing_domains.py (10 sessions, connection reuse,
# recipients cycling through the domains), per repeat: 1 domain then 100,
# Postfix then Palisade. Loopback only; bounded in count and time.
#
#   tests/bench/outgoing-domains-vs-postfix.sh
#   MESSAGES=2000 REPEAT=3 SESSIONS=10 SIZE=5000 tests/bench/outgoing-domains-vs-postfix.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
SHARED=${SHARED:-$REPO/../shared}
# In a git worktree elsewhere: shared/ sits next to the main checkout.
[ -d "$SHARED/bench" ] || SHARED=$(cd "$(git -C "$REPO" rev-parse --git-common-dir)/../../shared" && pwd)
MESSAGES=${MESSAGES:-2000}
REPEAT=${REPEAT:-3}
SESSIONS=${SESSIONS:-10}
SIZE=${SIZE:-5000}
PY=${PY:-/usr/bin/python3}
OUT=${OUT:-$REPO/bench-results}

if [ "${PALISADE_BENCH_NETNS:-}" != 1 ]; then
  cd "$REPO"
  cargo build --release -p palisade-outgoing -p palisade-cli
  mkdir -p "$OUT"
  exec env PALISADE_BENCH_NETNS=1 SHARED="$SHARED" OUT="$OUT" \
    unshare --net --mount --propagation private "$0" "$@"
fi

# ---- inside the private namespaces from here on ----
ip link set lo up
work=$(mktemp -d /tmp/palisade-outdomains-XXXXXX)
chmod 755 "$work"
# Postfix refuses a queue below a world-writable directory such as /tmp.
export PFROOT=/var/lib/palisade-outbench-$$
PAL="" SINK="" DNS=""
cleanup() {
  for p in $PAL $SINK $DNS; do kill "$p" 2>/dev/null || true; done
  [ -x "$work/bench/postfix-ctl.sh" ] && { "$work/bench/postfix-ctl.sh" stop >/dev/null 2>&1 || true; }
  umount /etc/resolv.conf 2>/dev/null || true
  rm -rf "$work" "$PFROOT"
}
trap cleanup EXIT
cp -r "$SHARED/bench" "$work/bench"
BENCH=$work/bench
# No package installs from inside the namespace (no network; postfix and
# smtp-sink are installed by tests/run-all.sh): drop setup's apt-get part.
sed -i '/^if ! dpkg -s postfix/,/install -y -q --no-install-recommends fio time; done/d' \
  "$BENCH/setup-postfix.sh"
command -v postconf >/dev/null && command -v smtp-sink >/dev/null

{
  echo "local=/test/"
  for i in $(seq 0 99); do
    echo "mx-host=d$i.test,mx.d$i.test,10"
    echo "host-record=mx.d$i.test,127.0.0.2"
  done
} >"$work/zones.conf"
dnsmasq --no-daemon --port=53 --listen-address=127.0.0.1 --bind-interfaces \
  --no-resolv --no-hosts --conf-file="$work/zones.conf" 2>/dev/null &
DNS=$!
echo "nameserver 127.0.0.1" >"$work/resolv.conf"
mount --bind "$work/resolv.conf" /etc/resolv.conf

LISTEN=127.0.0.1:2530 TEST_DOMAIN=example.test "$BENCH/setup-postfix.sh" >/dev/null
postconf -c "$PFROOT/etc" -e "default_transport = smtp" "smtp_dns_support_level = enabled" \
  "smtp_host_lookup = dns" "smtp_tcp_port = 2626"
"$BENCH/postfix-ctl.sh" start >/dev/null

. "$REPO/tests/bench/outgoing-node.sh"
outgoing_toml "$work/data" "127.0.0.1:53" >"$work/outgoing.toml"
"$REPO/target/release/palisade-outgoing" --config "$work/outgoing.toml" --node outgoing-1 \
  2>"$OUT/palisade-outgoing-domains.log" &
PAL=$!
smtp-sink -u nobody -c -h bench-sink 127.0.0.2:2626 1000 >"$work/sink.log" 2>&1 &
SINK=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/2531) 2>/dev/null && break; sleep 0.1; done
sleep 2.5 # shared/bench pitfall 4: let the sink settle before Postfix caches connections

QPAL="$REPO/target/release/palisade queue count --node outgoing-1 --config $work/outgoing.toml"
QPF="$BENCH/postfix-ctl.sh queue"
SINKCOUNT="tr '\\r' '\\n' <$work/sink.log | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
res="$OUT/outgoing-domains-vs-postfix-$stamp.txt"
run() { # label target queue-cmd pid domains
  "$PY" "$REPO/tests/bench/outgoing_domains.py" --label "$1" --target "$2" --queue-cmd "$3" \
    --pid "$4" --bench-dir "$BENCH" --domains "$5" --messages "$MESSAGES" \
    --sessions "$SESSIONS" --size "$SIZE" --sink-count-cmd "$SINKCOUNT" | tee -a "$res"
}
# Warm-up (not counted): fills Postfix's process pool and Palisade's DNS cache alike.
for t in postfix palisade; do
  if [ $t = postfix ]; then a=127.0.0.1:2530; else a=127.0.0.1:2531; fi
  "$PY" "$REPO/tests/bench/outgoing_domains.py" --label warmup --target $a --domains 100 \
    --messages 200 --sessions "$SESSIONS" --size "$SIZE" --sink-count-cmd "$SINKCOUNT" \
    --queue-cmd "$([ $t = postfix ] && echo "$QPF" || echo "$QPAL")" >/dev/null
done
for r in $(seq "$REPEAT"); do
  for d in 1 100; do
    run postfix 127.0.0.1:2530 "$QPF" "@$("$BENCH/postfix-ctl.sh" pidfile)" "$d"
    run palisade 127.0.0.1:2531 "$QPAL" "$PAL" "$d"
  done
done
"$PY" - "$res" <<'PY'
import re, statistics, sys
rows = [dict(kv.split("=", 1) for kv in l.split()) for l in open(sys.argv[1]) if l.startswith("target=")]
def cell(vals):
    return f"{statistics.median(vals):.0f} [{min(vals):.0f}–{max(vals):.0f}]"
def cellf(vals):
    return f"{statistics.median(vals):.2f} [{min(vals):.2f}–{max(vals):.2f}]"
print("| domains | target | e2e msg/s | accept msg/s | server CPU ms/msg | runs |")
print("|---:|---|---|---|---|---:|")
med = {}
for d in sorted({int(r["domains"]) for r in rows}):
    for t in ("postfix", "palisade"):
        rs = [r for r in rows if r["target"] == t and int(r["domains"]) == d]
        if not rs:
            continue
        e2e = [float(r["e2e_mps"]) for r in rs]
        cpu = [float(r["srv_cpu_ms_per_msg"]) for r in rs if "srv_cpu_ms_per_msg" in r]
        med[(t, d)] = (statistics.median(e2e), statistics.median(cpu) if cpu else None)
        print(f"| {d} | {t} | {cell(e2e)} | {cell([float(r['accept_mps']) for r in rs])} | "
              f"{cellf(cpu) if cpu else '-'} | {len(rs)} |")
for d in sorted({d for _, d in med}):
    if ("postfix", d) in med and ("palisade", d) in med:
        (pe, pc), (ge, gc) = med[("postfix", d)], med[("palisade", d)]
        cpu = f", {gc / pc:.2f}× the server CPU per message" if pc and gc else ""
        print(f"{d} domain(s): palisade/postfix e2e = {ge / pe:.2f}×{cpu}")
PY
echo "results: $res"
