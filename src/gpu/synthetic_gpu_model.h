// A DSA model held on the GPU in bf16, with random weights in the real shapes of a ModelSpec or the
// weights of a checkpoint (from_checkpoint), run layer by layer with the CUDA kernels: chunked
// prefill and single-request decode under any IndexCache plan. This is what
// `indexcache bench --device cuda --synthetic PRESET` times; tests/test_cuda_e2e.cpp checks it
// against transformers' golden fixtures. No CUDA types in this header.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "indexcache/index_plan.h"
#include "indexcache/model_spec.h"

namespace indexcache::gpu {

// Seconds spent in each kernel class over one timed phase (CUDA events around each class, summed).
struct KernelTimes {
  double indexer = 0;    // indexer projections excluded: the fused score kernel only
  double topk = 0;       // radix top-k
  double attention = 0;  // sparse MLA attention kernel
  double gemm = 0;       // all cuBLASLt projections outside the MoE (incl. indexer projections, lm head)
  double moe = 0;        // router + expert GEMMs + dispatch/combine
  double other = 0;      // norms, RoPE, activations, copies into the caches
};

// Floating-point work of the DSA kernels in a phase (counted, not measured), for TFLOP/s figures.
struct KernelFlops {
  double indexer = 0;    // 2 * heads * head_dim per (query, visible key) pair, F layers only
  double attention = 0;  // 2 * heads * (dim_k + dim_v) per (query, selected key)
};

struct PhaseResult {
  double seconds = 0;    // wall time of the phase (events at its start and end)
  int64_t tokens = 0;    // tokens processed (prompt length for prefill, steps for decode)
  KernelTimes kernels;   // from a separate instrumented run when `seconds` comes from a graph replay
  KernelFlops flops;
};

struct RunOptions {
  int64_t chunk = 8192;        // prefill chunk (tokens); bounds the activations and the score buffer
  int decode_steps = 32;       // decode: timed steps after the prefill of the context
  bool cuda_graphs = true;     // decode steps captured and replayed as CUDA graphs
  bool instrument = true;      // per-kernel-class events (an extra, separately timed run in decode)
  // The lightning indexer in e4m3 (DeepSeek-V3.2 style): each F layer also keeps its indexer keys
  // as e4m3 rows with one f32 scale per 128-element row (quantize_rows_fp8), the queries are
  // quantized per (token, head) row, and the scores come from the e4m3 kernel. Selections then
  // differ from the bf16 indexer's where scores are close. Needs the tensor-core indexer
  // (index_head_dim 128); a decode_id step uses the setting of the latest prefill_ids.
  bool indexer_fp8 = false;
  // With indexer_fp8: rotate queries and keys by the 128 x 128 Walsh-Hadamard matrix before
  // quantizing (quantize_rows_fp8's `rotate`; dot products unchanged up to rounding), as
  // DeepSeek-V3.2 does. An error without indexer_fp8.
  bool indexer_hadamard = false;
};

// Debug hooks of a real-token prefill (tests; see SyntheticGpuModel::prefill_ids). Inputs: `rows`
// and `forced_topk`; the rest is filled by the call. Capturing synchronises after every layer, so
// it is slow: for tests only.
struct PrefillDebug {
  // Absolute positions (< ids.size()) whose index scores, selections and logits are captured.
  std::vector<int32_t> rows;
  // Teacher forcing: when non-empty, one entry per layer; a non-empty entry [context * k_forced]
  // (k_forced <= index_topk, row t = the token ids query t attends to) REPLACES that layer's
  // selection (after its indexer ran, so F-layer scores are still captured). Entries < 0 or > t are
  // ignored (transformers pads short rows with causally masked positions), missing ones are -1.
  std::vector<std::vector<int32_t>> forced_topk;
  // Outputs, one entry per layer (empty for layers that captured nothing):
  // F layers of the plan: f32 [rows.size()][context] indexer scores (-inf for s > row).
  std::vector<std::vector<float>> index_scores;
  // Every layer: int32 [rows.size()][index_topk] the selection its attention used (-1 = empty slot;
  // order unspecified).
  std::vector<std::vector<int32_t>> topk;
  // f32 [rows.size()][vocab] logits of the captured rows.
  std::vector<float> logits;
};

class SyntheticGpuModel {
 public:
  // Allocates and fills every weight on the GPU (random, deterministic in `seed`, scaled so that
  // activations stay O(1) through all layers). Throws indexcache::Error (kRuntime) when the
  // weights plus the caches for `max_context` tokens do not fit in device memory, saying how much
  // is needed and available.
  SyntheticGpuModel(const ModelSpec& spec, int64_t max_context, uint64_t seed = 1);
  // The model of a Hugging Face checkpoint directory as it ships (config.json + safetensors,
  // single or sharded; f32 / bf16 / f16 converted to bf16; experts packed or per expert; tied
  // embeddings), with caches for `max_context` tokens. Shapes the tensor-core DSA kernels do not
  // take (index_head_dim != 128, kv_lora_rank != 512, ...) run on generic CUDA-core kernels
  // (src/backend/cuda/dsa_generic.h). Throws indexcache::Error (kBadInput) on a bad checkpoint
  // (missing / misshaped tensors, FP8, attention_bias) and (kRuntime) when it does not fit.
  static std::unique_ptr<SyntheticGpuModel> from_checkpoint(const std::string& dir, int64_t max_context);
  ~SyntheticGpuModel();
  SyntheticGpuModel(const SyntheticGpuModel&) = delete;
  SyntheticGpuModel& operator=(const SyntheticGpuModel&) = delete;

  const ModelSpec& spec() const;
  size_t weight_bytes() const;
  size_t cache_bytes_per_token(const IndexPlan& plan) const;  // latent KV + indexer keys (F layers)
  int64_t max_context() const;
  // The logits (f32 [vocab]) of the last token of the latest prefill or decode step (tests).
  std::vector<float> last_logits() const;

  // Prefill of `context` random token ids (a fresh request), chunked.
  PhaseResult prefill(int64_t context, const IndexPlan& plan, const RunOptions& opt);
  // Prefills `context` tokens (untimed), then times opt.decode_steps single-token steps.
  PhaseResult decode(int64_t context, const IndexPlan& plan, const RunOptions& opt);

  // Prefill of the real token ids `ids` (a fresh request; ids in 0..vocab-1, size <= max_context),
  // chunked by opt.chunk; last_logits() then holds the last token's logits. With `debug`, captures
  // and teacher forcing as documented at PrefillDebug.
  PhaseResult prefill_ids(const std::vector<int32_t>& ids, const IndexPlan& plan, const RunOptions& opt,
                          PrefillDebug* debug = nullptr);
  // One eager decode step of token `id` appended to the request of the latest prefill_ids /
  // decode_id (position = tokens so far); last_logits() holds its logits.
  void decode_id(int32_t id, const IndexPlan& plan);
  // Whether the tensor-core kernels (dsa_bf16.h) run this model's indexer / sparse attention (else
  // the generic ones of dsa_generic.h).
  bool uses_tensor_core_indexer() const;
  bool uses_tensor_core_attention() const;

 private:
  struct CheckpointTag {};
  SyntheticGpuModel(CheckpointTag, const std::string& dir, int64_t max_context);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Facts about the GPU for the report: name, SM count, memory, driver and runtime versions.
struct GpuInfo {
  std::string name;
  int sm_count = 0;
  int cc_major = 0, cc_minor = 0;
  double memory_gib = 0;
  std::string driver_version;   // e.g. "580.159.04" where NVML/nvidia-smi is absent: the CUDA driver API version
  std::string runtime_version;  // e.g. "13.0"
};
GpuInfo gpu_info();

// Measured dense bf16 matrix peak (cuBLASLt, 8192^3, median of several runs), TFLOP/s.
double measure_bf16_peak_tflops();

}  // namespace indexcache::gpu
