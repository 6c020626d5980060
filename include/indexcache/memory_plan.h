// A model's memory plan from its config.json alone (no weights read): what the checkpoint holds
// per dtype as it ships (block FP8 where quantization_config says so), what this engine places on
// a device, the KV cache per token with and without an IndexCache plan, and how many tokens fit in
// a given amount of device memory. `indexcache info --config-only` prints it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "indexcache/index_plan.h"
#include "indexcache/model_spec.h"
#include "indexcache/session.h"

namespace indexcache {

struct StoredDtype {
  std::string dtype;  // "BF16", "F8_E4M3", "F32"
  int64_t tensors = 0, bytes = 0;
};

struct MemoryPlanOptions {
  // Layers whose indexer tensors the checkpoint ships: the config's own plan (GLM-5.2 ships none on
  // its S layers; a config without a plan ships them everywhere).
  IndexPlan shipped_indexers;
  IndexPlan plan;               // the plan the KV cache is sized for
  int element_bytes = 2;        // of placed weights and cache rows: 2 (bf16, CUDA) or 4 (f32)
  int64_t ctx = 0;              // tokens per sequence (0: max_position_embeddings)
  int devices = 1;
  int64_t device_bytes = 0;     // memory per device; 0: unknown (no fit figures)
  int64_t reserve_bytes = 0;    // per device, kept for activations and workspace
};

// Tokens of KV cache that fit beside the weights, and whole sequences of ctx tokens.
struct MemoryFit {
  int64_t weight_bytes = 0;  // per device: the weights split evenly over the devices
  int64_t free_bytes = 0;    // all devices: memory - reserve - weights (negative: does not fit)
  bool fits = false;         // the weights fit, with room for at least one token of cache
  int64_t tokens_full = 0, tokens_plan = 0;        // KV tokens under all-F and under the plan
  int64_t sequences_full = 0, sequences_plan = 0;  // of ctx tokens each
};

struct MemoryPlan {
  std::vector<StoredDtype> stored;  // main layers and globals, as shipped (by dtype name)
  int64_t stored_bytes = 0;
  int64_t parameters = 0, indexer_parameters = 0;  // main layers and globals, shipped indexers
  int64_t mtp_parameters = 0, mtp_stored_bytes = 0;  // the MTP layers: stored, not loaded
  int64_t placed_bytes = 0;                          // parameters * element_bytes
  KvCacheFootprint kv_full, kv_plan;
  int64_t ctx = 0;
  std::optional<MemoryFit> fit;         // the weights as this engine places them
  std::optional<MemoryFit> fit_stored;  // the weights as stored (FP8 checkpoints)
};

// Throws Error(kBadInput) for plans that do not fit the spec, devices < 1, ctx < 0.
MemoryPlan memory_plan(const ModelSpec& spec, const MemoryPlanOptions& options);

}  // namespace indexcache
