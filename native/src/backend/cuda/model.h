#pragma once

#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cuda/device.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/sampling.h"
#include "engine/engine.h"
#include "runtime/forward_batch.h"

namespace kiln::cuda {

// Keys and values of every sequence in device memory, with the page layout of runtime/kv_cache.h:
// per layer [page][slot][kv_heads * head_dim]. BF16, or F8E4M3 (half the memory, so twice the
// pages): each layer's keys stored as e4m3(k / k_scale), values as e4m3(v / v_scale) (KvCacheArgs).
// CudaModel::new_cache passes the per-layer scales an fp8 engine's calibration recorded (the
// observed amax maps to 448); empty vectors mean 1.0 for every layer, what bf16 engines get: the
// e4m3 range (±448, 3 mantissa bits) holds the post-RoPE keys and the values of ordinary models
// (magnitudes of a few tens at most) unscaled; a model with larger activations would saturate.
class CudaKvCache {
 public:
  CudaKvCache(int64_t layers, int64_t pages, int64_t page_size, int64_t kv_dim, DType dtype = DType::BF16,
              std::vector<float> k_scales = {}, std::vector<float> v_scales = {});

  int64_t layers() const { return layers_; }
  int64_t pages() const { return pages_; }
  int64_t page_size() const { return page_size_; }
  int64_t kv_dim() const { return kv_dim_; }
  DType dtype() const { return dtype_; }
  // The kernels' view of one layer (pointers, dtype, scales).
  KvCacheArgs layer(int64_t layer) const;

 private:
  int64_t layer_bytes() const { return pages_ * page_size_ * kv_dim_ * static_cast<int64_t>(dtype_size(dtype_)); }

  int64_t layers_, pages_, page_size_, kv_dim_;
  DType dtype_;
  std::vector<float> k_scales_, v_scales_;
  DeviceBuffer keys_;
  DeviceBuffer values_;
};

// The decoder forward pass on the GPU: weights uploaded once at construction, GEMMs through the
// cuBLASLt algorithms stored in the engine (checked once here, never looked up per call), the rest
// in the backend's kernels. One CudaModel serves one caller at a time (it owns its stream and
// scratch buffers). Supported now: the Llama family (no QK norm, no o/MLP biases), head_dim 32/64/128;
// bf16 engines, and fp8 engines (E4M3 decoder-layer weights with per-tensor weight scales, their
// inputs quantized with the calibrated per-tensor input scales by the kernels that produce them;
// embedding, lm_head and norms stay high precision, the lm_head unless built with --lm-head fp8).
// Either runs on a bf16 or an fp8 KV cache.
class CudaModel {
 public:
  explicit CudaModel(std::shared_ptr<const Engine> engine);
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  const ModelConfig& config() const { return engine_->config(); }
  int64_t max_seq_len() const { return max_seq_len_; }
  // The batch the build tuned its GEMMs for (lm_head has no tactic past it).
  int64_t max_batch() const { return max_batch_; }
  // Refuses `rows` past the engine's max_batch, naming `what` ("bench: batch", "offline: concurrency"):
  // the GEMM tactics were tuned up to it, and past it every step runs an untuned bucket (H200, 8B fp8
  // batch 64 on a max-batch-8 engine: 4.43 ms against 3.67), which a benchmark must not report.
  void require_batch(int64_t rows, const std::string& what) const;
  cudaStream_t stream() const { return stream_; }
  // Whether greedy decode-only steps replay a captured graph (KILN_CUDA_GRAPHS, on by default).
  bool decode_graphs() const { return use_graphs_; }

  // dtype: BF16 or F8E4M3 (CudaKvCache), with the engine's calibrated KV scales where it has them.
  CudaKvCache new_cache(int64_t pages, int64_t page_size = 16, DType dtype = DType::BF16) const;

  // Runs a mixed batch (prefill chunks and decode tokens of several sequences), the GPU twin of
  // Model::forward: writes every slice's keys and values into `cache`; for each slice that wants
  // logits (a row), in slice order, its next token goes to `next_tokens`: the argmax, or for a row
  // whose request is RowWant::Sample the token drawn on the device (sampling.h). A row whose request
  // is RowWant::Logits also gets its vocab_size fp32 logits at logits + row * vocab_size; only
  // those rows are copied. `rows` null: every row greedy, with its logits when `logits` is given.
  // Returns after the results are on the host.
  void forward(const ForwardBatch& batch, CudaKvCache& cache, int32_t* next_tokens, float* logits = nullptr,
               const RowRequest* rows = nullptr);
  // The GPU's own time for a greedy decode-only step: `batch`'s decode graph (captured by forward,
  // which must have run a step of this shape first) replayed `times` times back to back, ms each.
  // Against forward's wall time per step this gives what the host round trip between steps costs
  // (waking up, packing the next step, launching it). Each replay recomputes the same step and
  // writes the same keys and values into `cache` again.
  double replay_decode_ms(const ForwardBatch& batch, CudaKvCache& cache, int times);

  // One family of a decode graph's kernel nodes: one kernel at one grid size (so the o and down
  // GEMVs of a layer, or a norm and the GEMV after it, are told apart), and the step's time with
  // every node of the family disabled (kernel_costs.cpp).
  struct KernelCost {
    std::string kernel;  // as cudaFuncGetName gives it
    unsigned blocks = 0;
    int64_t launches = 0;  // nodes of the family in one step
    // Unset where the graph refuses to disable the family's nodes: CUDA 13.0 cannot toggle a node
    // launched with a cluster shape (decode attention's; run with KILN_CUDA_DECODE_CLUSTER=0).
    std::optional<double> step_ms_without;
    // With a timeline build (timeline.h), from 8 more replays: the microseconds the family's
    // launches add to the step's critical path (each: the next launch's first release past its PDL
    // wait less its own), then per launch on average how long its first block waited at the PDL
    // wait before the kernel ahead completed (the overlap PDL bought), and how far its last
    // block's release trailed its first (blocks that found no SM free until the kernel ahead
    // left). A launch followed by a library kernel (cuBLASLt, which marks nothing), or the step's
    // last, has no critical time of its own (the span holds both; critical_us is unset where no
    // launch of the family has one). Unset without the timeline, and for library kernels.
    std::optional<double> critical_us, waited_us, release_spread_us;
  };
  // Where a greedy decode-only step of `batch` spends its time inside its graph: the step captured
  // afresh and replayed `replays` times back to back (*step_ms), then again with each family
  // disabled in turn. What a family takes away is what its latency and traffic add to the step's
  // critical path; families overlap, so the costs need not add up to the step. Costliest first,
  // then the families the graph would not disable (unset step_ms_without).
  // The disabled replays compute garbage into this step's KV slots: run the step again (forward)
  // before decoding on from it.
  // With a timeline build, *timeline_note says whether the launches matched the graph's nodes.
  std::vector<KernelCost> decode_kernel_costs(const ForwardBatch& batch, CudaKvCache& cache, int replays,
                                              double* step_ms, std::string* timeline_note = nullptr);

 private:
  // One decoder-layer GEMM: y = alpha · x · wᵀ (+ y); for fp8, x is quantized with input_scale and
  // alpha = weight scale · input scale; for bf16 both are 1.
  struct Projection {
    const void* weight = nullptr;
    TunedGemm* gemm = nullptr;
    float input_scale = 1.0f;
    float alpha = 1.0f;
    void run(const void* x, int64_t m, float* y, float beta, cudaStream_t stream, bool y_settled = false) const {
      gemm->run(weight, x, m, y, beta, stream, alpha, y_settled);
    }
  };
  struct Layer {
    const float* attn_norm = nullptr;
    const float* mlp_norm = nullptr;
    const float* qkv_bias = nullptr;
    const float* q_norm = nullptr;  // QK norm (Qwen3): [head_dim] each
    const float* k_norm = nullptr;
    Projection qkv, o, gate_up, down;
  };

  // Counts of one step; the metadata block holds tokens, positions, sequence ids (n each), attention
  // tiles (2 per tile), logit rows, then one block table per sequence of table_stride pages.
  struct StepShape {
    int64_t tokens = 0;
    int64_t sequences = 0;
    int64_t tiles = 0;
    int64_t rows = 0;
    int64_t table_stride = 0;
    int64_t meta_count = 0;
    int64_t splits = 1;  // attention split-KV
    bool decode = false;  // every slice one token: attention runs as one decode_attention kernel
    bool prefill_mma = false;  // attention runs as prefill_attention, on tiles of its size
    int64_t tile_tokens = 0;  // at most this many tokens per attention tile
  };
  // Sequences, the cache's buffers, pages, page size and dtype (a graph's kernels are the dtype's).
  using GraphKey = std::tuple<int64_t, const void*, const void*, int64_t, int64_t, DType>;
  using GemmKey = std::tuple<int64_t, int64_t, std::string>;  // n, k, input dtype name

  // `interleave`: a [2I, k] gate_up weight is stored with its rows as (gate_0, up_0, gate_1, ...), so
  // a GEMV warp's row pair is one (gate, up) pair and the SiLU·mul fuses into its output (gemv.h);
  // the GEMM path's output then comes interleaved too, as silu_mul_to_* reads it.
  const void* upload(const std::string& name, DType as, bool interleave = false);
  const float* upload_optional_vector(const std::string& name, int64_t length);
  // KILN_CUDA_TACTIC (backend/tactic_override.h) applied to the autotune table; `source` names the engine.
  void apply_tactic_overrides(const std::string& source);
  TunedGemm* gemm_for(int64_t n, int64_t k, const std::string& dtype);
  Projection projection(const std::string& name, int64_t n, int64_t k, bool interleave = false);
  StepShape check_batch(const ForwardBatch& batch, const CudaKvCache& cache, bool fixed_tables) const;
  // Whether a step of `batch` may replay a decode graph (every slice one token wanting its greedy
  // token, graphs on; the caller also wants no logits), and the graph that step of that shape uses.
  bool graphed_step(const ForwardBatch& batch) const;
  static GraphKey graph_key(const StepShape& shape, const CudaKvCache& cache);
  // The shape of a greedy decode-only step that replays its graph `replays` times, or an Error
  // naming `what` (replay_decode_ms, decode_kernel_costs).
  StepShape graphed_shape(const ForwardBatch& batch, const CudaKvCache& cache, int replays, const char* what) const;
  void reserve(const StepShape& shape);
  void pack(const ForwardBatch& batch, const StepShape& shape, int64_t page_size);
  // Everything of one step on the stream, ending with the next tokens in host_next_ (graph-capturable:
  // no allocation, no synchronization).
  void enqueue(const StepShape& shape, CudaKvCache& cache);
  void drop_graphs();

  std::shared_ptr<const Engine> engine_;
  int64_t max_seq_len_ = 0;
  int64_t max_batch_ = 0;
  cudaStream_t stream_ = nullptr;
  LtContext lt_;
  bool fp8_ = false;  // decoder-layer GEMMs in E4M3
  std::map<GemmKey, std::vector<std::pair<int64_t, GemmChoice>>> tuned_;
  std::map<GemmKey, std::unique_ptr<TunedGemm>> gemms_;
  std::vector<DeviceBuffer> weights_;
  DeviceBuffer rope_cos_, rope_sin_;
  const bf16* embed_ = nullptr;
  const float* final_norm_ = nullptr;
  // bf16 (the embedding's table where tied), or E4M3 with its scales (an engine built with
  // --lm-head fp8: the final norm then quantizes its rows with the lm_head's input scale).
  Projection lm_head_;
  bool lm_head_fp8_ = false;
  std::vector<Layer> layers_;

  int64_t token_capacity_ = 0;
  int64_t row_capacity_ = 0;
  DeviceBuffer h_, x_, qkv_, attn_, gate_up_, act_, logits_, partials_;
  DeviceBuffer next_keys_;  // argmax keys (kernels.h), unpacked on the host
  DeviceBuffer split_counters_;  // decode attention's arrival counters (decode_attention.h), kept zero
  int multiprocessors_ = 0;
  DeviceBuffer meta_;
  PinnedBuffer host_meta_;
  PinnedBuffer host_next_;
  DeviceSampler sampler_;
  std::vector<SampleJob> sample_jobs_;  // the step's device draws, kept across steps
  bool use_graphs_ = true;  // KILN_CUDA_GRAPHS=0 switches decode graphs off (to measure what they buy)
  // KILN_CUDA_DECODE_ATTENTION=0: decode steps take the general RoPE / attention / merge kernels too.
  bool decode_attention_ = true;
  // head_dim 64 or 128: steps with a prefill chunk take the tensor-core prefill_attention where
  // paged_attention would run unsplit (a 2048-token 1B prefill: 46.4 -> 11.6 ms on an H200).
  // KILN_CUDA_PREFILL_MMA=0 switches it off (to measure what it buys).
  bool prefill_mma_ = true;
  bool early_residual_ = true;  // o and down read the residual before their PDL wait (GemvOut::y_settled)
  std::map<GraphKey, cudaGraphExec_t> graphs_;
};

}  // namespace kiln::cuda
