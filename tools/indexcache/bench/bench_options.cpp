#include "bench/bench_options.h"

#include "bench/bench_run.h"

#include <algorithm>
#include <cctype>
#include <limits>

#include "indexcache/error.h"

namespace indexcache::bench {

namespace {

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// A non-negative decimal integer of at most 18 digits, or nothing.
bool parse_u64(const std::string& s, uint64_t& v) {
  if (s.empty() || s.size() > 18) return false;
  v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return true;
}

}  // namespace

std::vector<std::string> split_list(const std::string& text, const std::string& flag) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    std::string item = trim(text.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (item.empty()) throw_bad_input(flag + " " + quote_for_message(text), "empty item in the comma list");
    out.push_back(item);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

int64_t parse_token_count(const std::string& raw, const std::string& flag) {
  std::string s = trim(raw);
  int64_t mult = 1;
  if (!s.empty() && (s.back() == 'K' || s.back() == 'k')) {
    mult = 1024;
    s.pop_back();
  }
  uint64_t v = 0;
  if (!parse_u64(s, v) || v == 0 || v > (uint64_t{1} << 40) / static_cast<uint64_t>(mult))
    throw_bad_input(flag + " " + quote_for_message(raw),
                    "expected a positive token count such as 4096 or 10K (K = 1024)");
  return static_cast<int64_t>(v) * mult;
}

int64_t BenchSetup::max_context() const {
  int64_t m = 0;
  for (int64_t c : options.ctx) m = std::max(m, c);
  return m + (options.decode || options.serve ? decode_steps : 0);
}

BenchSetup resolve_bench(const BenchOptions& o) {
  const bool cuda = o.device.kind == DeviceKind::kCuda;
  if (o.device.threads < 0) throw_bad_input("--threads " + std::to_string(o.device.threads), "must be >= 0");
  if (o.device.gpu < 0) throw_bad_input("--gpu " + std::to_string(o.device.gpu), "must be >= 0");
  if (o.indexer_fp8 && !cuda) throw_bad_input("--indexer fp8", "needs --device cuda (the CPU indexer is f32)");
  if (o.calibrate) {
    if (o.prefill || o.decode) throw_bad_input("--mode calibrate", "runs alone (not with prefill or decode)");
    if (o.plans_given) throw_bad_input("--plan", "--mode calibrate searches for the plan; leave --plan out");
    if (o.indexer_fp8) throw_bad_input("--indexer fp8", "is the GPU runner's; --mode calibrate runs the Session");
    if (o.ctx.size() != 1)
      throw_bad_input("--ctx", "--mode calibrate takes one context (the window length), not " +
                                   std::to_string(o.ctx.size()));
    if (o.ctx.front() < 2) throw_bad_input("--ctx", "--mode calibrate needs windows of at least 2 tokens");
  } else if (o.serve) {
    if (o.prefill || o.decode) throw_bad_input("--mode serve", "runs alone (not with prefill or decode)");
    if (cuda)
      throw_bad_input("--mode serve", "the batched engine's paged KV cache is CPU-only so far (CUDA: issue 13)");
    if (o.clients < 1) throw_bad_input("--clients", "must be >= 1");
  } else if (cuda && o.engine == Engine::kRunner && o.device.precision != Precision::kBf16) {
    throw_bad_input("--precision f32", "the GPU runner is bf16 only; use --engine session for the f32 path");
  }
  const std::string preset = o.preset.empty() ? (cuda ? "glm47flash-dsa" : "dsa-mini") : o.preset;
  BenchSetup s{o, make_preset(preset, o.layers, o.experts), {}, 0, 0, 0};
  s.decode_steps = o.decode_steps > 0 ? o.decode_steps : (cuda ? 32 : 16);
  s.chunk = o.chunk > 0 ? o.chunk : (cuda ? 8192 : 2048);
  if (s.chunk > std::numeric_limits<int>::max()) throw_bad_input("--chunk", "too large");
  const int64_t max_pos = s.preset.spec.max_position_embeddings;
  for (int64_t c : o.ctx) {
    if (c > max_pos)
      throw_bad_input("--ctx " + std::to_string(c),
                      "longer than the preset's max_position_embeddings " + std::to_string(max_pos));
    if ((o.decode || o.serve) && c + s.decode_steps > max_pos)
      throw_bad_input("--ctx " + std::to_string(c),
                      "plus " + std::to_string(s.decode_steps) + " decode steps exceeds max_position_embeddings " +
                          std::to_string(max_pos));
  }
  const int layers = s.preset.spec.num_layers;
  if (o.calibrate) {
    // calibrate's default stop (--keep 0.25): a quarter of the layers, rounded up, at least 1.
    s.keep_layers = o.keep_layers > 0 ? o.keep_layers : std::max(1, (layers + 3) / 4);
    if (s.keep_layers > layers)
      throw_bad_input("--keep-layers " + std::to_string(s.keep_layers),
                      "is outside [1, " + std::to_string(layers) + "] (the preset's layers)");
    return s;
  }
  for (const auto& text : o.plans) s.plans.push_back({text, IndexPlan::parse(text, s.preset.spec)});
  return s;
}

BenchReport report_skeleton(const BenchSetup& setup) {
  const BenchOptions& o = setup.options;
  BenchReport r;
  r.preset = setup.preset.name;
  r.preset_description = setup.preset.description;
  r.spec = setup.preset.spec;
  r.preset_layers = setup.preset.full_layers;
  r.preset_experts = setup.preset.full_experts;
  r.parameters = parameter_count(r.spec);
  r.indexer_parameters = indexer_parameter_count(r.spec);
  r.weight_bytes = bf16_weight_bytes(r.spec);
  r.machine.device = o.device.kind == DeviceKind::kCuda ? "cuda" : "cpu";
  r.commit = build_commit();
  r.date = utc_now();
  r.command = o.command_line;
  r.chunk = setup.chunk;
  r.decode_steps = setup.decode_steps;
  r.repeat = o.repeat;
  r.seed = o.seed;
  r.cuda_graphs = o.cuda_graphs;
  r.indexer_fp8 = o.indexer_fp8;
  r.indexer_hadamard = o.indexer_hadamard;
  r.engine = o.device.kind == DeviceKind::kCpu || o.calibrate ? "session"
             : o.engine == Engine::kRunner                    ? "runner"
             : o.engine == Engine::kSession                   ? "session"
                                                              : "session-profile";
  return r;
}

}  // namespace indexcache::bench
