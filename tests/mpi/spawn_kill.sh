#!/usr/bin/env bash
# A program that spawned its mpi workers (started without mpirun) is killed
# with SIGKILL while they run tasks: no worker is left (Open MPI's singleton
# daemon sees the program die and ends them).
#   spawn_kill.sh <mpi_app>
set -uo pipefail
app="$1"
workers() { pgrep -f "^$app --joblib-mpi-spawned-worker" | wc -l; }
"$app" spawned_hold > /dev/null 2>&1 &
prog=$!
for i in $(seq 100); do [ "$(workers)" -ge 2 ] && break; sleep 0.1; done
n="$(workers)"
[ "$n" -ge 2 ] || { echo "FAILED: the program did not spawn its 2 workers ($n seen)"; kill -9 "$prog"; exit 1; }
echo "spawned workers: $n"
kill -9 "$prog"
wait "$prog" 2>/dev/null
for i in $(seq 100); do [ "$(workers)" -eq 0 ] && break; sleep 0.1; done
if [ "$(workers)" -ne 0 ]; then
  echo "FAILED: workers left after the program was killed: $(pgrep -af -- --joblib-mpi-spawned-worker)"
  pkill -9 -f "^$app --joblib-mpi-spawned-worker"
  exit 1
fi
echo "OK no worker left"
