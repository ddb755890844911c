# Sanitizer builds (see docs/reliability.md and tools/sanitize.sh).
#   -DMBPO_FAST_SANITIZE=address,undefined   ASan + UBSan: core, C++ tests, Python module
#   -DMBPO_FAST_SANITIZE=thread              TSan: core and C++ tests
# Any report aborts the program (-fno-sanitize-recover), so a test that triggers one fails.
# Use a separate build directory per sanitizer; never mix with a release build.
set(MBPO_FAST_SANITIZE "" CACHE STRING "Sanitizers to build with: empty, 'address,undefined' or 'thread'")
if(MBPO_FAST_SANITIZE)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    message(FATAL_ERROR "MBPO_FAST_SANITIZE needs GCC or Clang, got ${CMAKE_CXX_COMPILER_ID}")
  endif()
  if(MBPO_FAST_SANITIZE MATCHES "thread" AND MBPO_FAST_SANITIZE MATCHES "address")
    message(FATAL_ERROR "MBPO_FAST_SANITIZE: 'thread' cannot be combined with 'address'")
  endif()
  set(_san_flags -fsanitize=${MBPO_FAST_SANITIZE} -fno-sanitize-recover=all -fno-omit-frame-pointer -g)
  # Host code only: nvcc does not take these flags.
  add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:${_san_flags}>")
  add_link_options(-fsanitize=${MBPO_FAST_SANITIZE})
  message(STATUS "mbpo_fast: sanitizers ${MBPO_FAST_SANITIZE}")
endif()

# Fuzz targets (tests/fuzz): with Clang they link libFuzzer; otherwise a small standalone
# driver (tests/fuzz/standalone_driver.cpp) replays the seed corpus and runs time-boxed
# random mutations. Meant for a sanitizer build directory.
option(MBPO_FAST_FUZZ "Build the fuzz targets under tests/fuzz" OFF)
