// What `indexcache bench` measured, and its two renderings: a markdown report (header block +
// one row per context x plan, or the steps of the calibrate search) and the same data as JSON.
// Plain data; no device types.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "indexcache/index_plan.h"
#include "indexcache/model_spec.h"

namespace indexcache::bench {

// Seconds per kernel class over one phase (same classes on both devices; on the CPU `moe` is the
// router and expert projections, `gemm` every other projection, `other` the rest of the wall time).
struct ClassSeconds {
  double gemm = 0, moe = 0, attention = 0, indexer = 0, topk = 0, other = 0;
};

// Counted floating-point work of the DSA kernels over a phase.
struct DsaFlops {
  double indexer = 0;    // 2 * Hi * Di per (query, visible key) pair, F layers only
  double attention = 0;  // 2 * heads * (dim_k + dim_v) per (query, selected key), every layer
};

// Counted for one request of `context` tokens prefilled from position 0, and for `steps` decode
// steps after it (absorbed MLA: dim_k = kv_lora + rope, dim_v = kv_lora).
DsaFlops count_prefill_flops(const ModelSpec& spec, const IndexPlan& plan, int64_t context);
DsaFlops count_decode_flops(const ModelSpec& spec, const IndexPlan& plan, int64_t context, int64_t steps);

struct PhaseStats {
  double seconds = 0;                   // wall time (median over repeats)
  int64_t tokens = 0;                   // prompt tokens (prefill) or steps (decode)
  std::optional<ClassSeconds> classes;  // per-class breakdown, when measured
  DsaFlops flops;
};

struct BenchRow {
  int64_t ctx = 0;
  std::string plan;     // as given, e.g. "1/2"
  std::string pattern;  // F/S per layer
  int full_layers = 0;  // F layers of the plan
  std::optional<PhaseStats> prefill;
  std::optional<PhaseStats> decode;
};

struct MachineInfo {
  std::string device;  // "cpu" or "cuda"
  std::string name;    // GPU name, or the CPU model
  int sm_count = 0;    // GPU only
  int cc_major = 0, cc_minor = 0;
  double memory_gib = 0;
  int threads = 0;     // CPU only: worker threads
  std::string driver_version, runtime_version;
  std::optional<double> bf16_peak_tflops;  // measured
  std::optional<double> fp8_peak_tflops;   // measured, when available
};

// `--mode calibrate`: the greedy IndexCache search on random token windows, as it ran.
struct CalibrateStepResult {
  int flipped = -1;  // the layer committed to S
  double loss = 0;   // calibration loss after the flip
  std::string plan;  // F/S after the flip
  double seconds = 0;
};

struct CalibrateResult {
  std::string backend;  // device_name(): "cpu", "cuda:0", "cuda:0 (f32)"
  int64_t ctx = 0;      // tokens per window
  int windows = 0;
  int keep_layers = 0;  // the stop: F layers left
  double full_loss = 0;
  std::vector<CalibrateStepResult> steps;
  std::string plan;  // found
  std::string stop_reason;
  double seconds = 0;                // calibrate() wall time: the all-F base run and every step
  int64_t layer_forwards = 0;        // layers run
  int64_t naive_layer_forwards = 0;  // what the naive search runs for the same steps
  int64_t device_bytes_in_use = 0;       // the backend's memory after the search (Backend::bytes_in_use)
  int64_t device_bytes_in_use_peak = 0;  // the most of it seen during the search (sampled after each candidate)
  std::optional<int64_t> gpu_used_peak;  // cuda: the most device memory in use by anything (cudaMemGetInfo), same samples
  int64_t host_peak_rss_bytes = 0;       // the process's peak resident set
};

// `--mode serve`: `clients` concurrent requests of ctx prompt tokens and `output_tokens` new ones
// each, through the scheduler (continuous batching over the paged KV cache), in one process.
struct ServeRow {
  int64_t ctx = 0;
  std::string plan, pattern;
  int full_layers = 0;
  int clients = 0, output_tokens = 0, page_tokens = 0;
  int64_t pages = 0;
  double seconds = 0;        // first submission to the last token (median run)
  int64_t generated = 0;
  double total_tok_s = 0;    // generated / seconds
  std::optional<double> decode_tok_s;  // while every request decodes: the last first token to the first last token
  double ttft_p50 = 0, ttft_p90 = 0, ttft_p99 = 0;  // seconds
  double itl_p50 = 0, itl_p90 = 0, itl_p99 = 0;     // seconds
  std::optional<double> indexer_share;  // of the profiled steps' time
};

struct BenchReport {
  std::string preset, preset_description;
  ModelSpec spec;
  int preset_layers = 0, preset_experts = 0;  // before --layers / --experts
  int64_t parameters = 0, indexer_parameters = 0;
  int64_t weight_bytes = 0;                   // bf16
  std::optional<int64_t> device_weight_bytes; // as allocated by the device runner
  MachineInfo machine;
  std::string commit, date, command;
  int64_t chunk = 0;
  int decode_steps = 0, repeat = 1;
  uint64_t seed = 0;
  bool cuda_graphs = false;
  bool indexer_hadamard = false;  // with indexer_fp8: q and k Walsh-Hadamard-rotated before quantizing
  bool indexer_fp8 = false;  // e4m3 indexer: its % of peak is then of the fp8 peak (2x bf16 on Hopper)
  std::string engine;        // what ran the matrix: "session" (the CPU, or --engine session on cuda) or "runner"
  std::vector<BenchRow> rows;
  std::optional<CalibrateResult> calibrate;  // --mode calibrate: this instead of rows
  std::vector<ServeRow> serve;               // --mode serve: these instead of rows
};

std::string format_markdown(const BenchReport& r);
std::string format_json(const BenchReport& r);

// The commit the binary was built from (compile definition INDEXCACHE_GIT_COMMIT, else "unknown").
std::string build_commit();
// Now, UTC, ISO 8601.
std::string utc_now();

}  // namespace indexcache::bench
