#include "compiler/calibrate.h"

#include <algorithm>
#include <cmath>
#include <fstream>

#include "core/error.h"
#include "core/json.h"
#include "runtime/model.h"

namespace kiln {

std::vector<std::vector<int32_t>> read_calibration_sequences(const std::string& path, int64_t vocab_size,
                                                             int64_t max_len) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open calibration file");
  std::vector<std::vector<int32_t>> out;
  std::string line;
  for (int line_no = 1; std::getline(in, line); ++line_no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(line_no);
    Json j;
    try {
      j = Json::parse(line);
    } catch (const Json::exception& e) {
      throw Error(where + ": not JSON: " + e.what());
    }
    if (!j.is_array() || j.empty()) throw Error(where + ": expected a non-empty JSON array of token ids");
    std::vector<int32_t> seq;
    for (const auto& v : j) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab_size) {
        throw Error(where + ": token id " + v.dump() + " is not in [0, " + std::to_string(vocab_size) + ")");
      }
      seq.push_back(v.get<int32_t>());
    }
    if (static_cast<int64_t>(seq.size()) > max_len) seq.resize(static_cast<size_t>(max_len));
    out.push_back(std::move(seq));
  }
  if (out.empty()) throw Error(path + ": calibration file has no sequences");
  return out;
}

namespace {

class AmaxObserver final : public ActivationObserver {
 public:
  void observe(const std::string& weight, const float* x, int64_t count) override {
    float& amax = amax_[weight];
    for (int64_t i = 0; i < count; ++i) amax = std::max(amax, std::fabs(x[i]));
  }
  std::map<std::string, float> take() { return std::move(amax_); }

 private:
  std::map<std::string, float> amax_;
};

}  // namespace

std::map<std::string, float> calibrate_input_amax(std::shared_ptr<const Engine> engine,
                                                  const std::vector<std::vector<int32_t>>& sequences, ThreadPool& pool,
                                                  const std::function<void(size_t, size_t)>& on_sequence) {
  Model model(std::move(engine), pool);
  AmaxObserver observer;
  std::vector<float> logits(static_cast<size_t>(model.config().vocab_size));
  for (size_t i = 0; i < sequences.size(); ++i) {
    auto sequence = model.new_single_sequence();
    const auto& seq = sequences[i];
    model.forward(seq.data(), static_cast<int64_t>(seq.size()), 0, sequence, logits.data(), &observer);
    if (on_sequence) on_sequence(i + 1, sequences.size());
  }
  return observer.take();
}

}  // namespace kiln
