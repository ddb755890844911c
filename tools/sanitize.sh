#!/usr/bin/env bash
# Sanitizer and fuzz runs of the native code (docs/reliability.md). Each mode has its own
# build directory under build/, separate from the release build; any sanitizer report,
# fuzz crash or test failure makes the script exit non-zero.
#
#   tools/sanitize.sh asan         # build/asan: ASan+UBSan core, C++ tests (ctest) and the Python
#                                  #   module; then the Python tests of the native code under it
#   tools/sanitize.sh tsan         # build/tsan: TSan core + the C++ tests that run threads
#   tools/sanitize.sh fuzz [SEC]   # build/fuzz: every fuzz target for SEC seconds (default 30),
#                                  #   then the Python checkpoint fuzzer (MBPO.resume) SEC/3 s
#   tools/sanitize.sh all [SEC]    # the three, in that order
#
# Environment: CXX picks the compiler for asan/tsan (default: c++); FUZZ_CXX the one for
# the fuzz targets (default: clang++ / clang++-14..18 when one has libFuzzer, else c++ with
# the standalone driver); JOBS the build parallelism (default: nproc).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
JOBS=${JOBS:-$(nproc)}
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
PY=${PYTHON:-python}

# Python tests that drive the native code: the pool, the file readers, inference, the
# native rollouts and trainers' ops, and the hardening tests (hostile files, limits).
ASAN_PY_TESTS=(tests/test_hardening.py tests/test_io.py tests/test_pool.py tests/test_ensemble_infer.py
               tests/test_rollout_native.py tests/test_train_ops.py)
# C++ tests that run the thread pool, concurrent Ensemble/Actor calls or concurrent rollouts.
TSAN_CPP_TESTS="test_parallel|test_actor|test_ensemble_model|test_ensemble$|test_branched_rollout|test_rollout|test_replay_pool|test_train_ops|test_sac_learner|test_ensemble_trainer|test_rng|test_termination"

# Every report is fatal (exit code != 0, also for UBSan); leaks are reported for the C++
# tests, not under Python (the interpreter does not free everything at exit).
# allocator_may_return_null: a refused huge allocation (a pool file's capacity) must be the
# bad_alloc the library reports, as without ASan, not an ASan abort.
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:abort_on_error=1:detect_leaks=1:allocator_may_return_null=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:abort_on_error=1:print_stacktrace=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:abort_on_error=1:second_deadlock_stack=1}

configure() {  # configure DIR SANITIZERS PYTHON(ON|OFF) [extra cmake args]
  local dir=$1 san=$2 python=$3
  shift 3
  local extra=()
  if [ "$python" = ON ]; then
    extra+=(-Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v "$PY")")
  fi
  cmake -S "$ROOT" -B "$dir" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
    -DMBPO_FAST_CUDA=OFF -DMBPO_FAST_SANITIZE="$san" -DMBPO_FAST_PYTHON="$python" "${extra[@]}" "$@" >/dev/null
}

run_asan() {
  local dir=build/asan
  echo "== asan: building $dir (ASan + UBSan)"
  configure "$dir" address,undefined ON
  cmake --build "$dir" -j "$JOBS"
  echo "== asan: C++ tests"
  ctest --test-dir "$dir" --output-on-failure -j "$JOBS" -E 'test_cuda_ops'
  echo "== asan: Python tests of the native code (${ASAN_PY_TESTS[*]})"
  local module
  module=$(ls "$dir"/_C*.so)
  # The ASan runtime must be the first library loaded: preload it into the interpreter.
  # libstdc++ too: ASan's __cxa_throw interceptor must find it when the runtime starts (the
  # interpreter itself does not link it), else the first C++ exception aborts.
  local preload
  preload="$("${CXX:-c++}" -print-file-name=libasan.so) $("${CXX:-c++}" -print-file-name=libstdc++.so)"
  # (test_storage_is_exactly...: measures RSS, which ASan's allocator changes.)
  ASAN_MODULE="$ROOT/$module" ASAN_PRELOAD="$preload"  # for the Python checkpoint fuzzer (mode all)
  LD_PRELOAD="$preload" MBPO_FAST_NATIVE_PATH="$ROOT/$module" MBPO_FAST_BACKEND=native \
    ASAN_OPTIONS="${ASAN_OPTIONS/detect_leaks=1/detect_leaks=0}" \
    "$PY" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning \
    -k "not test_storage_is_exactly_the_arrays" "${ASAN_PY_TESTS[@]}"
}

run_tsan() {
  local dir=build/tsan
  echo "== tsan: building $dir (ThreadSanitizer)"
  configure "$dir" thread OFF
  cmake --build "$dir" -j "$JOBS"
  echo "== tsan: C++ tests that run threads"
  ctest --test-dir "$dir" --output-on-failure -j "$JOBS" -R "$TSAN_CPP_TESTS"
}

find_fuzz_cxx() {
  if [ -n "${FUZZ_CXX:-}" ]; then echo "$FUZZ_CXX"; return; fi
  local c
  for c in clang++ clang++-18 clang++-17 clang++-16 clang++-15 clang++-14; do
    if command -v "$c" >/dev/null &&
       echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long){return 0;}' |
         "$c" -x c++ -fsanitize=fuzzer -o /dev/null - 2>/dev/null; then
      echo "$c"; return
    fi
  done
  echo "${CXX:-c++}"
}

run_fuzz() {
  local seconds=${1:-30} dir=build/fuzz cxx
  cxx=$(find_fuzz_cxx)
  echo "== fuzz: building $dir with $cxx"
  configure "$dir" address,undefined OFF -DCMAKE_CXX_COMPILER="$cxx" -DMBPO_FAST_FUZZ=ON \
    -DMBPO_FAST_BUILD_TESTS=OFF
  cmake --build "$dir" -j "$JOBS"
  local artifacts=$dir/artifacts
  mkdir -p "$artifacts"
  local target
  for target in pool_load safetensors ensemble_load actor_load checkpoint_load; do
    local corpus=tests/fuzz/corpus/$target work=$dir/corpus/$target
    # Replay the committed seeds and regression inputs, then fuzz from a scratch copy
    # (libFuzzer adds what it finds to its first directory; the committed one stays clean).
    mkdir -p "$work"
    echo "== fuzz $target: ${seconds}s"
    MBPO_FUZZ_ARTIFACTS=$artifacts ASAN_OPTIONS="${ASAN_OPTIONS/detect_leaks=1/detect_leaks=0}" \
      "$dir/tests/fuzz/fuzz_$target" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 \
      -malloc_limit_mb=2147483647 \
      -artifact_prefix="$artifacts/$target-" -seed="${FUZZ_SEED:-$RANDOM}" -print_final_stats=1 \
      "$work" "$corpus" tests/fuzz/regressions/$target 2>&1 | tail -n 25
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "== fuzz $target FAILED: inputs in $artifacts"; return 1; }
  done
  # The checkpoint loader end to end (MBPO.resume on mutated checkpoint directories, then one
  # training step): Python, so it runs the Python module; after `asan` (mode all) its ASan
  # build, so that the native readers and kernels it reaches are checked too.
  local py_seconds=$(( seconds / 3 > 5 ? seconds / 3 : 5 ))  # + ~10 s start-up and replays
  echo "== fuzz checkpoint (Python, MBPO.resume): ${py_seconds}s"
  if [ -n "${ASAN_MODULE:-}" ]; then
    LD_PRELOAD="$ASAN_PRELOAD" MBPO_FAST_NATIVE_PATH="$ASAN_MODULE" MBPO_FAST_BACKEND=native \
      ASAN_OPTIONS="${ASAN_OPTIONS/detect_leaks=1/detect_leaks=0}" \
      "$PY" tests/fuzz/fuzz_checkpoint.py --seconds "$py_seconds" --seed "${FUZZ_SEED:-$RANDOM}" \
      --artifacts "$artifacts" || { echo "== fuzz checkpoint FAILED: input in $artifacts"; return 1; }
  else
    "$PY" tests/fuzz/fuzz_checkpoint.py --seconds "$py_seconds" --seed "${FUZZ_SEED:-$RANDOM}" \
      --artifacts "$artifacts" || { echo "== fuzz checkpoint FAILED: input in $artifacts"; return 1; }
  fi
}

mode=${1:-all}
case "$mode" in
  asan) run_asan ;;
  tsan) run_tsan ;;
  fuzz) run_fuzz "${2:-30}" ;;
  all) run_asan; run_tsan; run_fuzz "${2:-30}" ;;
  *) echo "usage: $0 asan|tsan|fuzz [SECONDS]|all [SECONDS]" >&2; exit 2 ;;
esac
echo "== sanitize.sh $mode: no sanitizer report, no failure"
