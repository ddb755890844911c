// Shared by the fuzz targets: what a target may throw for a hostile input, and a scratch
// file for the readers that take a path.
//
// Each target defines LLVMFuzzerTestOneInput. A rejected input must end in one of the
// library's documented exceptions (FormatError, IoError, InvalidArgument, AllocationError);
// anything else escaping, a crash or a sanitizer report is a finding.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "mbpo_fast/common.h"

namespace mbpo_fast_fuzz {

// A per-process scratch file, rewritten with each input (the pool, ensemble and actor
// loaders read from a path, as users call them); scratch_path(slot) for targets that read
// several files. The path is never destroyed: the atexit handler that unlinks the files
// runs after the destructors of statics constructed before it was registered.
inline const std::string& scratch_path() {
  static const std::string* const path = [] {
    const char* dir = std::getenv("TMPDIR");
    auto* p = new std::string(std::string(dir && *dir ? dir : "/tmp") + "/mbpo_fast_fuzz.XXXXXX");
    const int fd = ::mkstemp(&(*p)[0]);
    if (fd < 0) {
      std::perror("mkstemp");
      std::abort();
    }
    ::close(fd);
    std::atexit([] {
      ::unlink(scratch_path().c_str());
      for (int i = 0; i < 16; ++i) ::unlink((scratch_path() + "." + std::to_string(i)).c_str());
    });
    return p;
  }();
  return *path;
}

inline std::string scratch_path(int slot) { return scratch_path() + "." + std::to_string(slot); }

inline void write_file(const std::string& path, const uint8_t* data, size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr || (size > 0 && std::fwrite(data, 1, size, f) != size) || std::fclose(f) != 0) {
    std::perror("write scratch file");
    std::abort();
  }
}

inline const std::string& write_scratch(const uint8_t* data, size_t size) {
  write_file(scratch_path(), data, size);
  return scratch_path();
}

// Runs `body`; the library's own exceptions are the expected way to reject an input.
template <typename Body>
void expect_clean_rejection(Body&& body) {
  try {
    body();
  } catch (const mbpo_fast::FormatError&) {
  } catch (const mbpo_fast::IoError&) {
  } catch (const mbpo_fast::InvalidArgument&) {
  } catch (const mbpo_fast::AllocationError&) {
  }
}

}  // namespace mbpo_fast_fuzz
