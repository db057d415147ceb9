# Sourced by the benchmarks that load one node with shared/bench's
# smtp-source: where things are and the load knobs, each overridable from
# the environment (SESSIONS' default is the script's DEFAULT_SESSIONS).
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SHARED=${SHARED:-$REPO/../shared}   # /work/shared when run from a worktree
BENCH=$SHARED/bench
OUT=${OUT:-$REPO/bench-results}
SESSIONS=${SESSIONS:-${DEFAULT_SESSIONS:-10,50}}
SIZES=${SIZES:-5000}
MESSAGES=${MESSAGES:-2000}
REPEAT=${REPEAT:-3}
PY=${PY:-/usr/bin/python3}
mkdir -p "$OUT"
cd "$REPO"

# A loopback TCP port nothing listens on now.
free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
