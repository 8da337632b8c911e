#include "plan.h"

#include <cstring>
#include <fstream>
#include <iterator>

namespace loadgen {
namespace {

constexpr char kMagic[8] = {'V', 'S', 'L', 'G', 'P', 'L', 'A', 'N'};
constexpr uint32_t kVersion = 1;

class Reader {
 public:
  explicit Reader(const std::string& data) : data_(data) {}

  bool U32(uint32_t* out) {
    if (data_.size() - pos_ < 4) return false;
    const auto* p = reinterpret_cast<const unsigned char*>(data_.data() + pos_);
    *out = uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
    pos_ += 4;
    return true;
  }
  bool U8(uint8_t* out) {
    if (data_.size() - pos_ < 1) return false;
    *out = static_cast<uint8_t>(data_[pos_++]);
    return true;
  }
  bool Bytes(size_t n, std::string* out) {
    if (data_.size() - pos_ < n) return false;
    out->assign(data_, pos_, n);
    pos_ += n;
    return true;
  }
  bool Strings(std::vector<std::string>* out) {
    uint32_t n = 0;
    if (!U32(&n)) return false;
    out->resize(n);
    for (auto& s : *out) {
      uint32_t len = 0;
      if (!U32(&len) || !Bytes(len, &s)) return false;
    }
    return true;
  }
  bool AtEnd() const { return pos_ == data_.size(); }

 private:
  const std::string& data_;
  size_t pos_ = 0;
};

}  // namespace

bool ReadPlan(const std::string& path, Plan* plan, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = "cannot open plan file " + path;
    return false;
  }
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Reader r(data);
  std::string magic;
  uint32_t version = 0;
  if (!r.Bytes(sizeof kMagic, &magic) || std::memcmp(magic.data(), kMagic, sizeof kMagic) != 0) {
    *error = path + " is not a visionsearch-loadgen plan (no VSLGPLAN header)";
    return false;
  }
  if (!r.U32(&version) || version != kVersion) {
    *error = path + ": plan version " + std::to_string(version) + ", this engine reads version 1";
    return false;
  }
  uint32_t n_steps = 0;
  if (!r.Strings(&plan->methods) || !r.Strings(&plan->payloads) || !r.U32(&n_steps)) {
    *error = path + ": truncated plan";
    return false;
  }
  plan->steps.resize(n_steps);
  for (auto& s : plan->steps) {
    if (!r.U8(&s.kind) || !r.U32(&s.method) || !r.U32(&s.payload)) {
      *error = path + ": truncated plan";
      return false;
    }
    if (s.method >= plan->methods.size() || s.payload >= plan->payloads.size()) {
      *error = path + ": a step names a method or payload the plan does not hold";
      return false;
    }
  }
  if (!r.AtEnd()) {
    *error = path + ": trailing bytes after the plan";
    return false;
  }
  if (plan->steps.empty()) {
    *error = path + ": the plan has no requests";
    return false;
  }
  return true;
}

}  // namespace loadgen
