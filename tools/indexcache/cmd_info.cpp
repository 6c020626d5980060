// `indexcache info`: what a model directory holds, without running it.
#include <fmt/core.h>

#include <map>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "commands.h"
#include "flags.h"
#include "indexcache/dtype.h"
#include "indexcache/error.h"
#include "indexcache/device.h"
#include "indexcache/index_plan.h"
#include "indexcache/memory_plan.h"
#include "indexcache/model_spec.h"
#include "indexcache/session.h"
#include "indexcache/weight_store.h"
#include "io/checkpoint_schema.h"

namespace indexcache::cli {

namespace {

struct InfoFlags {
  std::string model;
  std::string plan;
  DeviceFlags device;
  bool config_only = false;
  int64_t ctx = 0;
  int gpus = 1;
  double gpu_memory_gib = 0, reserve_gib = 2;
};

double gib(int64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0); }

void print_kv(const char* label, const KvCacheFootprint& f) {
  fmt::print("KV cache     {}: {} B/token ({} B latent x {} layers + {} B indexer keys x {} F layers)\n", label,
             f.bytes_per_token(), f.latent_bytes_per_token_per_layer, f.layers,
             f.indexer_bytes_per_token_per_layer, f.indexer_layers);
}

void print_fit(const char* label, const MemoryFit& fit, const MemoryPlan& p, const InfoFlags& f, double memory_gib,
               const std::string& where, const char* note) {
  const std::string devices =
      fmt::format("{} x {:.1f} GiB {} ({:.1f} GiB reserved each)", f.gpus, memory_gib, where, f.reserve_gib);
  if (!fit.fits) {
    fmt::print("{} does not fit {}: {:.1f} GiB of weights, {:.1f} GiB to hold them{}\n", label, devices,
               gib(fit.weight_bytes * f.gpus), gib(fit.weight_bytes * f.gpus + fit.free_bytes), note);
    return;
  }
  fmt::print("{} fits {}: weights {:.1f} GiB per device, {:.1f} GiB left for the KV cache{}\n", label, devices,
             gib(fit.weight_bytes), gib(fit.free_bytes), note);
  fmt::print("{}   {} tokens under the plan ({} sequences of {}), {} under all-F ({} sequences): {:+.1f} %\n", label,
             fit.tokens_plan, fit.sequences_plan, p.ctx, fit.tokens_full, fit.sequences_full,
             fit.tokens_full ? 100.0 * (static_cast<double>(fit.tokens_plan) / fit.tokens_full - 1) : 0.0);
}

// `info --config-only`: the memory plan from config.json alone.
int run_memory_plan(const InfoFlags& f) {
  const std::string dir = resolve_model_dir(f.model);
  const ModelSpec s = load_model_spec(dir);
  const IndexPlan plan = resolve_plan(f.plan, s, dir);
  const IndexPlan shipped = resolve_plan("", s, dir);
  // Where it would run: GPUs of --gpu-memory (no GPU touched), the GPU of --device cuda, or the host.
  const bool given_memory = f.gpu_memory_gib > 0;
  Device device = resolve_device(f.device);
  if (given_memory) device.kind = DeviceKind::kCuda;
  const bool cuda = device.kind == DeviceKind::kCuda;
  const int elem = cuda && device.precision == Precision::kBf16 ? 2 : 4;
  double memory_gib = f.gpu_memory_gib;
  std::string where = cuda ? "GPU" : "host";
  if (!given_memory) {
    const DeviceMemory m = device_memory(device);
    memory_gib = gib(m.total_bytes);
    where = cuda ? device_name(device) : "host memory";
  }
  MemoryPlanOptions o{.shipped_indexers = shipped, .plan = plan, .element_bytes = elem, .ctx = f.ctx, .devices = f.gpus,
                      .device_bytes = static_cast<int64_t>(memory_gib * 1073741824.0),
                      .reserve_bytes = static_cast<int64_t>(f.reserve_gib * 1073741824.0)};
  const MemoryPlan p = memory_plan(s, o);

  int moe_layers = 0;
  for (bool m : s.layer_is_moe) moe_layers += m;
  fmt::print("model        {} (config.json only: no weights read)\n", dir);
  fmt::print("family       {}, {} layers ({} dense MLP, {} MoE), hidden {}, vocab {}, max positions {}\n", s.model_type,
             s.num_layers, s.num_layers - moe_layers, moe_layers, s.hidden_size, s.vocab_size, s.max_position_embeddings);
  fmt::print("plan         {} ({} F / {} layers); the checkpoint ships indexers in {} layers\n", plan.pattern(),
             plan.num_full(), plan.num_layers(), shipped.num_full());
  fmt::print("parameters   {:.2f} B (indexers {:.2f} B, {:.2f} %)", p.parameters / 1e9, p.indexer_parameters / 1e9,
             100.0 * p.indexer_parameters / p.parameters);
  if (s.num_mtp_layers > 0)
    fmt::print("; MTP {} layer(s) {:.2f} B more, stored, not loaded", s.num_mtp_layers, p.mtp_parameters / 1e9);
  fmt::print("\n");
  std::string dtypes;
  for (const StoredDtype& d : p.stored) dtypes += fmt::format("{}{} {:.2f} GiB", dtypes.empty() ? "" : ", ", d.dtype, gib(d.bytes));
  fmt::print("stored       {} GiB as shipped: {}{}{}\n", fmt::format("{:.2f}", gib(p.stored_bytes)), dtypes,
             s.quant.fp8 ? fmt::format(" (block FP8 {} x {})", s.quant.block_rows, s.quant.block_cols) : "",
             s.num_mtp_layers > 0 ? fmt::format("; MTP {:.2f} GiB more", gib(p.mtp_stored_bytes)) : "");
  fmt::print("placed       {:.2f} GiB: every weight as {} on {}{}\n", gib(p.placed_bytes), elem == 2 ? "bf16" : "f32",
             cuda ? "cuda" : "the cpu", s.quant.fp8 && cuda ? " (this build places FP8 weights as bf16)" : "");
  print_kv("all F", p.kv_full);
  print_kv("plan ", p.kv_plan);
  fmt::print("KV per seq.  {} tokens: {:.2f} GiB under the plan, {:.2f} GiB all-F ({} each)\n", p.ctx,
             gib(p.kv_plan.bytes_per_token() * p.ctx), gib(p.kv_full.bytes_per_token() * p.ctx), elem == 2 ? "bf16" : "f32");
  if (p.fit) print_fit("fit         ", *p.fit, p, f, memory_gib, where, "");
  if (p.fit_stored)
    print_fit("fit (fp8)   ", *p.fit_stored, p, f, memory_gib, where, " (weights kept in FP8: not in this build yet)");
  return 0;
}

int run_info(const InfoFlags& f) {
  if (f.config_only) return run_memory_plan(f);
  if (f.ctx > 0 || f.gpus != 1 || f.gpu_memory_gib > 0)
    throw_bad_input("--ctx/--gpus/--gpu-memory", "belong to the memory plan: add --config-only");
  const Device device = resolve_device(f.device);
  // The cache's element size on that device: bf16 on CUDA's default path, f32 otherwise.
  const int elem = device.kind == DeviceKind::kCuda && device.precision == Precision::kBf16 ? 2 : 4;
  const std::string dir = resolve_model_dir(f.model);
  const ModelSpec s = load_model_spec(dir);
  const IndexPlan plan = resolve_plan(f.plan, s, dir);
  const WeightStore store = WeightStore::open_dir(dir);

  // What the loader reads: the schema's tensors (each layer's experts in the layout it has) and
  // their FP8 block scales. Anything else in the files is stored but never read: counted in the
  // totals and noted, not an error (the loader ignores it the same way).
  std::map<std::string, const TensorSpec*> schema;
  std::vector<TensorSpec> specs;
  for_each_global_tensor(s, [&](const TensorSpec& t) { specs.push_back(t); });
  for (int l = 0; l < s.num_layers; ++l) {
    LayerSchemaOptions o;
    o.experts = store.has(packed_experts_name(l)) ? ExpertLayout::kPacked : ExpertLayout::kPerExpert;
    for_each_layer_tensor(s, l, o, [&](const TensorSpec& t) { specs.push_back(t); });
  }
  for (const TensorSpec& t : specs) schema.emplace(t.name, &t);
  auto schema_tensor = [&](const std::string& name) -> const TensorSpec* {
    if (auto it = schema.find(name); it != schema.end()) return it->second;
    constexpr std::string_view kScale = "_scale_inv";
    if (name.size() > kScale.size() && name.compare(name.size() - kScale.size(), kScale.size(), kScale) == 0)
      if (auto it = schema.find(name.substr(0, name.size() - kScale.size())); it != schema.end()) return it->second;
    return nullptr;
  };
  auto is_mtp = [&](const std::string& name) {
    const auto l = tensor_layer_index(name);
    return l && *l >= s.num_layers && *l - s.num_layers < s.num_mtp_layers;
  };

  std::set<int> indexer_layers;
  size_t bytes = 0, indexer_bytes = 0;
  int64_t params = 0, indexer_params = 0;
  std::map<std::string, std::pair<int, size_t>> by_dtype;  // tensors and bytes per stored dtype
  std::vector<std::string> unread;                        // outside the schema (MTP layers aside)
  for (const auto& name : store.names()) {
    const TensorInfo& t = *store.find(name).info;
    bytes += t.nbytes;
    params += t.numel();
    auto& d = by_dtype[std::string(dtype_name(t.dtype))];
    ++d.first;
    d.second += t.nbytes;
    const TensorSpec* spec = schema_tensor(name);
    if (!spec) {
      if (!is_mtp(name)) unread.push_back(name);
      continue;
    }
    if (spec->role == TensorRole::kIndexer) {
      indexer_bytes += t.nbytes;
      indexer_params += t.numel();
      indexer_layers.insert(spec->layer);
    }
  }
  int moe_layers = 0;
  for (bool m : s.layer_is_moe) moe_layers += m;

  fmt::print("model        {}\n", dir);
  fmt::print("family       {}\n", s.model_type);
  fmt::print("layers       {} ({} dense MLP, {} MoE)\n", s.num_layers, s.num_layers - moe_layers, moe_layers);
  fmt::print("hidden       {}   vocab {}   max positions {}\n", s.hidden_size, s.vocab_size,
             s.max_position_embeddings);
  fmt::print("MLA          {} heads, q_lora {}, kv_lora {}, nope/rope/v {}/{}/{}, scale {:.6g}\n", s.num_heads,
             s.q_lora_rank, s.kv_lora_rank, s.qk_nope_head_dim, s.qk_rope_head_dim, s.v_head_dim,
             s.attention_scale());
  fmt::print("rope         {} theta {}", s.rope.type == RopeType::kYarn ? "yarn" : "default", s.rope.theta);
  if (s.rope.type == RopeType::kYarn)
    fmt::print(" factor {} original {} attention factor {:.6g}", s.rope.factor, s.rope.original_max_position,
               s.rope_attention_factor());
  fmt::print("\n");
  fmt::print("indexer      {} heads x {}, top-k {}, rope layout {}\n", s.index_n_heads, s.index_head_dim,
             s.index_topk, s.indexer_rope_layout() == RopeLayout::kInterleaved ? "interleaved" : "half-split");
  fmt::print("MoE          {} routed experts (top {}, groups {}/{}), {} shared, intermediate {}, dense {}\n",
             s.n_routed_experts, s.num_experts_per_tok, s.topk_group, s.n_group, s.n_shared_experts,
             s.moe_intermediate_size, s.intermediate_size);
  fmt::print("plan         {} ({} F / {} layers)\n", plan.pattern(), plan.num_full(), plan.num_layers());
  fmt::print("indexers     present in {} layers of the checkpoint\n", indexer_layers.size());
  fmt::print("parameters   {} ({:.2f} M), indexer {:.2f} M ({:.2f} %)\n", params, params / 1e6,
             indexer_params / 1e6, params ? 100.0 * indexer_params / params : 0.0);
  const auto full_kv = kv_cache_footprint(s, IndexPlan::full(s.num_layers), elem);
  const auto plan_kv = kv_cache_footprint(s, plan, elem);
  print_kv("all F", full_kv);
  print_kv("plan ", plan_kv);
  fmt::print("KV saved     {} B/token ({:.1f} %) by the plan; at {} tokens: {:.1f} MiB vs {:.1f} MiB ({} on {})\n",
             full_kv.bytes_per_token() - plan_kv.bytes_per_token(),
             100.0 * (full_kv.bytes_per_token() - plan_kv.bytes_per_token()) / full_kv.bytes_per_token(),
             s.max_position_embeddings, plan_kv.bytes_per_token() * double(s.max_position_embeddings) / 1048576.0,
             full_kv.bytes_per_token() * double(s.max_position_embeddings) / 1048576.0, elem == 2 ? "bf16" : "f32",
             device_name(device));
  fmt::print("weights      {} tensors in {} file(s), {:.2f} MiB (indexer {:.2f} MiB)\n", store.names().size(),
             store.files().size(), bytes / 1048576.0, indexer_bytes / 1048576.0);
  std::string dtypes;
  for (const auto& [name, d] : by_dtype)
    dtypes += fmt::format("{}{} {} tensors {:.2f} MiB", dtypes.empty() ? "" : ", ", name, d.first, d.second / 1048576.0);
  fmt::print("dtypes       {}\n", dtypes);
  if (s.quant.fp8)
    fmt::print("quantized    block FP8 (e4m3, {} x {} blocks{})\n", s.quant.block_rows, s.quant.block_cols,
               s.quant.ue8m0 ? ", ue8m0 power-of-two scales" : "");
  if (!unread.empty())
    fmt::print("not loaded   {} tensor(s) outside the schema, not loaded: {}{}\n", unread.size(),
               quote_for_message(unread.front()),
               unread.size() > 1 ? fmt::format(" and {} more", unread.size() - 1) : std::string());
  if (s.num_mtp_layers > 0)
    fmt::print("MTP          {} layer(s) after the {} main ones: stored, not run, not in the plan\n", s.num_mtp_layers,
               s.num_layers);
  return 0;
}

}  // namespace

Runner register_info(CLI::App& app) {
  auto f = std::make_shared<InfoFlags>();
  app.add_option("-m,--model", f->model, "model directory (default: the embedded model)");
  app.add_option("--plan", f->plan, "plan to report (default: the config's)")->check(non_empty());
  add_device_flags(app, f->device);
  app.add_flag("--config-only", f->config_only,
               "the memory plan from config.json alone (no weights read): weights per dtype, KV bytes per token, "
               "tokens that fit");
  app.add_option("--ctx", f->ctx, "with --config-only: tokens per sequence (default: max positions)")
      ->check(integer_in(1, kMaxTokensFlag));
  app.add_option("--gpus", f->gpus, "with --config-only: devices the model is spread over (default 1)")
      ->check(integer_in(1, 1024));
  app.add_option("--gpu-memory", f->gpu_memory_gib,
                 "with --config-only: plan for GPUs of this many GiB each instead of asking the device")
      ->check(CLI::Range(0.001, 1.0e6));
  app.add_option("--reserve", f->reserve_gib,
                 "with --config-only: GiB per device kept for activations and workspace (default 2)")
      ->check(CLI::Range(0.0, 1.0e6));
  return [f] { return run_info(*f); };
}

}  // namespace indexcache::cli
