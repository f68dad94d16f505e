#!/usr/bin/env bash
# Load-test servers built from different checkouts, one after the other, in one session.
#
#   benchmarks/compare_load.sh OUTDIR LABEL:CHECKOUT[:SERVER ARGS] ...
#   e.g. MODELS=/tmp/b20/models DATA=/tmp/b20/data PROFILE=1 \
#        benchmarks/compare_load.sh /tmp/cmp "old:/path/to/old-checkout:--threads 8" "new:.:--threads 2"
#
# Each server imports its own checkout (PYTHONPATH) and serves MODELS over a memory store
# of DATA (or STORE=redis://...); the load generator of this checkout runs its three
# phases against it (DURATION seconds each). PROFILE=1 records py-spy samples of the
# server into OUTDIR/LABEL.pyspy.raw. Ratios between rows are what to compare: the
# machine is shared.
set -euo pipefail
OUT=$1; shift; mkdir -p "$OUT"
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$HERE/.venv/bin/python}
STORE_ARGS=${STORE:+--store $STORE}
for spec in "$@"; do
  label=${spec%%:*}; rest=${spec#*:}; tree=$(cd "${rest%%:*}" && pwd); args=""
  [[ $rest == *:* ]] && args=${rest#*:}
  rm -f "$OUT/$label.port"
  (cd "$tree" && PYTHONPATH="$tree" exec $PY -m serving --models "$MODELS" ${STORE_ARGS:---data $DATA} --port 0 \
      --port-file "$OUT/$label.port" $args > "$OUT/$label.server.log" 2>&1) &
  server=$!
  for _ in $(seq 1 900); do [ -f "$OUT/$label.port" ] && break; sleep 1; done
  if [ -n "${PROFILE:-}" ]; then
    "$(dirname "$PY")/py-spy" record -p "$server" -o "$OUT/$label.pyspy.raw" -f raw -r 100 -d "${PROFILE_SECONDS:-25}" \
        --nonblocking --subprocesses > /dev/null 2>&1 &
  fi
  echo "== $label ($tree $args) load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  (cd "$HERE" && $PY -m benchmarks.loadgen --target "127.0.0.1:$(cat "$OUT/$label.port")" --data "${USERS_DATA:-$DATA}" \
      --duration "${DURATION:-10}" --concurrency 8 --json "$OUT/$label.json" --allow-errors) | tail -6
  kill "$server"; wait "$server" || true
done
