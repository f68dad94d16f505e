#!/usr/bin/env bash
# Load-test servers built from different checkouts, one after the other, in one session.
#
#   benchmarks/compare_load.sh OUTDIR LABEL:CHECKOUT[:SERVER ARGS] ...
#   e.g. MODELS=/tmp/b20/models DATA=/tmp/b20/data PROFILE=1 \
#        benchmarks/compare_load.sh /tmp/cmp "old:/path/to/old-checkout:--threads 8" "new:.:--threads 2"
#
# Each server imports its own checkout (PYTHONPATH) and serves MODELS over a memory store
# of DATA (or STORE=redis://...); the load generator of this checkout runs its three
# phases against it (DURATION seconds each) and reports the server's CPU per call. A
# server that exits, or does not answer within START_TIMEOUT seconds (default 120), stops
# the script with its log's last lines. PROFILE=1 records py-spy samples of the server
# into OUTDIR/LABEL.pyspy.raw. Each table is also in OUTDIR/LABEL.txt, its figures in
# OUTDIR/LABEL.json. Ratios between rows are what to compare: the machine is shared.
set -euo pipefail
OUT=$1; shift; mkdir -p "$OUT"
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$HERE/.venv/bin/python}
STORE_ARGS=${STORE:+--store $STORE}
server=""
# On any exit, `kill PID` and `timeout` included: loadgen runs in the foreground, whose pid bash
# does not give, and left alone it went on loading the stopped server for the rest of its phases.
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; pkill -TERM -P $$ -f "benchmarks[.]loadgen" 2>/dev/null; true' EXIT

# Wait for $server to write its port file; exit with its log's tail if it dies or is too slow.
await_port() {
  local label=$1 deadline=$((SECONDS + ${START_TIMEOUT:-120}))
  until [ -s "$OUT/$label.port" ]; do
    if ! kill -0 "$server" 2>/dev/null; then
      wait "$server" && status=0 || status=$?
      server=""
      echo "compare_load.sh: the $label server exited with status $status; the last lines of $OUT/$label.server.log:" >&2
      tail -15 "$OUT/$label.server.log" >&2; exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "compare_load.sh: the $label server did not answer within ${START_TIMEOUT:-120} s (START_TIMEOUT); the last lines of $OUT/$label.server.log:" >&2
      tail -15 "$OUT/$label.server.log" >&2; exit 1
    fi
    sleep 0.5
  done
}

for spec in "$@"; do
  label=${spec%%:*}; rest=${spec#*:}; tree=$(cd "${rest%%:*}" && pwd); args=""
  [[ $rest == *:* ]] && args=${rest#*:}
  rm -f "$OUT/$label.port"
  # exec: $! is the server itself, whose process tree --server-pid measures.
  (cd "$tree" && PYTHONPATH="$tree" exec $PY -m serving --models "$MODELS" ${STORE_ARGS:---data $DATA} --port 0 \
      --port-file "$OUT/$label.port" $args > "$OUT/$label.server.log" 2>&1) &
  server=$!
  await_port "$label"
  if [ -n "${PROFILE:-}" ]; then
    "$(dirname "$PY")/py-spy" record -p "$server" -o "$OUT/$label.pyspy.raw" -f raw -r 100 -d "${PROFILE_SECONDS:-25}" \
        --nonblocking --subprocesses > /dev/null 2>&1 &
  fi
  echo "== $label ($tree $args) load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  # exec: loadgen is then this script's child, which the trap finds.
  (cd "$HERE" && exec $PY -m benchmarks.loadgen --target "127.0.0.1:$(cat "$OUT/$label.port")" --data "${USERS_DATA:-$DATA}" \
      --server-pid "$server" --duration "${DURATION:-10}" --concurrency 8 --json "$OUT/$label.json" --allow-errors) \
      | tee "$OUT/$label.txt"
  kill "$server"; wait "$server" || true
  server=""
done
