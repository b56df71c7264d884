#!/usr/bin/env bash
# The mpi backend's figures beside raw MPI, in one run:
#   bash bench/run_mpi_bench.sh [build/bench]
# Then the raw round trip and batch_size = 1 (over one worker rank and over
# two) again, seven launches of each (their best and median ratios). It also runs bench_scaling's cases over
# 1..8 worker ranks (one mpirun per count) into <build>/mpi_scaling.txt,
# which bench_scaling adds to its plot:
#   ./build/bench/bin/bench_scaling docs/benchmarks_scaling.svg build/bench/mpi_scaling.txt
set -euo pipefail
build="${1:-build/bench}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
  OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none
raw="$(JOBLIB_MPI_TAKEOVER=0 mpirun -np 2 -x JOBLIB_MPI_TAKEOVER "$build/bin/bench_mpi" raw)"
echo "$raw"
lib="$(mpirun -np 3 "$build/bin/bench_mpi" joblib)"
echo "$lib"
rt="$(echo "$raw" | awk '/raw_round_trip/ {print $2}')"
one="$(echo "$lib" | awk '/batch_size_1_per_task/ {print $2}')"
xfer="$(echo "$raw" | awk '/raw_400MB_transfer/ {print $2}')"
arr="$(echo "$lib" | awk '/max_nbytes_none/ {print $2}')"
awk -v a="$one" -v b="$rt" 'BEGIN {printf "batch_size=1 per task / raw MPI round trip: %.1fx\n", a / b}'
# Where the scheduler and the hypervisor put the processes moves
# batch_size = 1 by up to 1.5x from one launch to the next: seven launches
# of each, alternating, then the best and the median of each. batch_size = 1
# runs in two layouts: one worker rank (two processes on two cores, as the
# raw round trip it is compared with) and two worker ranks (three processes
# on two cores: the worker ranks share a core).
rts=() ones=() twos=()
for i in 1 2 3 4 5 6 7; do
  rts+=("$(JOBLIB_MPI_TAKEOVER=0 mpirun -np 2 -x JOBLIB_MPI_TAKEOVER "$build/bin/bench_mpi" raw | awk '/raw_round_trip/ {print $2}')")
  ones+=("$(mpirun -np 2 "$build/bin/bench_mpi" batch1 | awk '/batch_size_1_per_task/ {print $2}')")
  twos+=("$(mpirun -np 3 "$build/bin/bench_mpi" batch1 | awk '/batch_size_1_per_task/ {print $2}')")
done
echo "raw round trip, 7 launches: ${rts[*]} us"
echo "batch_size=1 per task, 1 worker rank, 7 launches: ${ones[*]} us"
echo "batch_size=1 per task, 2 worker ranks, 7 launches: ${twos[*]} us"
best_and_median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[1], v[4]}'; }
read -r rt_best rt_median < <(best_and_median "${rts[@]}")
for layout in 1 2; do
  if [ "$layout" = 1 ]; then read -r b m < <(best_and_median "${ones[@]}"); else read -r b m < <(best_and_median "${twos[@]}"); fi
  awk -v a="$b" -v b="$rt_best" -v w="$layout" 'BEGIN {printf "batch_size=1 (%d worker rank%s) / raw round trip, best of 7 each: %.2f / %.3f = %.1fx\n", w, (w > 1 ? "s" : ""), a, b, a / b}'
  awk -v a="$m" -v b="$rt_median" -v w="$layout" 'BEGIN {printf "batch_size=1 (%d worker rank%s) / raw round trip, median of 7 each: %.2f / %.3f = %.1fx\n", w, (w > 1 ? "s" : ""), a, b, a / b}'
done
awk -v a="$arr" -v b="$xfer" 'BEGIN {printf "400 MB to 8 tasks (no memmap) / raw 400 MB transfer: %.1fx\n", a / b}'
sweep="$build/mpi_scaling.txt"
: > "$sweep"
for workers in 1 2 3 4 5 6 7 8; do
  mpirun -np $((workers + 1)) "$build/bin/bench_mpi" sweep >> "$sweep"
done
awk -v cpus="$(nproc)" '/^mpi_scaling/ {if ($2 == 1) t1 = $3; c = $2 < cpus ? $2 : cpus;
       printf "mpi workers %d: %7.1f ms  speedup %.2f  efficiency %.2f\n", $2, $3 * 1e3, t1 / $3, t1 / $3 / c}' "$sweep"
awk '/^mpi_cost/ {printf "mpi task %6d us: %9.2f us per task (%.0f%% of the task)\n", $2, $3, 100 * $3 / $2}' "$sweep"
