#!/usr/bin/env bash
# joblib-cpp set-up: installs what is missing (Debian 12, as root), builds,
# and runs either the demo or every test.
#   bash scripts/run.sh demo    # install, build, run the demo
#   bash scripts/run.sh test    # install, build, run every test (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-demo}"

packages=(
  cmake ninja-build g++ pkg-config
  libboost1.81-dev libtbb-dev libopenmpi-dev openmpi-bin
  libcereal-dev libtomlplusplus-dev libfmt-dev
  libzstd-dev liblz4-dev zlib1g-dev libbz2-dev liblzma-dev libxxhash-dev libzip-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-14-dev clang-16
  iproute2
)
# The interop tests check .npy/.npz files and Python joblib's own files
# against Debian's numpy, joblib and lz4 themselves.
if [[ "$mode" == test ]]; then packages+=(python3-numpy python3-joblib python3-lz4); fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "== installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

jobs=2
case "$mode" in
  demo)
    cmake -S . -B build/demo -G Ninja -DCMAKE_BUILD_TYPE=Release -DJOBLIB_BUILD_TESTS=OFF
    cmake --build build/demo -j "$jobs" --target joblib_demo
    ./build/demo/bin/joblib_demo
    ;;
  test)
    cmake -S . -B build/test -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DJOBLIB_BUILD_TESTS=ON
    cmake --build build/test -j "$jobs"
    (cd build/test && ctest --output-on-failure -j "$jobs" --timeout 600)
    # The load() fuzzer (clang, libFuzzer, ASan+UBSan), for a bounded time.
    bash scripts/run_fuzz.sh 60
    ;;
  *)
    echo "usage: $0 demo|test" >&2
    exit 2
    ;;
esac
