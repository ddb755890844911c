// TerminationModel (learned termination, issue 16) from C++: load() on files in the layout
// mf.TerminationModel.save writes, the logits against a float64 reference MLP on fresh random
// inputs, the rollout callback, and clear FormatErrors for every kind of bad file.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "harness.h"
#include "mbpo_fast/common.h"
#include "mbpo_fast/termination_model.h"
#include "safetensors_writer.h"

using namespace mbpo_fast;
using namespace mbpo_fast_test;

namespace {

struct Spec {
  int64_t obs_dim, act_dim;
  std::vector<int64_t> hidden;  // hidden widths; the last layer has width 1
};

// Random non-zero parameters of a model with the given sizes, in the file's tensor names.
struct Params {
  Spec spec;
  std::vector<int64_t> widths;
  std::vector<float> mean, stdv;
  std::vector<std::vector<float>> w, b;
};

Params random_params(const Spec& s, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::uniform_real_distribution<float> pos(0.5f, 2.0f);
  Params p{s, {2 * s.obs_dim + s.act_dim}, {}, {}, {}, {}};
  for (int64_t h : s.hidden) p.widths.push_back(h);
  p.widths.push_back(1);
  for (int64_t i = 0; i < p.widths[0]; ++i) {
    p.mean.push_back(0.3f * n01(gen));
    p.stdv.push_back(pos(gen));
  }
  for (size_t l = 0; l + 1 < p.widths.size(); ++l) {
    const float scale = 1.0f / std::sqrt(static_cast<float>(p.widths[l]));
    std::vector<float> w(static_cast<size_t>(p.widths[l] * p.widths[l + 1])), b(static_cast<size_t>(p.widths[l + 1]));
    for (auto& x : w) x = scale * n01(gen);
    for (auto& x : b) x = 0.1f * n01(gen);
    p.w.push_back(std::move(w));
    p.b.push_back(std::move(b));
  }
  return p;
}

std::map<std::string, StTensor> tensors_of(const Params& p) {
  std::map<std::string, StTensor> t;
  t["input_mean"] = st_f32({p.widths[0]}, p.mean);
  t["input_std"] = st_f32({p.widths[0]}, p.stdv);
  for (size_t l = 0; l < p.w.size(); ++l) {
    t["layers." + std::to_string(l) + ".weight"] = st_f32({p.widths[l], p.widths[l + 1]}, p.w[l]);
    t["layers." + std::to_string(l) + ".bias"] = st_f32({p.widths[l + 1]}, p.b[l]);
  }
  return t;
}

std::map<std::string, std::string> meta_of(const Params& p) {
  return {{"format", "mbpo_fast.termination_model/1"},
          {"obs_dim", std::to_string(p.spec.obs_dim)},
          {"act_dim", std::to_string(p.spec.act_dim)},
          {"num_layers", std::to_string(p.w.size())},
          {"activation", "silu"}};
}

std::string temp_path(const std::string& name) {
  return "test_termination_model_" + name + ".safetensors";  // in ctest's working directory
}

// The reference: float64 arithmetic on the same float32 parameters.
double reference_logit(const Params& p, const float* o, const float* a, const float* nx) {
  const int64_t od = p.spec.obs_dim, ad = p.spec.act_dim;
  std::vector<double> h;
  for (int64_t j = 0; j < od; ++j) h.push_back(o[j]);
  for (int64_t j = 0; j < ad; ++j) h.push_back(a[j]);
  for (int64_t j = 0; j < od; ++j) h.push_back(nx[j]);
  for (size_t j = 0; j < h.size(); ++j) h[j] = (h[j] - p.mean[j]) / p.stdv[j];
  for (size_t l = 0; l < p.w.size(); ++l) {
    const int64_t in = p.widths[l], out = p.widths[l + 1];
    std::vector<double> g(static_cast<size_t>(out));
    for (int64_t k = 0; k < out; ++k) {
      double s = p.b[l][static_cast<size_t>(k)];
      for (int64_t i = 0; i < in; ++i) s += h[static_cast<size_t>(i)] * p.w[l][static_cast<size_t>(i * out + k)];
      g[static_cast<size_t>(k)] = l + 1 < p.w.size() ? s / (1.0 + std::exp(-s)) : s;
    }
    h = std::move(g);
  }
  return h[0];
}

bool throws_format_error_mentioning(const std::string& path, const std::string& needle) {
  try {
    (void)TerminationModel::load(path);
  } catch (const FormatError& e) {
    const std::string msg = e.what();
    if (msg.find(needle) == std::string::npos) {
      std::fprintf(stderr, "  message without '%s': %s\n", needle.c_str(), msg.c_str());
      return false;
    }
    return msg.find(path) != std::string::npos;  // names the file
  } catch (...) {
    return false;
  }
  return false;
}

}  // namespace

TEST_CASE("load + termination_mlp match a float64 reference on random inputs, varied shapes") {
  const std::vector<Spec> specs{{11, 3, {64, 64}}, {17, 6, {200, 200, 200}}, {1, 1, {5}}, {4, 0, {33}},
                                {3, 2, {}}};
  uint32_t seed = 1;
  for (const Spec& s : specs) {
    const Params p = random_params(s, seed++);
    const std::string path = temp_path("ok" + std::to_string(seed));
    write_safetensors(path, tensors_of(p), meta_of(p));
    const TerminationModel m = TerminationModel::load(path);
    CHECK(m.obs_dim() == s.obs_dim);
    CHECK(m.act_dim() == s.act_dim);
    for (int64_t n : {1, 7, 300, 5000}) {  // 5000: the threaded branch
      std::mt19937 gen(seed * 100 + static_cast<uint32_t>(n));
      std::normal_distribution<float> n01(0.0f, 1.0f);
      std::vector<float> o(static_cast<size_t>(n * s.obs_dim)), a(static_cast<size_t>(n * s.act_dim)),
          nx(static_cast<size_t>(n * s.obs_dim));
      for (auto* v : {&o, &a, &nx})
        for (auto& x : *v) x = n01(gen);
      std::vector<uint8_t> out(static_cast<size_t>(n), 7);
      std::vector<float> logits(static_cast<size_t>(n));
      termination_mlp(m.view(), o.data(), a.data(), nx.data(), n, out.data(), logits.data());
      std::vector<uint8_t> via_callback(static_cast<size_t>(n), 7);
      m.callback()(o.data(), a.data(), nx.data(), n, via_callback.data());
      int positives = 0;
      for (int64_t r = 0; r < n; ++r) {
        // (data() + offset, not &v[i]: with act_dim 0 the act vector is empty)
        const double ref = reference_logit(p, o.data() + r * s.obs_dim, a.data() + r * s.act_dim,
                                           nx.data() + r * s.obs_dim);
        CHECK_NEAR(logits[static_cast<size_t>(r)], ref, 1e-4 * (1.0 + std::fabs(ref)));
        CHECK(out[static_cast<size_t>(r)] == (logits[static_cast<size_t>(r)] > 0.0f ? 1 : 0));
        CHECK(via_callback[static_cast<size_t>(r)] == out[static_cast<size_t>(r)]);
        positives += out[static_cast<size_t>(r)];
      }
      if (n >= 300) CHECK(positives > 0 && positives < n);  // the inputs exercise both classes
    }
    std::remove(path.c_str());
  }
}

TEST_CASE("bad files give a FormatError that names the file and the problem") {
  const Params p = random_params({11, 3, {16, 16}}, 42);
  const std::string path = temp_path("bad");
  auto write = [&](std::map<std::string, StTensor> t, std::map<std::string, std::string> m) {
    write_safetensors(path, t, m);
  };

  // One metadata entry changed (value nullptr: removed) -> a FormatError naming `expected`.
  struct MetaCase {
    const char *key, *value, *expected;
  };
  const MetaCase meta_cases[] = {
      {"format", "mbpo_fast.ensemble/1", "format"},
      {"format", nullptr, "format"},
      {"activation", "tanh", "activation"},
      {"num_layers", "2", "more layers"},      // the file holds 3
      {"num_layers", "4", "layers.3.weight"},  // one more than the file holds
      {"num_layers", "17", "num_layers"},
      {"obs_dim", "0", "obs_dim"},
      {"act_dim", "three", "act_dim"},
      {"obs_dim", "12", "layers.0.weight"},  // the input width no longer matches layer 0 and the normalizer
  };
  for (const MetaCase& c : meta_cases) {
    auto meta = meta_of(p);
    if (c.value == nullptr) {
      meta.erase(c.key);
    } else {
      meta[c.key] = c.value;
    }
    write(tensors_of(p), meta);
    if (!throws_format_error_mentioning(path, c.expected)) {
      fail(__FILE__, __LINE__, std::string("metadata ") + c.key + " = " + (c.value ? c.value : "(removed)") +
                                   ": expected a FormatError mentioning '" + c.expected + "'");
    }
  }

  // One tensor replaced (or removed) -> a FormatError naming it.
  struct TensorCase {
    const char* name;
    bool remove;
    StTensor tensor;
    const char* why;
  };
  const TensorCase tensor_cases[] = {
      {"input_std", true, {}, "missing"},
      {"layers.1.bias", false, st_f32({15}, std::vector<float>(15, 0.1f)), "wrong width"},
      {"layers.2.weight", false, st_f32({16, 2}, std::vector<float>(32, 0.1f)), "the last layer must be 1 wide"},
      {"input_std", false, st_f32({25}, std::vector<float>(25, 0.0f)), "std must be > 0"},
      {"input_mean", false, st_i64(std::vector<int64_t>(25, 1)), "wrong dtype"},
  };
  for (const TensorCase& c : tensor_cases) {
    auto t = tensors_of(p);
    if (c.remove) {
      t.erase(c.name);
    } else {
      t[c.name] = c.tensor;
    }
    write(t, meta_of(p));
    if (!throws_format_error_mentioning(path, c.name)) {
      fail(__FILE__, __LINE__, std::string("tensor ") + c.name + " (" + c.why + "): expected a FormatError naming it");
    }
  }

  // truncated: every prefix of a good file is refused (never a crash or a partial model)
  write(tensors_of(p), meta_of(p));
  std::string bytes;
  {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    CHECK(f != nullptr);
    char buf[4096];
    size_t k;
    while ((k = std::fread(buf, 1, sizeof buf, f)) > 0) bytes.append(buf, k);
    std::fclose(f);
  }
  CHECK(TerminationModel::load(path).obs_dim() == 11);
  for (size_t cut : {size_t{0}, size_t{5}, size_t{8}, size_t{40}, bytes.size() / 2, bytes.size() - 1}) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    std::fwrite(bytes.data(), 1, cut, f);
    std::fclose(f);
    bool format_error = false;
    try {
      (void)TerminationModel::load(path);
    } catch (const FormatError&) {
      format_error = true;
    }
    CHECK(format_error);
  }
  std::remove(path.c_str());

  bool io_error = false;
  try {
    (void)TerminationModel::load(temp_path("does_not_exist"));
  } catch (const IoError&) {
    io_error = true;
  }
  CHECK(io_error);
}

MBPO_TEST_MAIN
