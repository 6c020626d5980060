// A DSA model with random bf16 weights held on the GPU, with the real shapes of a ModelSpec, run
// layer by layer with the CUDA kernels: chunked prefill and single-request decode under any
// IndexCache plan. This is what `indexcache bench --device cuda --synthetic PRESET` times. No CUDA
// types in this header.
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
};

class SyntheticGpuModel {
 public:
  // Allocates and fills every weight on the GPU (random, deterministic in `seed`, scaled so that
  // activations stay O(1) through all layers). Throws indexcache::Error (kRuntime) when the
  // weights plus the caches for `max_context` tokens do not fit in device memory, saying how much
  // is needed and available.
  SyntheticGpuModel(const ModelSpec& spec, int64_t max_context, uint64_t seed = 1);
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

 private:
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
