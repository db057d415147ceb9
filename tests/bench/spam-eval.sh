#!/usr/bin/env bash
# Cross-validated quality of the antispam stage on the SpamAssassin corpus
# (shared/corpus), next to bogofilter on exactly the same folds.
#
#   tests/bench/spam-eval.sh [CORPUS_DIR] [K]
#
# Needs: cargo build --release; bogofilter (apt-get install bogofilter) for
# the baseline (skipped when absent). Results: docs/antispam.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
CORPUS=${1:-/work/shared/corpus}
K=${2:-10}
WORK=$(mktemp -d /tmp/spam-eval.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
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
  --root "$CORPUS/spamassassin" --folds "$K" --write-folds "$WORK/folds" --results "$WORK/palisade.txt"
if command -v bogofilter >/dev/null; then
  echo "== bogofilter on the same folds (baselines.sh, RUN_SA=0)"
  mkdir -p "$WORK/bl"
  cp "$CORPUS/baselines.sh" "$CORPUS/eval_results.py" "$WORK/bl/"
  ln -s "$CORPUS/spamassassin" "$WORK/bl/spamassassin"
  : > "$WORK/bogo-all.txt"
  for i in $(seq 1 "$K"); do
    (cd "$WORK/bl" && TRAIN=$WORK/folds/train$i.txt TEST=$WORK/folds/test$i.txt RUN_SA=0 ./baselines.sh > "$WORK/bl/out$i.txt" 2>&1)
    # baselines.sh keeps its own work dir for inspection: remove ours only.
    rm -rf "$(awk '/^work dir:/{print $3; exit}' "$WORK/bl/out$i.txt")"
    cat "$WORK/bl/results/bogofilter.txt" >> "$WORK/bogo-all.txt"
    grep "bogofilter bulk (-B, 1 process): recall" "$WORK/bl/results/summary.txt" | tail -1
  done
  python3 "$CORPUS/eval_results.py" "bogofilter bulk, $K folds" "$WORK/bogo-all.txt" 1 | grep -v throughput
else
  echo "(bogofilter not installed: apt-get install bogofilter)"
fi
