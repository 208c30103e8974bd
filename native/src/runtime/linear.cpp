#include "runtime/linear.h"

#include "core/error.h"

namespace kiln {

namespace {

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

const float* f32_vector(const Engine& e, const std::string& name, int64_t length) {
  const TensorView& t = e.tensor(name);
  if (t.dtype != DType::F32 || t.shape != std::vector<int64_t>{length}) {
    throw Error(e.source() + ": tensor " + name + " must be f32 [" + std::to_string(length) + "], is " +
                dtype_name(t.dtype) + " " + shape_string(t.shape));
  }
  return reinterpret_cast<const float*>(t.data);
}

}  // namespace

Linear::Linear(const Engine& e, const std::string& weight, const std::string& bias, int64_t out, int64_t in,
               const GemmPlan& plan)
    : weight_name_(weight), out_(out), in_(in), plan_(&plan) {
  weight_ = &e.tensor(weight);
  if (weight_->shape != std::vector<int64_t>{out, in}) {
    throw Error(e.source() + ": tensor " + weight + " has shape " + shape_string(weight_->shape) + ", expected [" +
                std::to_string(out) + ", " + std::to_string(in) + "]");
  }
  if (weight_->dtype == DType::U8) throw Error(e.source() + ": tensor " + weight + " is not a weight dtype");
  if (!bias.empty() && e.find(bias)) bias_ = f32_vector(e, bias, out);
  if (weight_->dtype == DType::I8) row_scale_ = f32_vector(e, weight + ".scales", out);
  if (weight_->dtype == DType::F8E4M3) {
    const Json& q = e.header()["quantization"];
    if (!q.contains("scales") || !q["scales"].contains(weight)) {
      throw Error(e.source() + ": fp8 tensor " + weight + " has no scales in the header");
    }
    const Json& s = q["scales"][weight];
    if (!s.contains("weight_scale") || !s.contains("input_scale") || !s["weight_scale"].is_number() ||
        !s["input_scale"].is_number()) {
      throw Error(e.source() + ": fp8 scales of " + weight + " are malformed");
    }
    weight_scale_ = s["weight_scale"].get<float>();
    input_scale_ = s["input_scale"].get<float>();
    if (!(weight_scale_ > 0.0f) || !(input_scale_ > 0.0f)) throw Error(e.source() + ": fp8 scales of " + weight + " must be positive");
  }
}

void Linear::forward(const float* x, int64_t m, float* y, ThreadPool& pool, std::vector<float>& scratch,
                     ActivationObserver* observer) const {
  if (observer) observer->observe(weight_name_, x, m * in_);
  GemmProblem p;
  p.x = x;
  p.m = m;
  p.k = in_;
  p.w = weight_->data;
  p.w_dtype = weight_->dtype;
  p.layout = weight_->layout;
  p.n = out_;
  p.row_scale = row_scale_;
  p.bias = bias_;
  p.y = y;
  p.scale = weight_scale_;
  if (input_scale_ > 0.0f) {
    // Activations are rounded to the fp8 grid of their calibrated scale (saturating), then the GEMM
    // runs on those values; the product of both scales restores the magnitude.
    scratch.resize(static_cast<size_t>(m * in_));
    const float inv = 1.0f / input_scale_;
    for (size_t i = 0; i < scratch.size(); ++i) scratch[i] = f8e4m3_to_f32(f32_to_f8e4m3(x[i] * inv));
    p.x = scratch.data();
    p.scale = weight_scale_ * input_scale_;
  }
  const GemmTactic& t = plan_->choose(out_, in_, weight_->dtype, weight_->layout, m);
  t.run(p, pool, t.threads);
}

}  // namespace kiln
