#!/usr/bin/env bash
# Cross-validated quality of the antispam stage on the SpamAssassin corpus
# (shared/corpus), next to bogofilter and SpamAssassin 4.0 (with Bayes and
# rules only) on exactly the same folds (spam-baselines.sh).
#
#   nice -n 19 tests/bench/spam-eval.sh [CORPUS_DIR] [K] [OUT_DIR]
#
# Needs: cargo build --release -p palisade-cli; for the baselines
#   apt-get install bogofilter spamassassin spamd spamc bc
# (RUN_BOGO=0 / RUN_SA=0 skip one; SpamAssassin takes ~30 min of CPU on the
# 3,627 messages). Results: OUT_DIR (default /tmp/spam-eval.XXXXXX, kept),
# summary.txt there; the figures are in docs/antispam.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
CORPUS=${1:-/work/shared/corpus}
K=${2:-10}
WORK=${3:-$(mktemp -d /tmp/spam-eval.XXXXXX)}
mkdir -p "$WORK"
cat > "$WORK/eval.toml" <<TOML
[gateway]
hostname = "mail.example.test"
data_dir = "$WORK/data"
[stage.mx]
relay = ["127.0.0.1:1"]
[node.mx-1]
stage = "mx"
smtp = "127.0.0.1:2525"
TOML
echo "== palisade, $K-fold cross-validation"
target/release/palisade spam eval --config "$WORK/eval.toml" --list "$CORPUS/all.txt" \
  --root "$CORPUS/spamassassin" --folds "$K" --write-folds "$WORK/folds" --results "$WORK/palisade.txt" \
  | tee "$WORK/palisade-summary.txt"
rm -rf "$WORK/data"   # the ten folds' LMDB token databases
echo "== baselines on the same folds"
tests/bench/spam-baselines.sh "$WORK/folds" "$K" "$WORK/baselines" "$CORPUS"
if [ -n "${SA_FOLDS:-}" ]; then
  # SpamAssassin ran on some folds only: palisade and bogofilter on those too.
  for i in $SA_FOLDS; do cat "$WORK/folds/test$i.txt"; done > "$WORK/sa-tests"
  for r in palisade:"$WORK/palisade.txt" bogofilter:"$WORK/baselines/bogofilter.txt"; do
    [ -f "${r#*:}" ] || continue
    awk 'NR==FNR{t[$2]=1; next} ($4 in t)' "$WORK/sa-tests" "${r#*:}" > "$WORK/${r%%:*}-sa-folds.txt"
    python3 "$CORPUS/eval_results.py" "${r%%:*}, folds $(echo $SA_FOLDS)" "$WORK/${r%%:*}-sa-folds.txt" 1 \
      | sed 's/ wall=.*//' | tee -a "$WORK/baselines/summary.txt"
  done
fi
echo "results in $WORK (summary: $WORK/baselines/summary.txt)"
