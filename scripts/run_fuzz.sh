#!/usr/bin/env bash
# Fuzzes joblib::load, then joblib::load_python and joblib::load_npz, each
# for a bounded time.
#
#   scripts/run_fuzz.sh [seconds]        (default 60)
#
# Configures the "fuzz" build (clang, libFuzzer, ASan + UBSan, the library
# instrumented) in its own directory, build/fuzz (or $JOBLIB_FUZZ_BUILD_DIR),
# builds joblib_load_fuzzer and joblib_python_fuzzer and runs each on a
# copy of its seeds (tests/fuzz/corpus, tests/fuzz/python_corpus) for the
# given time. Exits non-zero, leaving the crashing input under
# <build>/fuzz-artifacts/, if any input crashes, hangs (10 s), leaks or
# needs more than 2 GiB.
set -euo pipefail

budget=${1:-60}
case $budget in
  '' | *[!0-9]*) echo "usage: $0 [seconds]" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${JOBLIB_FUZZ_BUILD_DIR:-$root/build/fuzz}

command -v clang++ >/dev/null || { echo "run_fuzz.sh: clang++ is needed (apt-get install clang)" >&2; exit 2; }
if ! ls "$(clang++ -print-runtime-dir)"/libclang_rt.fuzzer*.a >/dev/null 2>&1; then
  echo "run_fuzz.sh: libFuzzer's runtime is missing (apt-get install libclang-rt-14-dev, or the package" \
       "matching $(clang++ --version | head -1))" >&2
  exit 2
fi

cmake -S "$root" -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DJOBLIB_BUILD_FUZZ=ON -DJOBLIB_BUILD_TESTS=ON -DJOBLIB_BUILD_EXAMPLES=OFF -DJOBLIB_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" --target joblib_load_fuzzer joblib_python_fuzzer -j "${JOBLIB_FUZZ_JOBS:-2}"

work=$(mktemp -d "${TMPDIR:-/tmp}/joblib-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$build/fuzz-artifacts"
# joblib::load (its seeds: tests/fuzz/corpus), then joblib::load_python and
# joblib::load_npz (tests/fuzz/python_corpus), each for the budget.
for target in load:corpus python:python_corpus; do
  name=${target%%:*}
  seeds=${target#*:}
  mkdir -p "$work/$seeds"
  cp "$root"/tests/fuzz/"$seeds"/* "$work/$seeds/"
  echo "fuzzing joblib_${name}_fuzzer for ${budget} s ($(ls "$work/$seeds" | wc -l) seeds)"
  JOBLIB_FUZZ_SCRATCH_DIR="$work" \
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
  "$build/bin/joblib_${name}_fuzzer" \
    -max_total_time="$budget" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$build/fuzz-artifacts/${name}-" \
    "$work/$seeds"
done
