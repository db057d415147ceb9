#!/usr/bin/env bash
# bogofilter and SpamAssassin 4.0 on exactly the folds `palisade spam eval
# --folds K --write-folds DIR` wrote (issue 6). Called by spam-eval.sh; can
# be run alone on a folds directory:
#
#   nice -n 19 tests/bench/spam-baselines.sh FOLDS_DIR K OUT_DIR [CORPUS_DIR]
#
# Needs: apt-get install bogofilter spamassassin spamd spamc bc ; python3, perl.
# (Not test dependencies: nothing in tests/integration uses them.)
# Environment: RUN_BOGO=0 / RUN_SA=0 skip one filter; SA_FOLDS="1 2" scores
# only those folds' test messages (both SpamAssassin passes: ~5 msg/s per
# core, so ten folds cost ~30 min of CPU); SA_DB=DIR takes the all-messages
# Bayes database from DIR (a KEEP=1 run's bayes-all) instead of training it;
# RUN_RULES=0 skips the rules-only pass; VERIFY_FOLD=N (0 = off) checks the
# forget-based training below against a from-scratch one on fold N (default
# 2: with `palisade spam eval`'s folds of shared/corpus, fold 2 has messages
# whose msgid twin is in its training set, so the check covers that case);
# VERIFY_SAMPLE (default 40) test messages of that fold are scored both ways;
# KEEP=1 keeps the work directory (databases, spamd logs).
#
# SpamAssassin: stock rules, local tests only (spamd -L: no DNS blocklists,
# Razor or Pyzor, as the corpus README asks), Bayes from sa-learn with
# auto-learn and auto-expire off, one spamd child per scoring pass. Training
# from scratch per fold costs K times the learning; instead the Bayes
# database is trained ONCE on every message, and per fold a copy of it
# forgets (`sa-learn --forget`) the fold's test messages. With auto-learn and
# auto-expire off, learning and forgetting only add and subtract the
# message's token counts, so the result is the database of the fold's
# training set. One catch: sa-learn keys a learned message by a msgid
# (Mail::SpamAssassin::Message::generate_msgid, a hash of a few headers and
# the body start) and skips a message whose msgid it has already learned, and
# a few corpus messages share one. So only the copy sa-learn actually learned
# is forgotten, and when that copy is in the test fold the first copy in the
# training set is learned again — what a from-scratch training learns.
# VERIFY_FOLD checks the whole claim: same nham/nspam/ntokens, same token
# table (counts of every token), same scores on a sample.
#
# Rules only (use_bayes 0) does not depend on the fold: every test message
# is scored once, in parallel with the Bayes passes (a second spamd, so at most
# two scanning processes: the machine has 2 cores).
#
# Throughput: CPU seconds (user+sys) of the spamd tree plus spamc and this
# shell, per message, as shared/corpus/baselines.sh counts it; bogofilter is
# run by baselines.sh itself. Results go to OUT_DIR: *.txt verdict files in
# eval_results.py format and summary.txt.
set -euo pipefail
FOLDS=${1:?FOLDS_DIR} K=${2:?K} OUT=${3:?OUT_DIR}
CORPUS=${4:-/work/shared/corpus}
ROOT=$CORPUS/spamassassin
EVAL=$CORPUS/eval_results.py
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY=$OUT/summary.txt
log() { echo "$*" | tee -a "$SUMMARY"; }
now() { date +%s.%N; }
sum() { python3 -c 'import sys; print(round(sum(float(x) for x in sys.argv[1:]), 3))' "$@"; }
log "# $(date -u +%FT%TZ) $(uname -m) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-);" \
  "bogofilter $(dpkg-query -W -f='${Version}' bogofilter 2>/dev/null)," \
  "spamassassin $(dpkg-query -W -f='${Version}' spamassassin 2>/dev/null); folds $FOLDS"

if [ "${RUN_BOGO:-1}" = 1 ]; then
  echo "== bogofilter on the same folds (shared/corpus/baselines.sh, RUN_SA=0)"
  # baselines.sh writes results/ next to itself and the corpus is read-only:
  # run a copy, reading the corpus through a symlink.
  BL=$OUT/bogofilter-run
  mkdir -p "$BL"
  cp "$CORPUS/baselines.sh" "$EVAL" "$BL/"
  ln -sfn "$ROOT" "$BL/spamassassin"
  : > "$OUT/bogofilter.txt"
  bcpu=0
  for i in $(seq 1 "$K"); do
    (cd "$BL" && TRAIN=$FOLDS/train$i.txt TEST=$FOLDS/test$i.txt RUN_SA=0 ./baselines.sh > "$BL/out$i.txt" 2>&1)
    # baselines.sh keeps its own work dir for inspection: remove it.
    rm -rf "$(awk '/^work dir:/{print $3; exit}' "$BL/out$i.txt")"
    cat "$BL/results/bogofilter.txt" >> "$OUT/bogofilter.txt"
    c=$(grep 'bogofilter bulk (-B, 1 process): recall' "$BL/results/summary.txt" | tail -1 | sed -n 's/.* cpu=\([0-9.]*\)s.*/\1/p')
    bcpu=$(sum "$bcpu" "$c")
  done
  python3 "$EVAL" "bogofilter bulk, $K folds" "$OUT/bogofilter.txt" 1 "$bcpu" | grep -v '^$' | sed 's/ wall=[^ ]* throughput=[^)]*)//' | tee -a "$SUMMARY"
fi

[ "${RUN_SA:-1}" = 1 ] || exit 0
command -v spamd >/dev/null && command -v spamc >/dev/null \
  || { echo "spamd/spamc missing: apt-get install spamassassin spamd spamc"; exit 1; }
echo "== SpamAssassin $(dpkg-query -W -f='${Version}' spamassassin) on the same folds"
W=$(mktemp -d /tmp/spam-baselines.XXXXXX); chmod 755 "$W"
# every spamd this script starts writes W/NAME.pid: stop exactly those.
cleanup() { for f in "$W"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done; [ "${KEEP:-0}" = 1 ] || rm -rf "$W"; }
trap cleanup EXIT
USEROPT=(); [ "$(id -u)" = 0 ] && USEROPT=(-u debian-spamd)   # spamd refuses to scan as root

# site NAME BAYES_DIR [extra local.cf line]: a site config dir = Debian's
# plugins + stock rules (from /usr/share/spamassassin), Bayes at BAYES_DIR.
site() {
  local d=$W/site-$1
  mkdir -p "$d" "$2"
  cp /etc/spamassassin/*.pre /etc/spamassassin/65_debian.cf "$d/"
  printf '%s\n' "use_bayes 1" "bayes_auto_learn 0" "bayes_auto_expire 0" "bayes_path $2/bayes" \
    "bayes_file_mode 0777" "lock_method flock" ${3:+"$3"} > "$d/local.cf"
  echo "$d"
}
learn() { sa-learn -L --siteconfigpath="$1" "${@:2}"; }   # learn SITE ARGS...
magic() { learn "$1" --dump magic | awk '/nspam|nham|ntokens/{printf "%s=%s ", $NF, $3}'; }
give() { [ "$(id -u)" = 0 ] && chown -R debian-spamd: "$1"; true; }

# KC := CPU seconds of the children this shell has waited for ('times' line 2).
kids_cpu() {
  local f=$W/times.$BASHPID
  times > "$f"
  KC=$(awk 'NR==2{split($1,a,/[ms]/); split($2,b,/[ms]/); print a[1]*60+a[2]+b[1]*60+b[2]}' "$f")
}
# CPU seconds of a daemon: itself, its reaped children and its live children.
tree_cpu() { python3 - "$1" <<'EOF'
import os, sys
p, hz = sys.argv[1], os.sysconf("SC_CLK_TCK")
def st(pid): return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
tot = sum(int(x) for x in st(p)[11:15])
for d in os.listdir("/proc"):
    if d.isdigit():
        try: s = st(d)
        except OSError: continue
        if s[1] == p: tot += int(s[11]) + int(s[12])
print(tot / hz)
EOF
}

# score NAME SITE LIST: one spamd (one child, Unix socket only) scores every
# message of LIST into $W/NAME.txt; prints "cpu_seconds wall_seconds".
score() {
  local name=$1 site=$2 list=$3 sock=$W/$1.sock
  spamd -L --siteconfigpath="$site" -x "${USEROPT[@]}" --max-children=1 --min-children=1 --min-spare=1 \
    --max-spare=1 --socketpath="$sock" --pidfile="$W/$name.pid" --syslog="$W/$name.log" > "$W/$name.stderr" 2>&1 &
  local pid=$!
  for _ in $(seq 300); do [ -S "$sock" ] && spamc -U "$sock" -K > /dev/null 2>&1 && break; sleep 1; done
  local g  # spamc -c exits 1 for spam
  g=$(printf 'Subject: gtube\n\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\n' \
    | spamc -U "$sock" -x -c || true)
  awk -F/ '$1 < 100 {exit 1}' <<< "$g" || { echo "$name: spamd scores GTUBE '$g'" >&2; return 1; }
  local s0 s1 c0 c1 t0 t1 s rc v label rel
  s0=$(tree_cpu "$pid"); kids_cpu; c0=$KC; t0=$(now)
  while read -r label rel; do
    set +e; s=$(spamc -U "$sock" -x -c -s 10000000 < "$ROOT/$rel"); rc=$?; set -e
    case $rc in 0) v=ham ;; 1) v=spam ;; *) v=error ;; esac
    echo "$label $v $s $rel"
  done < "$list" > "$W/$name.txt"
  t1=$(now); kids_cpu; c1=$KC; s1=$(tree_cpu "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  if grep -q ' error ' "$W/$name.txt"; then echo "$name: spamc errors" >&2; return 1; fi
  echo "$(sum "$s1" "-$s0" "$c1" "-$c0") $(sum "$t1" "-$t0")"
}

# Learning order: ham then spam, each in all.txt order, for the full training
# and for the from-scratch check alike (which copy of a shared msgid gets
# learned depends on it). ordered LIST LABEL: LIST's LABEL lines, all.txt order.
ordered() { awk -v l="$2" 'NR==FNR{if ($1==l) want[$2]=1; next} ($2 in want){print}' "$1" "$CORPUS/all.txt"; }
paths() { awk -v r="$ROOT" '{print r"/"$2}' "$@"; }

# SpamAssassin's own msgid of every message (the key sa-learn learns under).
perl -MMail::SpamAssassin -e '
  my $sa = Mail::SpamAssassin->new({local_tests_only => 1, dont_copy_prefs => 1});
  my $root = shift;
  while (<STDIN>) { my ($l, $p) = split; open my $f, "<", "$root/$p" or die "$p: $!"; my @m = <$f>;
    my $msg = $sa->parse(\@m); print "$l $p ", $msg->generate_msgid(), "\n"; $msg->finish; }' \
  "$ROOT" < "$CORPUS/all.txt" 2> /dev/null > "$W/msgids.txt"

# plan TRAIN TEST DIR: the lists that turn the all-messages database into
# TRAIN's: DIR/forget (learned copies in TEST), DIR/relearn.{ham,spam}.
plan() {
  python3 - "$W/msgids.txt" "$1" "$2" "$3" <<'EOF'
import sys
ids, train, test, out = sys.argv[1:]
rows = [l.split() for l in open(ids)]
in_set = lambda f: {l.split()[1] for l in open(f)}
train, test = in_set(train), in_set(test)
def learned(keep):  # what sa-learn learns from `keep`: first copy of each msgid, ham then spam
    seen, got = {}, []
    for label in ("ham", "spam"):
        for l, p, m in rows:
            if l == label and p in keep and m not in seen:
                if any(x[2] == m and x[0] != l for x in rows):
                    sys.exit(f"msgid {m} is both ham and spam: forget/relearn is not exact")
                seen[m] = p; got.append((l, p))
    return set(got)
full, want = learned(train | test), learned(train)
forget, relearn = sorted(full - want), sorted(want - full)
open(f"{out}/forget", "w").write("".join(f"{l} {p}\n" for l, p in forget))
for label in ("ham", "spam"):
    open(f"{out}/relearn.{label}", "w").write("".join(f"{l} {p}\n" for l, p in relearn if l == label))
print(f"forget {len(forget)}, relearn {len(relearn)}")
EOF
}

ordered "$CORPUS/all.txt" ham > "$W/all.ham"; ordered "$CORPUS/all.txt" spam > "$W/all.spam"
groups=$(awk '{n[$3]++} END{for (m in n) if (n[m] > 1) {g++; c += n[m]}; print g+0 " msgids shared by " c+0 " messages"}' "$W/msgids.txt")
log "SpamAssassin msgids: $groups"

SA_FOLDS=${SA_FOLDS:-$(seq 1 "$K")}
V=${VERIFY_FOLD:-2}
case " $SA_FOLDS 0 " in *" $V "*) ;; *) echo "VERIFY_FOLD=$V is not among SA_FOLDS"; exit 1 ;; esac
for i in $SA_FOLDS; do cat "$FOLDS/test$i.txt"; done > "$W/tests"
log "SpamAssassin folds: $(echo $SA_FOLDS) ($(wc -l < "$W/tests") test messages)"

# Rules only, each test message once, in the background.
if [ "${RUN_RULES:-1}" = 1 ]; then
  RULES=$(site rules "$W/bayes-unused" "use_bayes 0")
  give "$W/bayes-unused"
  (r=$(score rules "$RULES" "$W/tests") && echo "$r" > "$W/rules.cost") > "$W/rules.out" 2>&1 &
  RULES_JOB=$!
fi

if [ "$V" != 0 ]; then
  # From-scratch training on fold V's training set, for the check below; in
  # the background (it is as long as the full training).
  NEW=$(site scratch "$W/bayes-scratch")
  (learn "$NEW" --ham -f <(paths <(ordered "$FOLDS/train$V.txt" ham))
   learn "$NEW" --spam -f <(paths <(ordered "$FOLDS/train$V.txt" spam))) > "$W/scratch.out" 2>&1 &
  SCRATCH_JOB=$!
fi

# Bayes database trained on every message.
ALL=$(site all "$W/bayes-all")
if [ -n "${SA_DB:-}" ]; then
  cp -a "$SA_DB/." "$W/bayes-all/"
  log "Bayes database of all messages from $SA_DB: $(magic "$ALL")"
else
  kids_cpu; c0=$KC
  learn "$ALL" --ham -f <(paths "$W/all.ham") | tee -a "$SUMMARY"
  learn "$ALL" --spam -f <(paths "$W/all.spam") | tee -a "$SUMMARY"
  kids_cpu
  log "sa-learn on all $(wc -l < "$CORPUS/all.txt") messages: $(magic "$ALL")cpu $(sum "$KC" "-$c0") s"
fi

# verify: the forget-derived database of fold V against the one trained from
# scratch on fold V's training set (right after fold V is scored).
verify() {
  wait "$SCRATCH_JOB"
  local OLD=$W/site-fold$V s tok same
  log "verify fold $V: forget-derived $(magic "$OLD")| from scratch $(magic "$NEW")"
  # token table without the access times (they are not used for scoring; expiry is off)
  for s in OLD NEW; do learn "${!s}" --dump data | awk '{print $1, $2, $3, $5}' | sort > "$W/tokens.$s"; done
  if cmp -s "$W/tokens.OLD" "$W/tokens.NEW"; then tok="identical token tables ($(wc -l < "$W/tokens.NEW") tokens)"
  else tok="token tables DIFFER: $(diff "$W/tokens.OLD" "$W/tokens.NEW" | grep -c '^[<>]') lines"; fi
  give "$W/bayes-scratch"
  # a spread-out sample: every k-th test message
  awk -v n="${VERIFY_SAMPLE:-40}" -v t="$(wc -l < "$FOLDS/test$V.txt")" 'NR % int(t / n > 1 ? t / n : 1) == 0' \
    "$FOLDS/test$V.txt" | head -n "${VERIFY_SAMPLE:-40}" > "$W/sample"
  score scratch "$NEW" "$W/sample" > /dev/null
  same=$(awk 'NR==FNR{s[$4]=$3; next} ($4 in s){n++; if (s[$4]==$3) eq++} END{print eq+0 "/" n+0}' "$W/bayes$V.txt" "$W/scratch.txt")
  log "verify fold $V: $tok; same score on $same sampled test messages"
}

: > "$OUT/spamassassin-bayes.txt"
bayes_cpu=0
for i in $SA_FOLDS; do
  D=$W/fold$i
  mkdir -p "$D"
  cp -a "$W/bayes-all" "$D/bayes"
  S=$(site "fold$i" "$D/bayes")
  p=$(plan "$FOLDS/train$i.txt" "$FOLDS/test$i.txt" "$D")
  kids_cpu; c0=$KC
  learn "$S" --forget -f <(paths "$D/forget") > /dev/null
  for label in ham spam; do
    [ -s "$D/relearn.$label" ] && learn "$S" "--$label" -f <(paths "$D/relearn.$label") > /dev/null
  done
  kids_cpu
  log "fold $i: $p: $(magic "$S")cpu $(sum "$KC" "-$c0") s"
  give "$D/bayes"
  r=$(score "bayes$i" "$S" "$FOLDS/test$i.txt")
  read -r cpu wall <<< "$r"
  cat "$W/bayes$i.txt" >> "$OUT/spamassassin-bayes.txt"
  bayes_cpu=$(sum "$bayes_cpu" "$cpu")
  log "$(python3 "$EVAL" "fold $i, SpamAssassin with Bayes" "$W/bayes$i.txt" "$wall" "$cpu" | sed -n 2p)"
  cp "$W/bayes$i.txt" "$OUT/"
  if [ "$i" = "$V" ]; then verify; fi
done
python3 "$EVAL" "SpamAssassin -L with Bayes, folds $(echo $SA_FOLDS)" "$OUT/spamassassin-bayes.txt" 1 "$bayes_cpu" \
  | sed 's/ wall=[^ ]* throughput=[^)]*)//' | tee -a "$SUMMARY"

if [ "${RUN_RULES:-1}" = 1 ]; then
  wait "$RULES_JOB" || { cat "$W/rules.out"; exit 1; }
  read -r cpu wall < "$W/rules.cost"
  cp "$W/rules.txt" "$OUT/spamassassin-rules.txt"
  python3 "$EVAL" "SpamAssassin -L, rules only (use_bayes 0), folds $(echo $SA_FOLDS)" "$OUT/spamassassin-rules.txt" \
    "$wall" "$cpu" | sed 's/ wall=[^ ]* throughput=[^)]*)//' | tee -a "$SUMMARY"
fi
log "# done $(date -u +%FT%TZ); loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
