#include "mbpo_fast/safetensors.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

namespace mbpo_fast {

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) os << ", ";
    if (shape[i] < 0) os << "*"; else os << shape[i];
  }
  if (shape.size() == 1) os << ",";
  os << ")";
  return os.str();
}

namespace {

constexpr uint64_t kMaxHeader = 100ull * 1024 * 1024;
// Deepest JSON nesting the header may have (tensor entries need 3 levels; skipped values
// of unknown keys may nest further). The reader recurses, so this bounds its stack.
constexpr int kMaxJsonDepth = 64;
// Most dimensions a tensor may have (its extents are parsed into memory first).
constexpr size_t kMaxRank = 64;

// A minimal JSON reader for the safetensors header: objects, arrays, strings, integers
// (and, for robustness, true/false/null and plain numbers in metadata-free places).
class JsonReader {
 public:
  JsonReader(const char* begin, const char* end, const std::string& source)
      : p_(begin), end_(end), source_(source) {}

  [[noreturn]] void fail(const std::string& why) const {
    throw FormatError(source_ + ": not a valid safetensors file (header JSON: " + why + ")");
  }

  void ws() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_;
  }
  bool peek(char c) {
    ws();
    return p_ < end_ && *p_ == c;
  }
  void expect(char c) {
    ws();
    if (p_ >= end_ || *p_ != c) fail(std::string("expected '") + c + "'");
    ++p_;
  }
  bool at_end() {
    ws();
    return p_ >= end_;
  }

  std::string string() {
    expect('"');
    std::string out;
    while (p_ < end_ && *p_ != '"') {
      char c = *p_++;
      if (c == '\\') {
        if (p_ >= end_) fail("unterminated escape");
        const char e = *p_++;
        switch (e) {
          case '"': case '\\': case '/': out += e; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'n': out += '\n'; break;
          case 'r': out += '\r'; break;
          case 't': out += '\t'; break;
          case 'u': {
            if (end_ - p_ < 4) fail("short \\u escape");
            unsigned code = 0;
            for (int i = 0; i < 4; ++i) {
              const char h = *p_++;
              code <<= 4;
              if (h >= '0' && h <= '9') code |= static_cast<unsigned>(h - '0');
              else if (h >= 'a' && h <= 'f') code |= static_cast<unsigned>(h - 'a' + 10);
              else if (h >= 'A' && h <= 'F') code |= static_cast<unsigned>(h - 'A' + 10);
              else fail("bad \\u escape");
            }
            // UTF-8 encode (surrogate pairs are kept as two code units: names are ASCII).
            if (code < 0x80) {
              out += static_cast<char>(code);
            } else if (code < 0x800) {
              out += static_cast<char>(0xC0 | (code >> 6));
              out += static_cast<char>(0x80 | (code & 0x3F));
            } else {
              out += static_cast<char>(0xE0 | (code >> 12));
              out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
              out += static_cast<char>(0x80 | (code & 0x3F));
            }
            break;
          }
          default: fail("bad escape");
        }
      } else {
        out += c;
      }
    }
    if (p_ >= end_) fail("unterminated string");
    ++p_;
    return out;
  }

  int64_t integer() {
    ws();
    bool neg = false;
    if (p_ < end_ && *p_ == '-') { neg = true; ++p_; }
    if (p_ >= end_ || *p_ < '0' || *p_ > '9') fail("expected an integer");
    uint64_t v = 0;
    while (p_ < end_ && *p_ >= '0' && *p_ <= '9') {
      const uint64_t d = static_cast<uint64_t>(*p_++ - '0');
      if (v > (static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) - d) / 10) fail("integer overflow");
      v = v * 10 + d;
    }
    if (p_ < end_ && (*p_ == '.' || *p_ == 'e' || *p_ == 'E')) fail("expected an integer, got a fraction");
    return neg ? -static_cast<int64_t>(v) : static_cast<int64_t>(v);
  }

  std::vector<int64_t> int_array(size_t max_len) {
    std::vector<int64_t> out;
    expect('[');
    if (peek(']')) { ++p_; return out; }
    for (;;) {
      if (out.size() == max_len) fail("array longer than " + std::to_string(max_len));
      out.push_back(integer());
      if (peek(',')) { ++p_; continue; }
      expect(']');
      return out;
    }
  }

  // Skips any JSON value (used for unknown keys), at most kMaxJsonDepth levels deep.
  void skip_value(int depth = 0) {
    ws();
    if (p_ >= end_) fail("unexpected end");
    if (depth >= kMaxJsonDepth) fail("nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    const char c = *p_;
    if (c == '"') { string(); return; }
    if (c == '{' || c == '[') {
      const char close = c == '{' ? '}' : ']';
      ++p_;
      if (peek(close)) { ++p_; return; }
      for (;;) {
        if (c == '{') { string(); expect(':'); }
        skip_value(depth + 1);
        if (peek(',')) { ++p_; continue; }
        expect(close);
        return;
      }
    }
    // number / true / false / null
    const char* start = p_;
    while (p_ < end_ && (std::isalnum(static_cast<unsigned char>(*p_)) || *p_ == '-' || *p_ == '+' || *p_ == '.')) ++p_;
    if (p_ == start) fail("unexpected character");
  }

 private:
  const char* p_;
  const char* end_;
  const std::string& source_;
};

bool parse_dtype(const std::string& s, DType& out) {
  static const std::pair<const char*, DType> table[] = {
      {"F32", DType::kF32}, {"F64", DType::kF64}, {"I64", DType::kI64}, {"I32", DType::kI32},
      {"U8", DType::kU8},   {"BOOL", DType::kBool}, {"U16", DType::kU16}, {"BF16", DType::kBF16}};
  for (const auto& [name, dtype] : table) {
    if (s == name) { out = dtype; return true; }
  }
  return false;
}

}  // namespace

int dtype_size(DType dtype) noexcept {
  switch (dtype) {
    case DType::kF64: case DType::kI64: return 8;
    case DType::kF32: case DType::kI32: return 4;
    case DType::kU16: case DType::kBF16: return 2;
    case DType::kU8: case DType::kBool: return 1;
  }
  return 1;
}

const char* dtype_name(DType dtype) noexcept {
  switch (dtype) {
    case DType::kF32: return "F32";
    case DType::kF64: return "F64";
    case DType::kI64: return "I64";
    case DType::kI32: return "I32";
    case DType::kU8: return "U8";
    case DType::kBool: return "BOOL";
    case DType::kU16: return "U16";
    case DType::kBF16: return "BF16";
  }
  return "?";
}

int64_t TensorInfo::numel() const noexcept {
  // Only called on parsed tensors, whose byte size parse() checked to fit in int64.
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

SafetensorsFile SafetensorsFile::read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open file for reading");
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw IoError(path + ": read error");
  return parse(std::move(bytes), path);
}

SafetensorsFile SafetensorsFile::parse(std::vector<uint8_t> bytes, const std::string& source) {
  auto bad = [&](const std::string& why) {
    return FormatError(source + ": not a valid safetensors file (" + why + ")");
  };
  SafetensorsFile f;
  f.source_ = source;
  f.bytes_ = std::move(bytes);
  const uint64_t size = f.bytes_.size();
  if (size < 8) throw bad("file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | f.bytes_[static_cast<size_t>(i)];
  if (n > kMaxHeader || n > size - 8) {
    throw bad("header length " + std::to_string(n) + " exceeds the file size " + std::to_string(size) + " (truncated?)");
  }
  f.data_start_ = 8 + n;
  const char* h = reinterpret_cast<const char*>(f.bytes_.data()) + 8;
  JsonReader json(h, h + n, source);
  json.expect('{');
  const uint64_t data_size = size - f.data_start_;
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  if (!json.peek('}')) {
    for (;;) {
      const std::string key = json.string();
      json.expect(':');
      if (key == "__metadata__") {
        json.expect('{');
        if (!json.peek('}')) {
          for (;;) {
            const std::string k = json.string();
            json.expect(':');
            f.metadata_[k] = json.string();
            if (json.peek(',')) { json.expect(','); continue; }
            break;
          }
        }
        json.expect('}');
      } else {
        TensorInfo info{};
        bool has_dtype = false, has_shape = false, has_offsets = false;
        json.expect('{');
        if (!json.peek('}')) {
          for (;;) {
            const std::string field = json.string();
            json.expect(':');
            if (field == "dtype") {
              const std::string d = json.string();
              if (!parse_dtype(d, info.dtype)) throw bad("tensor '" + key + "' has unsupported dtype " + d);
              has_dtype = true;
            } else if (field == "shape") {
              info.shape = json.int_array(kMaxRank);
              has_shape = true;
            } else if (field == "data_offsets") {
              const auto off = json.int_array(2);
              if (off.size() != 2 || off[0] < 0 || off[1] < off[0]) throw bad("tensor '" + key + "' has bad data_offsets");
              info.begin = static_cast<uint64_t>(off[0]);
              info.end = static_cast<uint64_t>(off[1]);
              has_offsets = true;
            } else {
              json.skip_value();
            }
            if (json.peek(',')) { json.expect(','); continue; }
            break;
          }
        }
        json.expect('}');
        if (!has_dtype || !has_shape || !has_offsets) throw bad("tensor '" + key + "' lacks dtype, shape or data_offsets");
        for (int64_t s : info.shape) if (s < 0) throw bad("tensor '" + key + "' has a negative extent");
        // Byte size with overflow checks: a shape whose product does not fit cannot match
        // any file (and would wrap to a small number that could).
        int64_t expected_bytes = dtype_size(info.dtype);
        for (int64_t s : info.shape) {
          if (__builtin_mul_overflow(expected_bytes, s, &expected_bytes)) {
            throw bad("tensor '" + key + "': shape " + shape_string(info.shape) + " of " + dtype_name(info.dtype) +
                      " has more than 2**63 bytes");
          }
        }
        const uint64_t expected = static_cast<uint64_t>(expected_bytes);
        if (info.end - info.begin != expected) {
          throw bad("tensor '" + key + "': offsets " + std::to_string(info.begin) + ".." + std::to_string(info.end) +
                    " do not match shape " + shape_string(info.shape) + " of " + dtype_name(info.dtype));
        }
        if (info.end > data_size) {
          throw bad("tensor '" + key + "' ends at byte " + std::to_string(info.end) + " but the data section has " +
                    std::to_string(data_size) + " bytes (truncated?)");
        }
        spans.emplace_back(info.begin, info.end);
        if (!f.tensors_.emplace(key, std::move(info)).second) throw bad("tensor '" + key + "' appears twice");
      }
      if (json.peek(',')) { json.expect(','); continue; }
      break;
    }
  }
  json.expect('}');
  if (!json.at_end()) throw bad("unexpected bytes after the header object");
  std::sort(spans.begin(), spans.end());
  uint64_t covered = 0;
  for (const auto& [b, e] : spans) {
    if (b != covered) throw bad("tensor data overlaps or leaves gaps");
    covered = e;
  }
  if (covered != data_size) throw bad(std::to_string(data_size - covered) + " trailing bytes after the last tensor");
  return f;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw FormatError(source_ + ": missing tensor '" + name + "'");
  return it->second;
}

const TensorInfo& SafetensorsFile::checked(const std::string& name, DType dtype,
                                           const std::vector<int64_t>& expected_shape) const {
  const TensorInfo& t = info(name);
  bool ok = t.shape.size() == expected_shape.size();
  for (size_t i = 0; ok && i < t.shape.size(); ++i) ok = expected_shape[i] < 0 || expected_shape[i] == t.shape[i];
  if (!ok || t.dtype != dtype) {
    throw FormatError(source_ + ": tensor '" + name + "' expected shape " + shape_string(expected_shape) + " " +
                      dtype_name(dtype) + ", got " + shape_string(t.shape) + " " + dtype_name(t.dtype));
  }
  return t;
}

std::vector<float> SafetensorsFile::f32(const std::string& name, const std::vector<int64_t>& expected_shape) const {
  const TensorInfo& t = checked(name, DType::kF32, expected_shape);
  std::vector<float> out(static_cast<size_t>(t.numel()));
  if (!out.empty()) std::memcpy(out.data(), bytes_.data() + data_start_ + t.begin, out.size() * sizeof(float));
  return out;  // little-endian host assumed (x86-64 / aarch64)
}

std::vector<int64_t> SafetensorsFile::i64(const std::string& name, const std::vector<int64_t>& expected_shape) const {
  const TensorInfo& t = checked(name, DType::kI64, expected_shape);
  std::vector<int64_t> out(static_cast<size_t>(t.numel()));
  if (!out.empty()) std::memcpy(out.data(), bytes_.data() + data_start_ + t.begin, out.size() * sizeof(int64_t));
  return out;
}

const std::string& SafetensorsFile::metadata(const std::string& key) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) throw FormatError(source_ + ": missing metadata key '" + key + "'");
  return it->second;
}

int64_t SafetensorsFile::metadata_int(const std::string& key) const {
  const std::string& v = metadata(key);
  size_t used = 0;
  long long parsed = 0;
  try {
    parsed = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || v.empty()) {
    throw FormatError(source_ + ": metadata '" + key + "' is not an integer: '" + v + "'");
  }
  return static_cast<int64_t>(parsed);
}

}  // namespace mbpo_fast
