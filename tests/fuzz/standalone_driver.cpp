// A libFuzzer-compatible driver for compilers without libFuzzer (GCC): links with a fuzz
// target's LLVMFuzzerTestOneInput, replays the seed corpus, then runs random mutations of
// it (not coverage-guided) until a time or run limit. Build it with the sanitizers on.
//
//   fuzz_target [-max_total_time=S] [-runs=N] [-seed=N] CORPUS_DIR_OR_FILE...
//
// Before each input it records the bytes; when a sanitizer or an uncaught exception ends
// the process, the input is written to ./crash-<target>-<hash> (or $MBPO_FUZZ_ARTIFACTS)
// for a regression test. With libFuzzer (Clang) the same targets and flags apply.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <iterator>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#if defined(__has_include)
#if __has_include(<sanitizer/common_interface_defs.h>)
#include <sanitizer/common_interface_defs.h>
#define MBPO_FUZZ_HAVE_SANITIZER_API 1
#endif
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

std::vector<uint8_t> g_current;  // the input being run
std::string g_target = "target";

uint64_t fnv1a(const std::vector<uint8_t>& v) {
  uint64_t h = 1469598103934665603ull;
  for (uint8_t b : v) h = (h ^ b) * 1099511628211ull;
  return h;
}

void dump_current() {
  const char* dir = std::getenv("MBPO_FUZZ_ARTIFACTS");
  char name[64];
  std::snprintf(name, sizeof(name), "crash-%016llx", static_cast<unsigned long long>(fnv1a(g_current)));
  const std::string path = std::string(dir && *dir ? dir : ".") + "/" + g_target + "-" + name;
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    if (!g_current.empty()) std::fwrite(g_current.data(), 1, g_current.size(), f);
    std::fclose(f);
    std::fprintf(stderr, "== fuzz: the failing input (%zu bytes) is in %s\n", g_current.size(), path.c_str());
  }
}

void on_terminate() {
  std::fprintf(stderr, "== fuzz: an exception escaped the target (not a documented rejection)\n");
  if (auto e = std::current_exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      std::fprintf(stderr, "   what(): %s\n", x.what());
    } catch (...) {
    }
  }
  dump_current();
  std::abort();
}

void run_one(const std::vector<uint8_t>& input) {
  g_current = input;
  LLVMFuzzerTestOneInput(g_current.data(), g_current.size());
}

void collect(const std::string& path, std::vector<std::vector<uint8_t>>& out) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    DIR* d = ::opendir(path.c_str());
    if (!d) return;
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') names.push_back(path + "/" + e->d_name);
    }
    ::closedir(d);
    std::sort(names.begin(), names.end());
    for (const auto& n : names) collect(n, out);
    return;
  }
  std::ifstream in(path, std::ios::binary);
  out.emplace_back((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Integers that hit size checks: 0, 1, -1, powers of two around 32/63 bits, 10^12.
const uint64_t kInteresting[] = {0, 1, 2, 7, 8, 255, 0x7fffffffull, 0x80000000ull, 0xffffffffull,
                                 0x100000000ull, 1000000000000ull, 0x7fffffffffffffffull,
                                 0x8000000000000000ull, ~0ull, 0x4000000000000000ull};
const char* const kTokens[] = {"[", "]", "{", "}", ",", ":", "\"", "-1", "0", "9223372036854775807",
                               "18446744073709551616", "4294967296", "1e9", "\"F32\"", "\"I64\"",
                               "\"BF16\"", "\"shape\"", "\"dtype\"", "\"data_offsets\"", "\"__metadata\"",
                               "[[[[[[[[", "null", "\\u0000"};

void mutate(std::vector<uint8_t>& v, std::mt19937_64& rng, const std::vector<std::vector<uint8_t>>& corpus) {
  auto pick = [&](size_t n) { return n == 0 ? size_t{0} : static_cast<size_t>(rng() % n); };
  const int k = 1 + static_cast<int>(rng() % 4);
  for (int step = 0; step < k; ++step) {
    switch (rng() % 9) {
      case 0:  // flip a bit
        if (!v.empty()) v[pick(v.size())] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 1:  // random byte
        if (!v.empty()) v[pick(v.size())] = static_cast<uint8_t>(rng());
        break;
      case 2: {  // an interesting 1/2/4/8-byte little-endian integer at a random offset
        const size_t width = size_t{1} << (rng() % 4);
        if (v.size() < width) break;
        const size_t at = pick(v.size() - width + 1);
        uint64_t x = kInteresting[pick(sizeof(kInteresting) / sizeof(kInteresting[0]))];
        for (size_t i = 0; i < width; ++i, x >>= 8) v[at + i] = static_cast<uint8_t>(x);
        break;
      }
      case 3:  // truncate
        if (!v.empty()) v.resize(pick(v.size()));
        break;
      case 4: {  // erase a range
        if (v.empty()) break;
        const size_t at = pick(v.size());
        const size_t len = 1 + pick(std::min<size_t>(v.size() - at, 64));
        v.erase(v.begin() + static_cast<std::ptrdiff_t>(at), v.begin() + static_cast<std::ptrdiff_t>(at + len));
        break;
      }
      case 5: {  // insert random bytes
        const size_t at = pick(v.size() + 1);
        const size_t len = 1 + pick(16);
        std::vector<uint8_t> ins(len);
        for (auto& b : ins) b = static_cast<uint8_t>(rng());
        v.insert(v.begin() + static_cast<std::ptrdiff_t>(at), ins.begin(), ins.end());
        break;
      }
      case 6: {  // insert a JSON token (the safetensors header is text)
        const char* t = kTokens[pick(sizeof(kTokens) / sizeof(kTokens[0]))];
        const size_t at = pick(v.size() + 1);
        v.insert(v.begin() + static_cast<std::ptrdiff_t>(at), t, t + std::strlen(t));
        break;
      }
      case 7: {  // replace a run of ASCII digits by a big or negative number
        if (v.empty()) break;
        size_t at = pick(v.size());
        while (at < v.size() && !(v[at] >= '0' && v[at] <= '9')) ++at;
        if (at == v.size()) break;
        size_t end = at;
        while (end < v.size() && v[end] >= '0' && v[end] <= '9') ++end;
        const char* nums[] = {"0", "-1", "4294967296", "1000000000000", "9223372036854775807", "3037000500"};
        const char* n = nums[pick(6)];
        v.erase(v.begin() + static_cast<std::ptrdiff_t>(at), v.begin() + static_cast<std::ptrdiff_t>(end));
        v.insert(v.begin() + static_cast<std::ptrdiff_t>(at), n, n + std::strlen(n));
        break;
      }
      case 8: {  // splice with another corpus entry
        const auto& other = corpus[pick(corpus.size())];
        if (other.empty()) break;
        const size_t cut = pick(v.size() + 1), from = pick(other.size());
        v.resize(cut);
        v.insert(v.end(), other.begin() + static_cast<std::ptrdiff_t>(from), other.end());
        break;
      }
    }
  }
  if (v.size() > (size_t{1} << 20)) v.resize(size_t{1} << 20);
}

}  // namespace

int main(int argc, char** argv) {
  double max_seconds = 0;
  long long max_runs = -1;
  uint64_t seed = 0;
  std::vector<std::string> inputs;
  g_target = argv[0];
  if (const size_t slash = g_target.find_last_of('/'); slash != std::string::npos) g_target = g_target.substr(slash + 1);
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("-max_total_time=", 0) == 0) max_seconds = std::atof(a.c_str() + 16);
    else if (a.rfind("-runs=", 0) == 0) max_runs = std::atoll(a.c_str() + 6);
    else if (a.rfind("-seed=", 0) == 0) seed = std::strtoull(a.c_str() + 6, nullptr, 10);
    else if (a.rfind("-", 0) == 0) std::fprintf(stderr, "== fuzz: ignoring libFuzzer flag %s\n", a.c_str());
    else inputs.push_back(a);
  }
  std::set_terminate(on_terminate);
#ifdef MBPO_FUZZ_HAVE_SANITIZER_API
  __sanitizer_set_death_callback(dump_current);
#endif
  std::vector<std::vector<uint8_t>> corpus;
  for (const auto& p : inputs) collect(p, corpus);
  for (const auto& c : corpus) run_one(c);
  std::fprintf(stderr, "== fuzz %s: replayed %zu corpus inputs\n", g_target.c_str(), corpus.size());
  if (corpus.empty()) corpus.emplace_back();
  if (max_runs < 0 && max_seconds <= 0) return 0;  // replay only (regression mode)
  std::mt19937_64 rng(seed);
  const auto start = std::chrono::steady_clock::now();
  long long runs = 0;
  for (; max_runs < 0 || runs < max_runs; ++runs) {
    if (max_seconds > 0 && (runs & 63) == 0 &&
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >= max_seconds)
      break;
    std::vector<uint8_t> v = corpus[static_cast<size_t>(rng() % corpus.size())];
    mutate(v, rng, corpus);
    run_one(v);
  }
  std::fprintf(stderr, "== fuzz %s: %lld mutated inputs in %.1f s, no failure (seed %llu)\n", g_target.c_str(), runs,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
               static_cast<unsigned long long>(seed));
  return 0;
}
