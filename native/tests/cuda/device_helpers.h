#pragma once

// Shared by the CUDA test files: host <-> device copies and the relative error the kernel checks use.

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "backend/cpu/paged_attention.h"
#include "backend/cuda/check.h"
#include "backend/cuda/device.h"
#include "backend/cuda/gemv.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace kiln::test {

#define SKIP_WITHOUT_GPU() \
  if (!cuda::device_available()) GTEST_SKIP() << "no CUDA device visible"

// run() must throw an Error whose message names `names`.
inline void expect_refused(const std::function<void()>& run, const std::string& names) {
  try {
    run();
    ADD_FAILURE() << names << " was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(names), std::string::npos) << e.what();
  }
}

template <typename T>
cuda::DeviceBuffer to_device(const std::vector<T>& host) {
  cuda::DeviceBuffer d(host.size() * sizeof(T), "test input");
  KILN_CUDA_CHECK(cudaMemcpy(d.get(), host.data(), d.bytes(), cudaMemcpyHostToDevice));
  return d;
}

template <typename T>
std::vector<T> to_host(const cuda::DeviceBuffer& d, size_t count) {
  std::vector<T> host(count);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  KILN_CUDA_CHECK(cudaMemcpy(host.data(), d.get(), count * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

// kiln-gemv's general form on device operands, y starting from `start` ([m, n]); the host y after.
inline std::vector<float> gemv_result(const void* w, const void* x, bool fp8, int64_t m, int64_t n, int64_t k, float scale,
                                      float beta, const std::vector<float>& start, int split, bool stage_input,
                                      bool y_settled) {
  cuda::DeviceBuffer y = to_device(start);
  cuda::GemvIn in;
  in.x = x;
  cuda::GemvOut out;
  out.y = y.get<float>();
  out.beta = beta;
  out.y_settled = y_settled;
  cuda::gemv(w, fp8, m, n, k, scale, in, out, split, nullptr, stage_input);
  return to_host<float>(y, start.size());
}

// ‖got − want‖ / ‖want‖; NaN fails every comparison it reaches.
inline double relative_norm_error(const std::vector<float>& got, const std::vector<float>& want) {
  double diff = 0;
  double norm = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    diff += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    norm += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(diff / norm);
}

// What the CUDA attention kernels must reproduce: the CPU backend's paged attention of q (n rows of
// heads * head_dim) over fp32 copies of the cache as the kernels see it (bf16 or e4m3 dequantized).
struct AttentionReference {
  const std::vector<int32_t>* sequence = nullptr;
  const std::vector<int64_t>* position = nullptr;
  const std::vector<const int32_t*>* tables = nullptr;
  int64_t page_size = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t window = 0;
};
inline std::vector<float> cpu_attention(const AttentionReference& r, const std::vector<float>& q,
                                        const std::vector<float>& keys, const std::vector<float>& values) {
  const auto n = static_cast<int64_t>(r.sequence->size());
  std::vector<float> out(static_cast<size_t>(n * r.heads * r.head_dim));
  PagedAttentionArgs cpu;
  cpu.q = q.data();
  cpu.q_stride = r.heads * r.head_dim;
  cpu.tokens = n;
  cpu.token_sequence = r.sequence->data();
  cpu.token_position = r.position->data();
  cpu.block_tables = r.tables->data();
  cpu.keys = reinterpret_cast<const uint8_t*>(keys.data());
  cpu.values = reinterpret_cast<const uint8_t*>(values.data());
  cpu.kv_dtype = DType::F32;
  cpu.page_size = r.page_size;
  cpu.heads = r.heads;
  cpu.kv_heads = r.kv_heads;
  cpu.head_dim = r.head_dim;
  cpu.window = r.window;
  cpu.scale = 1.0f / std::sqrt(static_cast<float>(r.head_dim));
  cpu.out = out.data();
  ThreadPool pool(2);
  paged_attention(cpu, pool);
  return out;
}

}  // namespace kiln::test
