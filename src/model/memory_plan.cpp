// memory_plan: the checkpoint schema visited with the config alone, the shipped dtypes from
// quantization_config, and the KV footprint of a plan.
#include "indexcache/memory_plan.h"

#include <map>

#include "indexcache/error.h"
#include "io/checkpoint_schema.h"

namespace indexcache {

namespace {

// The tensors a block-FP8 checkpoint stores as F8_E4M3 (with an F32 scale grid): the linear
// projections of attention, the indexer's wq_b and wk, dense MLPs and experts. Embeddings, lm_head,
// norms, the router and weights_proj stay BF16; the router bias is F32 (REFERENCE.md section 6).
bool stored_fp8(const TensorSpec& t) {
  switch (t.slot) {
    case TensorSlot::kQa: case TensorSlot::kQb: case TensorSlot::kKvA: case TensorSlot::kKvB: case TensorSlot::kO:
    case TensorSlot::kIndexerWqB: case TensorSlot::kIndexerWk: case TensorSlot::kGate: case TensorSlot::kUp:
    case TensorSlot::kDown: case TensorSlot::kExpertsGateUp: case TensorSlot::kExpertsDown:
      return t.shape.size() >= 2;
    default:
      return false;
  }
}

bool stored_f32(const ModelSpec& s, const TensorSpec& t) {
  if (t.slot == TensorSlot::kRouterBias) return true;
  // DeepSeek-V3.2 keeps the indexer's k_norm in F32; GLM ships it in BF16.
  return s.model_type == "deepseek_v32" && (t.slot == TensorSlot::kIndexerKNorm || t.slot == TensorSlot::kIndexerKNormBias);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Tally {
  std::map<std::string, StoredDtype> by_dtype;
  int64_t params = 0, bytes = 0, indexer_params = 0;
  void add(const ModelSpec& s, const TensorSpec& t) {
    const int64_t n = t.numel();
    params += n;
    if (t.role == TensorRole::kIndexer) indexer_params += n;
    if (s.quant.fp8 && stored_fp8(t)) {
      const int64_t rows = t.shape[t.shape.size() - 2], cols = t.shape.back();
      const int64_t mats = n / (rows * cols);
      put("F8_E4M3", n);
      put("F32", 4 * mats * ceil_div(rows, s.quant.block_rows) * ceil_div(cols, s.quant.block_cols));
    } else if (stored_f32(s, t)) {
      put("F32", 4 * n);
    } else {
      put("BF16", 2 * n);
    }
  }
  void put(const std::string& dtype, int64_t b) {
    StoredDtype& d = by_dtype[dtype];
    d.dtype = dtype;
    ++d.tensors;
    d.bytes += b;
    bytes += b;
  }
};

MemoryFit fit_for(int64_t weights, const MemoryPlan& p, const MemoryPlanOptions& o) {
  MemoryFit f;
  f.weight_bytes = ceil_div(weights, o.devices);
  f.free_bytes = int64_t{o.devices} * (o.device_bytes - o.reserve_bytes) - weights;
  f.fits = f.free_bytes >= p.kv_plan.bytes_per_token();
  if (f.free_bytes > 0) {
    f.tokens_full = f.free_bytes / p.kv_full.bytes_per_token();
    f.tokens_plan = f.free_bytes / p.kv_plan.bytes_per_token();
    f.sequences_full = f.tokens_full / p.ctx;
    f.sequences_plan = f.tokens_plan / p.ctx;
  }
  return f;
}

}  // namespace

MemoryPlan memory_plan(const ModelSpec& s, const MemoryPlanOptions& o) {
  if (o.plan.num_layers() != s.num_layers || o.shipped_indexers.num_layers() != s.num_layers)
    throw_bad_input("memory plan", "the plan has " + std::to_string(o.plan.num_layers()) + " layers, the model " +
                                       std::to_string(s.num_layers));
  if (o.devices < 1) throw_bad_input("--gpus", "must be at least 1");
  if (o.ctx < 0) throw_bad_input("--ctx", "must be >= 0");
  if (o.device_bytes < 0 || o.reserve_bytes < 0) throw_bad_input("--gpu-memory", "must be >= 0");
  if (o.element_bytes != 2 && o.element_bytes != 4) throw_bad_input("memory plan", "element bytes must be 2 or 4");

  MemoryPlan p;
  // Shipped checkpoints store experts one by one (transformers' packed form holds the same bytes).
  SchemaOptions so{.experts = ExpertLayout::kPerExpert, .indexers = {}};
  for (int l = 0; l < s.num_layers; ++l)
    so.indexers.push_back(o.shipped_indexers.is_full(l) ? IndexerTensors::kRequired : IndexerTensors::kOmitted);
  Tally main;
  for_each_tensor(s, so, [&](const TensorSpec& t) { main.add(s, t); });
  for (auto& [name, d] : main.by_dtype) p.stored.push_back(d);
  p.stored_bytes = main.bytes;
  p.parameters = main.params;
  p.indexer_parameters = main.indexer_params;

  // An MTP layer: a MoE decoder layer with its own indexer, plus eh_proj [H, 2H] and three norms.
  if (s.num_mtp_layers > 0) {
    Tally mtp;
    const int last = s.num_layers - 1;
    for_each_layer_tensor(s, last, {.experts = ExpertLayout::kPerExpert, .indexer = IndexerTensors::kRequired},
                          [&](const TensorSpec& t) { mtp.add(s, t); });
    TensorSpec eh{.name = "eh_proj", .shape = {s.hidden_size, 2 * int64_t{s.hidden_size}}};
    eh.role = TensorRole::kAttention;
    eh.slot = TensorSlot::kEmbed;  // stored BF16
    mtp.add(s, eh);
    for (int i = 0; i < 3; ++i) mtp.add(s, TensorSpec{.name = "norm", .shape = {s.hidden_size}, .role = TensorRole::kNorm, .slot = TensorSlot::kInputNorm});
    p.mtp_parameters = mtp.params * s.num_mtp_layers;
    p.mtp_stored_bytes = mtp.bytes * s.num_mtp_layers;
  }

  p.placed_bytes = p.parameters * o.element_bytes;
  p.kv_full = kv_cache_footprint(s, IndexPlan::full(s.num_layers), o.element_bytes);
  p.kv_plan = kv_cache_footprint(s, o.plan, o.element_bytes);
  p.ctx = o.ctx > 0 ? o.ctx : s.max_position_embeddings;
  if (o.device_bytes > 0) {
    p.fit = fit_for(p.placed_bytes, p, o);
    if (s.quant.fp8) p.fit_stored = fit_for(p.stored_bytes, p, o);
  }
  return p;
}

}  // namespace indexcache
