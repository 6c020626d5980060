#include "bench/bench_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>

#include "bench/presets.h"

#ifndef INDEXCACHE_GIT_COMMIT
#define INDEXCACHE_GIT_COMMIT "unknown"
#endif

namespace indexcache::bench {

namespace {

// Absorbed MLA: keys are the kv latent plus the roped part, values the latent.
double attention_flops_per_pair(const ModelSpec& s) {
  return 2.0 * s.num_heads * ((s.kv_lora_rank + s.qk_rope_head_dim) + s.kv_lora_rank);
}
double indexer_flops_per_pair(const ModelSpec& s) { return 2.0 * s.index_n_heads * s.index_head_dim; }

// Selected keys summed over queries at positions [p0, p1): min(p + 1, k) each.
double selected_pairs(int64_t p0, int64_t p1, int64_t k) {
  double n = 0;
  const int64_t split = std::clamp<int64_t>(k - 1, p0, p1);  // positions below split see p+1 < k keys
  // sum_{p=p0}^{split-1} (p+1)
  n += 0.5 * static_cast<double>(split - p0) * static_cast<double>(p0 + 1 + split);
  n += static_cast<double>(p1 - split) * static_cast<double>(k);
  return n;
}

// Visible (causal) keys summed over queries at positions [p0, p1): p + 1 each.
double visible_pairs(int64_t p0, int64_t p1) {
  return 0.5 * static_cast<double>(p1 - p0) * static_cast<double>(p0 + 1 + p1);
}

std::optional<double> ratio(double num, double den) {
  if (!(den > 0) || !std::isfinite(num) || !std::isfinite(den)) return std::nullopt;
  return num / den;
}

std::string num(std::optional<double> v, const char* fmt = "%.4g") {
  if (!v || !std::isfinite(*v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, *v);
  return buf;
}

std::string pct(std::optional<double> v) {
  if (!v || !std::isfinite(*v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f %%", 100.0 * *v);
  return buf;
}

std::string ctx_label(int64_t c) {
  return c % 1024 == 0 ? std::to_string(c / 1024) + "K" : std::to_string(c);
}

// Derived figures of a calibrate run, shared by both renderings.
struct CalibrateSummary {
  std::optional<double> median_step_s, mean_step_s, base_s, forwards_ratio, naive_over_run, final_loss;
};

CalibrateSummary summarize(const CalibrateResult& c) {
  CalibrateSummary s;
  if (!c.steps.empty()) {
    std::vector<double> t;
    double total = 0;
    for (const auto& st : c.steps) {
      t.push_back(st.seconds);
      total += st.seconds;
    }
    std::sort(t.begin(), t.end());
    s.median_step_s = t.size() % 2 ? t[t.size() / 2] : 0.5 * (t[t.size() / 2 - 1] + t[t.size() / 2]);
    s.mean_step_s = total / static_cast<double>(t.size());
    s.base_s = std::max(0.0, c.seconds - total);
    s.final_loss = c.steps.back().loss;
  } else {
    s.base_s = c.seconds;
    s.final_loss = c.full_loss;
  }
  s.forwards_ratio = ratio(static_cast<double>(c.layer_forwards), static_cast<double>(c.naive_layer_forwards));
  s.naive_over_run = ratio(static_cast<double>(c.naive_layer_forwards), static_cast<double>(c.layer_forwards));
  return s;
}

// Derived figures of one row, shared by both renderings.
struct Derived {
  std::optional<double> prefill_s, speedup, decode_tok_s;
  std::optional<double> prefill_dsa_share;  // (indexer + topk) / prefill wall
  std::optional<double> decode_dsa_share;   // (indexer + topk) / decode class total
  std::optional<double> indexer_tflops, indexer_peak, topk_share;
  std::optional<double> attention_tflops, attention_peak;
};

Derived derive(const BenchReport& r, const BenchRow& row) {
  Derived d;
  const std::optional<double> peak = r.machine.bf16_peak_tflops;
  if (row.prefill) {
    const PhaseStats& p = *row.prefill;
    d.prefill_s = p.seconds;
    for (const auto& other : r.rows)
      if (other.ctx == row.ctx && other.full_layers == r.spec.num_layers && other.prefill)
        d.speedup = ratio(other.prefill->seconds, p.seconds);
    if (p.classes) {
      const ClassSeconds& c = *p.classes;
      d.prefill_dsa_share = ratio(c.indexer + c.topk, p.seconds);
      d.topk_share = ratio(c.topk, c.indexer + c.topk);
      d.indexer_tflops = ratio(p.flops.indexer / 1e12, c.indexer);
      d.attention_tflops = ratio(p.flops.attention / 1e12, c.attention);
      // Hopper's dense e4m3 matrix rate is twice its bf16 rate.
      if (peak && d.indexer_tflops) d.indexer_peak = ratio(*d.indexer_tflops, *peak * (r.indexer_fp8 ? 2.0 : 1.0));
      if (peak && d.attention_tflops) d.attention_peak = ratio(*d.attention_tflops, *peak);
    }
  }
  if (row.decode) {
    const PhaseStats& p = *row.decode;
    d.decode_tok_s = ratio(static_cast<double>(p.tokens), p.seconds);
    if (p.classes) {
      const ClassSeconds& c = *p.classes;
      d.decode_dsa_share = ratio(c.indexer + c.topk, c.gemm + c.moe + c.attention + c.indexer + c.topk + c.other);
    }
  }
  return d;
}

std::string json_str(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\t': o += "\\t"; break;
      case '\r': o += "\\r"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          o += buf;
        } else {
          o += static_cast<char>(c);
        }
    }
  }
  return o + "\"";
}

std::string json_num(std::optional<double> v) {
  if (!v || !std::isfinite(*v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", *v);
  return buf;
}
std::string json_int(int64_t v) { return std::to_string(v); }

std::string json_classes(const std::optional<ClassSeconds>& c) {
  if (!c) return "null";
  return "{\"gemm\": " + json_num(c->gemm) + ", \"moe\": " + json_num(c->moe) + ", \"attention\": " +
         json_num(c->attention) + ", \"indexer\": " + json_num(c->indexer) + ", \"topk\": " + json_num(c->topk) +
         ", \"other\": " + json_num(c->other) + "}";
}

std::string json_phase(const std::optional<PhaseStats>& p) {
  if (!p) return "null";
  return "{\"seconds\": " + json_num(p->seconds) + ", \"tokens\": " + json_int(p->tokens) +
         ", \"classes\": " + json_classes(p->classes) + ", \"flops\": {\"indexer\": " + json_num(p->flops.indexer) +
         ", \"attention\": " + json_num(p->flops.attention) + "}}";
}

std::string shape_line(const BenchReport& r) {
  const ModelSpec& s = r.spec;
  int dense = 0;
  for (bool m : s.layer_is_moe) dense += !m;
  char buf[1024];
  std::snprintf(buf, sizeof buf,
                "%s, %d layers (of %d), hidden %d, %d heads, q_lora %d, kv_lora %d, nope/rope/v %d/%d/%d, "
                "%d routed experts (of %d) top-%d + %d shared, moe_intermediate %d, %d dense layers "
                "(intermediate %d), indexer %d x %d top-%d, vocab %d, max positions %d",
                s.model_type.c_str(), s.num_layers, r.preset_layers, s.hidden_size, s.num_heads, s.q_lora_rank,
                s.kv_lora_rank, s.qk_nope_head_dim, s.qk_rope_head_dim, s.v_head_dim, s.n_routed_experts,
                r.preset_experts, s.num_experts_per_tok, s.n_shared_experts, s.moe_intermediate_size, dense,
                s.intermediate_size, s.index_n_heads, s.index_head_dim, s.index_topk, s.vocab_size,
                s.max_position_embeddings);
  return buf;
}

}  // namespace

DsaFlops count_prefill_flops(const ModelSpec& s, const IndexPlan& plan, int64_t context) {
  DsaFlops f;
  f.indexer = indexer_flops_per_pair(s) * visible_pairs(0, context) * plan.num_full();
  f.attention = attention_flops_per_pair(s) * selected_pairs(0, context, s.index_topk) * s.num_layers;
  return f;
}

DsaFlops count_decode_flops(const ModelSpec& s, const IndexPlan& plan, int64_t context, int64_t steps) {
  DsaFlops f;
  f.indexer = indexer_flops_per_pair(s) * visible_pairs(context, context + steps) * plan.num_full();
  f.attention = attention_flops_per_pair(s) * selected_pairs(context, context + steps, s.index_topk) * s.num_layers;
  return f;
}

std::string build_commit() { return INDEXCACHE_GIT_COMMIT; }

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

namespace {

// The lines every markdown report starts with: preset, shapes, weights, device, and the measured
// peak when `peak` (the speed matrix; calibrate reports no % of peak).
std::string markdown_header(const BenchReport& r, bool peak) {
  std::string o;
  const MachineInfo& m = r.machine;
  o += "- preset: " + r.preset + " (" + r.preset_description + ")\n";
  o += "- shapes: " + shape_line(r) + "\n";
  {
    char buf[256];
    std::snprintf(buf, sizeof buf, "- weights: %.3f B parameters (indexers %.1f %%), %s as bf16",
                  r.parameters / 1e9, r.parameters > 0 ? 100.0 * r.indexer_parameters / r.parameters : 0.0,
                  format_bytes(static_cast<double>(r.weight_bytes)).c_str());
    o += buf;
    if (r.device_weight_bytes)
      o += "; on the device " + format_bytes(static_cast<double>(*r.device_weight_bytes));
    o += "\n";
  }
  if (m.device == "cuda") {
    char buf[512];
    std::snprintf(buf, sizeof buf, "- device: cuda, %s, %d SMs, sm_%d%d, %.1f GiB; driver %s; CUDA runtime %s\n",
                  m.name.c_str(), m.sm_count, m.cc_major, m.cc_minor, m.memory_gib, m.driver_version.c_str(),
                  m.runtime_version.c_str());
    o += buf;
  } else {
    o += "- device: cpu, " + (m.name.empty() ? std::string("unknown CPU") : m.name) + ", " +
         std::to_string(m.threads) + " threads, f32 compute\n";
  }
  if (!peak) return o;
  if (m.bf16_peak_tflops || m.fp8_peak_tflops)
    o += "- measured matrix peak: bf16 " + num(m.bf16_peak_tflops, "%.0f") + " TFLOP/s, fp8 " +
         (m.fp8_peak_tflops ? num(m.fp8_peak_tflops, "%.0f") + " TFLOP/s" : std::string("n/a")) + "\n";
  else
    o += "- measured matrix peak: n/a (% of peak columns need the GPU)\n";
  return o;
}

std::string calibrate_markdown(const BenchReport& r);

}  // namespace

std::string serve_markdown(const BenchReport& r);
std::string serve_json(const BenchReport& r);

std::string format_markdown(const BenchReport& r) {
  if (r.calibrate) return calibrate_markdown(r);
  if (!r.serve.empty()) return serve_markdown(r);
  const MachineInfo& m = r.machine;
  std::string o = "## indexcache bench: " + r.preset + " on " + (m.name.empty() ? m.device : m.name) + "\n\n";
  o += markdown_header(r, /*peak=*/true);
  o += "- run: chunk " + std::to_string(r.chunk) + ", decode steps " + std::to_string(r.decode_steps) +
       ", repeats " + std::to_string(r.repeat) + " (median)" +
       (m.device == "cuda" ? ", engine " + r.engine + ", CUDA graphs " + (r.cuda_graphs ? "on" : "off") +
                                 ", indexer " +
                                 (r.indexer_fp8 ? std::string(r.indexer_hadamard ? "e4m3 after a Hadamard rotation" : "e4m3") +
                                                      " (% peak of 2x the bf16 peak)"
                                                : std::string("bf16"))
                           : std::string()) +
       ", seed " + std::to_string(r.seed) + "\n";
  o += "- commit " + r.commit + ", " + r.date + ", command `indexcache bench " + r.command + "`\n\n";

  o += "| ctx | plan | F layers | prefill s | speed-up | decode tok/s | prefill idx+topk | decode idx+topk | "
       "indexer TFLOP/s | indexer % peak | top-k % of idx | attn TFLOP/s | attn % peak | gemm s | moe s | "
       "attn s | indexer s | topk s | other s |\n";
  o += "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& row : r.rows) {
    const Derived d = derive(r, row);
    std::optional<ClassSeconds> c;
    if (row.prefill) c = row.prefill->classes;
    auto cls = [&](double ClassSeconds::*f) { return c ? num((*c).*f) : std::string("n/a"); };
    o += "| " + ctx_label(row.ctx) + " | " + row.plan + " | " + std::to_string(row.full_layers) + "/" +
         std::to_string(r.spec.num_layers) + " | " + num(d.prefill_s) + " | " +
         (d.speedup ? num(d.speedup, "%.2f") + "x" : std::string("n/a")) + " | " + num(d.decode_tok_s, "%.1f") +
         " | " + pct(d.prefill_dsa_share) + " | " + pct(d.decode_dsa_share) + " | " + num(d.indexer_tflops, "%.3g") +
         " | " + pct(d.indexer_peak) + " | " + pct(d.topk_share) + " | " + num(d.attention_tflops, "%.3g") + " | " +
         pct(d.attention_peak) + " | " + cls(&ClassSeconds::gemm) + " | " + cls(&ClassSeconds::moe) + " | " +
         cls(&ClassSeconds::attention) + " | " + cls(&ClassSeconds::indexer) + " | " + cls(&ClassSeconds::topk) +
         " | " + cls(&ClassSeconds::other) + " |\n";
  }
  o += "\nprefill s: one request of ctx tokens from position 0 (chunked); speed-up: the full plan's prefill "
       "time at that ctx over this row's; decode tok/s: single-token steps after ctx tokens, one request; "
       "idx+topk: share of the phase's time in the indexer score kernel and the top-k; TFLOP/s: counted "
       "work of the kernel over its measured time (indexer: 2*Hi*Di per causal pair, F layers; attention: "
       "2*heads*((kv_lora+rope)+kv_lora) per selected pair, absorbed MLA); % peak: of the measured bf16 matrix peak; "
       "class seconds: prefill.\n";
  return o;
}

namespace {

// The fields every JSON report starts with (after "{"): tool, commit, date, command, preset, machine.
std::string json_header(const BenchReport& r) {
  const ModelSpec& s = r.spec;
  const MachineInfo& m = r.machine;
  std::string o;
  o += "  \"tool\": \"indexcache bench\",\n";
  o += "  \"commit\": " + json_str(r.commit) + ",\n";
  o += "  \"date\": " + json_str(r.date) + ",\n";
  o += "  \"command\": " + json_str("indexcache bench " + r.command) + ",\n";
  o += "  \"preset\": {\"name\": " + json_str(r.preset) + ", \"description\": " + json_str(r.preset_description) +
       ", \"model_type\": " + json_str(s.model_type) + ", \"layers\": " + json_int(s.num_layers) +
       ", \"preset_layers\": " + json_int(r.preset_layers) + ", \"hidden_size\": " + json_int(s.hidden_size) +
       ", \"heads\": " + json_int(s.num_heads) + ", \"q_lora_rank\": " + json_int(s.q_lora_rank) +
       ", \"kv_lora_rank\": " + json_int(s.kv_lora_rank) + ", \"qk_nope_head_dim\": " + json_int(s.qk_nope_head_dim) +
       ", \"qk_rope_head_dim\": " + json_int(s.qk_rope_head_dim) + ", \"v_head_dim\": " + json_int(s.v_head_dim) +
       ", \"routed_experts\": " + json_int(s.n_routed_experts) + ", \"preset_experts\": " +
       json_int(r.preset_experts) + ", \"experts_per_token\": " + json_int(s.num_experts_per_tok) +
       ", \"shared_experts\": " + json_int(s.n_shared_experts) + ", \"moe_intermediate_size\": " +
       json_int(s.moe_intermediate_size) + ", \"intermediate_size\": " + json_int(s.intermediate_size) +
       ", \"index_n_heads\": " + json_int(s.index_n_heads) + ", \"index_head_dim\": " + json_int(s.index_head_dim) +
       ", \"index_topk\": " + json_int(s.index_topk) + ", \"vocab_size\": " + json_int(s.vocab_size) +
       ", \"max_position_embeddings\": " + json_int(s.max_position_embeddings) + ", \"parameters\": " +
       json_int(r.parameters) + ", \"indexer_parameters\": " + json_int(r.indexer_parameters) +
       ", \"weight_bytes_bf16\": " + json_int(r.weight_bytes) + ", \"device_weight_bytes\": " +
       (r.device_weight_bytes ? json_int(*r.device_weight_bytes) : std::string("null")) + "},\n";
  o += "  \"machine\": {\"device\": " + json_str(m.device) + ", \"name\": " + json_str(m.name) +
       ", \"sm_count\": " + json_int(m.sm_count) + ", \"compute_capability\": " +
       json_str(std::to_string(m.cc_major) + "." + std::to_string(m.cc_minor)) + ", \"memory_gib\": " +
       json_num(m.memory_gib) + ", \"threads\": " + json_int(m.threads) + ", \"driver_version\": " +
       json_str(m.driver_version) + ", \"runtime_version\": " + json_str(m.runtime_version) +
       ", \"bf16_peak_tflops\": " + json_num(m.bf16_peak_tflops) + ", \"fp8_peak_tflops\": " +
       json_num(m.fp8_peak_tflops) + "},\n";
  return o;
}

std::string calibrate_json(const BenchReport& r);

}  // namespace

std::string format_json(const BenchReport& r) {
  if (r.calibrate) return calibrate_json(r);
  if (!r.serve.empty()) return serve_json(r);
  std::string o = "{\n" + json_header(r);
  o += "  \"run\": {\"chunk\": " + json_int(r.chunk) + ", \"decode_steps\": " + json_int(r.decode_steps) +
       ", \"repeat\": " + json_int(r.repeat) + ", \"engine\": " + json_str(r.engine) + ", \"cuda_graphs\": " + (r.cuda_graphs ? "true" : "false") +
       ", \"indexer\": " + (r.indexer_fp8 ? (r.indexer_hadamard ? "\"fp8-hadamard\"" : "\"fp8\"") : "\"bf16\"") +
       ", \"seed\": " + std::to_string(r.seed) + "},\n";
  o += "  \"rows\": [";
  for (size_t i = 0; i < r.rows.size(); ++i) {
    const BenchRow& row = r.rows[i];
    const Derived d = derive(r, row);
    o += i ? ",\n    " : "\n    ";
    o += "{\"ctx\": " + json_int(row.ctx) + ", \"plan\": " + json_str(row.plan) + ", \"pattern\": " +
         json_str(row.pattern) + ", \"full_layers\": " + json_int(row.full_layers) + ", \"prefill_s\": " +
         json_num(d.prefill_s) + ", \"speedup_vs_full\": " + json_num(d.speedup) + ", \"decode_tok_s\": " +
         json_num(d.decode_tok_s) + ", \"prefill_indexer_topk_share\": " + json_num(d.prefill_dsa_share) +
         ", \"decode_indexer_topk_share\": " + json_num(d.decode_dsa_share) + ", \"indexer_tflops\": " +
         json_num(d.indexer_tflops) + ", \"indexer_peak_fraction\": " + json_num(d.indexer_peak) +
         ", \"topk_share_of_indexer\": " + json_num(d.topk_share) + ", \"attention_tflops\": " +
         json_num(d.attention_tflops) + ", \"attention_peak_fraction\": " + json_num(d.attention_peak) +
         ",\n     \"prefill\": " + json_phase(row.prefill) + ",\n     \"decode\": " + json_phase(row.decode) + "}";
  }
  o += r.rows.empty() ? "]\n" : "\n  ]\n";
  o += "}\n";
  return o;
}

namespace {

std::string calibrate_markdown(const BenchReport& r) {
  const CalibrateResult& c = *r.calibrate;
  const MachineInfo& m = r.machine;
  const int layers = r.spec.num_layers;
  std::string o = "## indexcache bench --mode calibrate: " + r.preset + " on " + (m.name.empty() ? m.device : m.name) +
                  "\n\n";
  o += markdown_header(r, /*peak=*/false);
  o += "- search: the greedy IndexCache search (calibrate()) on the Session, backend " + c.backend + "; " +
       std::to_string(c.windows) + " windows x " + std::to_string(c.ctx) + " random token ids (seed " +
       std::to_string(r.seed) + "); stop at " + std::to_string(c.keep_layers) + " F layers of " +
       std::to_string(layers) + "\n";
  o += "- commit " + r.commit + ", " + r.date + ", command `indexcache bench " + r.command + "`\n\n";
  o += "| step | layer -> S | loss | vs all-F | seconds | plan |\n|---:|---:|---:|---:|---:|---|\n";
  for (size_t i = 0; i < c.steps.size(); ++i) {
    const CalibrateStepResult& st = c.steps[i];
    o += "| " + std::to_string(i + 1) + " | " + std::to_string(st.flipped) + " | " + num(st.loss, "%.5f") + " | " +
         pct(ratio(st.loss - c.full_loss, c.full_loss)) + " | " + num(st.seconds) + " | `" + st.plan + "` |\n";
  }
  const CalibrateSummary sum = summarize(c);
  o += "\n- steps: " + std::to_string(c.steps.size()) + ", seconds per step: median " + num(sum.median_step_s) +
       ", mean " + num(sum.mean_step_s) + "; search total " + num(c.seconds) + " s (the all-F base run and its "
       "traces " + num(sum.base_s) + " s)\n";
  o += "- layer-forwards: " + std::to_string(c.layer_forwards) + " vs naive " + std::to_string(c.naive_layer_forwards) +
       " (" + pct(sum.forwards_ratio) + " of naive; naive / run " + num(sum.naive_over_run, "%.2f") + "x)\n";
  o += "- plan found: `" + c.plan + "` (" + std::to_string(std::count(c.plan.begin(), c.plan.end(), 'F')) + "/" +
       std::to_string(layers) + " F layers), loss " + num(sum.final_loss, "%.5f") + " vs all-F " +
       num(c.full_loss, "%.5f") + "; stop: " + c.stop_reason + "\n";
  o += "- memory: backend (" + std::string(m.device == "cuda" ? "device memory" : "host memory the CPU backend allocated") +
       ") " + format_bytes(static_cast<double>(c.device_bytes_in_use)) + " in use after the search, at most " +
       format_bytes(static_cast<double>(c.device_bytes_in_use_peak)) + " during it" +
       (c.gpu_used_peak ? "; GPU memory in use (all of it, cudaMemGetInfo) at most " +
                              format_bytes(static_cast<double>(*c.gpu_used_peak))
                        : std::string()) +
       "; host peak RSS " + format_bytes(static_cast<double>(c.host_peak_rss_bytes)) + "\n";
  o += "\nloss: mean next-token loss over the windows (random weights and tokens: the plan is an artefact; the "
       "times and counts are the point); layer-forwards: layers run by the search, resuming each candidate at its "
       "flipped layer, against a full forward per candidate per window (naive); memory during the search: sampled "
       "after each candidate.\n";
  return o;
}

std::string calibrate_json(const BenchReport& r) {
  const CalibrateResult& c = *r.calibrate;
  const CalibrateSummary sum = summarize(c);
  std::string o = "{\n" + json_header(r);
  o += "  \"mode\": \"calibrate\",\n";
  o += "  \"calibrate\": {\"backend\": " + json_str(c.backend) + ", \"ctx\": " + json_int(c.ctx) +
       ", \"windows\": " + json_int(c.windows) + ", \"keep_layers\": " + json_int(c.keep_layers) +
       ", \"seed\": " + std::to_string(r.seed) + ", \"full_loss\": " + json_num(c.full_loss) +
       ",\n    \"steps\": [";
  for (size_t i = 0; i < c.steps.size(); ++i) {
    const CalibrateStepResult& st = c.steps[i];
    o += (i ? ",\n      " : "\n      ");
    o += "{\"step\": " + json_int(static_cast<int64_t>(i + 1)) + ", \"flipped\": " + json_int(st.flipped) +
         ", \"loss\": " + json_num(st.loss) + ", \"seconds\": " + json_num(st.seconds) + ", \"plan\": " +
         json_str(st.plan) + "}";
  }
  o += c.steps.empty() ? "],\n" : "\n    ],\n";
  o += "    \"steps_taken\": " + json_int(static_cast<int64_t>(c.steps.size())) + ", \"seconds_per_step_median\": " +
       json_num(sum.median_step_s) + ", \"seconds_per_step_mean\": " + json_num(sum.mean_step_s) +
       ", \"search_seconds\": " + json_num(c.seconds) + ", \"base_run_seconds\": " + json_num(sum.base_s) +
       ",\n    \"layer_forwards\": " + json_int(c.layer_forwards) + ", \"naive_layer_forwards\": " +
       json_int(c.naive_layer_forwards) + ", \"layer_forwards_ratio\": " + json_num(sum.forwards_ratio) +
       ",\n    \"plan\": " + json_str(c.plan) + ", \"full_layers\": " +
       json_int(std::count(c.plan.begin(), c.plan.end(), 'F')) + ", \"final_loss\": " + json_num(sum.final_loss) +
       ", \"stop_reason\": " + json_str(c.stop_reason) + ",\n    \"device_bytes_in_use\": " +
       json_int(c.device_bytes_in_use) + ", \"device_bytes_in_use_peak\": " + json_int(c.device_bytes_in_use_peak) +
       ", \"gpu_used_peak_bytes\": " + (c.gpu_used_peak ? json_int(*c.gpu_used_peak) : std::string("null")) +
       ", \"host_peak_rss_bytes\": " + json_int(c.host_peak_rss_bytes) + "}\n";
  o += "}\n";
  return o;
}

}  // namespace

std::string serve_markdown(const BenchReport& r) {
  const MachineInfo& m = r.machine;
  std::string o = "## indexcache bench --mode serve: " + r.preset + " on " + (m.name.empty() ? m.device : m.name) + "\n\n";
  o += markdown_header(r, /*peak=*/false);
  o += "- run: continuous batching in one process (Scheduler over BatchSession), chunk " + std::to_string(r.chunk) +
       " tokens per step, repeats " + std::to_string(r.repeat) + " (the median run by wall time), seed " +
       std::to_string(r.seed) + "\n";
  o += "- commit " + r.commit + ", " + r.date + ", command `indexcache bench " + r.command + "`\n\n";
  o += "| ctx | plan | F layers | clients | out tokens | KV pages | wall s | total tok/s | decode tok/s | "
       "TTFT p50 s | TTFT p90 s | TTFT p99 s | ITL p50 ms | ITL p90 ms | ITL p99 ms | idx+topk |\n";
  o += "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const ServeRow& w : r.serve)
    o += "| " + ctx_label(w.ctx) + " | " + w.plan + " | " + std::to_string(w.full_layers) + "/" +
         std::to_string(r.spec.num_layers) + " | " + std::to_string(w.clients) + " | " +
         std::to_string(w.output_tokens) + " | " + std::to_string(w.pages) + " x " + std::to_string(w.page_tokens) +
         " | " + num(w.seconds) + " | " + num(w.total_tok_s, "%.1f") + " | " + num(w.decode_tok_s, "%.1f") + " | " +
         num(w.ttft_p50) + " | " + num(w.ttft_p90) + " | " + num(w.ttft_p99) + " | " + num(w.itl_p50 * 1e3) +
         " | " + num(w.itl_p90 * 1e3) + " | " + num(w.itl_p99 * 1e3) + " | " + pct(w.indexer_share) + " |\n";
  o += "\ntotal tok/s: generated tokens over the wall time from the first submission to the last token; decode "
       "tok/s: tokens generated while every request was decoding (from the last first token to the first last "
       "token), over that time; TTFT: submission to first token; ITL: between a request's tokens; idx+topk: "
       "share of the profiled steps' time (one step in 4, every op synchronised) in indexer scores and top-k.\n";
  return o;
}

std::string serve_json(const BenchReport& r) {
  std::string o = "{\n" + json_header(r);
  o += "  \"run\": {\"mode\": \"serve\", \"chunk\": " + json_int(r.chunk) + ", \"repeat\": " + json_int(r.repeat) +
       ", \"seed\": " + std::to_string(r.seed) + "},\n";
  o += "  \"serve\": [";
  for (size_t i = 0; i < r.serve.size(); ++i) {
    const ServeRow& w = r.serve[i];
    o += i ? ",\n    " : "\n    ";
    o += "{\"ctx\": " + json_int(w.ctx) + ", \"plan\": " + json_str(w.plan) + ", \"pattern\": " + json_str(w.pattern) +
         ", \"full_layers\": " + json_int(w.full_layers) + ", \"clients\": " + json_int(w.clients) +
         ", \"output_tokens\": " + json_int(w.output_tokens) + ", \"pages\": " + json_int(w.pages) +
         ", \"page_tokens\": " + json_int(w.page_tokens) + ", \"seconds\": " + json_num(w.seconds) +
         ", \"generated\": " + json_int(w.generated) + ", \"total_tok_s\": " + json_num(w.total_tok_s) +
         ", \"decode_tok_s\": " + json_num(w.decode_tok_s) + ", \"ttft_s\": {\"p50\": " + json_num(w.ttft_p50) +
         ", \"p90\": " + json_num(w.ttft_p90) + ", \"p99\": " + json_num(w.ttft_p99) + "}, \"itl_s\": {\"p50\": " +
         json_num(w.itl_p50) + ", \"p90\": " + json_num(w.itl_p90) + ", \"p99\": " + json_num(w.itl_p99) +
         "}, \"indexer_topk_share\": " + json_num(w.indexer_share) + "}";
  }
  o += r.serve.empty() ? "]\n" : "\n  ]\n";
  o += "}\n";
  return o;
}

}  // namespace indexcache::bench
