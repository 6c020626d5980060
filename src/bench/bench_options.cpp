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

// Comma-separated items, each trimmed; an empty item is an error.
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

int parse_int_flag(const std::string& text, const std::string& flag, int min_value, int max_value) {
  uint64_t v = 0;
  if (!parse_u64(trim(text), v) || v < static_cast<uint64_t>(min_value) || v > static_cast<uint64_t>(max_value))
    throw_bad_input(flag + " " + quote_for_message(text),
                    "expected an integer from " + std::to_string(min_value) + " to " + std::to_string(max_value));
  return static_cast<int>(v);
}

}  // namespace

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

std::string bench_usage() {
  std::string names;
  for (const auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
  return "usage: indexcache bench [--device cpu|cuda] [--synthetic PRESET] [--layers N] [--experts E]\n"
         "                        [--ctx LIST] [--plan LIST] [--mode prefill,decode] [--decode-steps N]\n"
         "                        [--chunk N] [--repeat N] [--no-graphs] [--indexer KIND] [--seed S]\n"
         "                        [--json]"
         "                        [--json-out FILE] [--quiet]\n"
         "Times prefill and single-request decode of a model with random weights and the real shapes of\n"
         "a preset, for every context x plan, and prints a markdown table (or JSON).\n"
         "  --device cpu|cuda     where to run (default cpu)\n"
         "  --synthetic PRESET    " + names + "\n"
         "                        (default: dsa-mini on the cpu, glm47flash-dsa on cuda)\n"
         "  --layers N            keep the first N layers of the preset\n"
         "  --experts E           keep E routed experts per MoE layer (so a preset fits one device)\n"
         "  --ctx LIST            context lengths, e.g. 10K,60K or 4096 (K = 1024; default 1024)\n"
         "  --plan LIST           IndexCache plans: full, 1/N, F/S strings (default full,1/2,1/4)\n"
         "  --mode LIST           prefill, decode or both (default prefill,decode)\n"
         "  --decode-steps N      timed decode steps after the context (default cpu 16, cuda 32)\n"
         "  --chunk N             prefill chunk in tokens (default cpu 2048, cuda 8192)\n"
         "  --repeat N            timed runs per cell, median reported (default 1)\n"
         "  --no-graphs           cuda: decode without CUDA graphs\n"
         "  --engine E            cuda: runner (the GPU runner, default) or session (the one Session on\n"
         "                        the CUDA backend, random weights placed from host memory) or\n"
         "                        session-profile (the Session with op classes; every op synchronised)\n"
         "  --indexer KIND        cuda: the lightning indexer in bf16 (default), fp8 (e4m3 with per-row\n"
         "                        scales, DeepSeek-V3.2 style; selections may differ near ties) or\n"
         "                        fp8-hadamard (e4m3 after a Walsh-Hadamard rotation of q and k)\n"
         "  --seed S              seed of the random weights and token ids (default 1)\n"
         "  --json                print JSON instead of the markdown table\n"
         "  --json-out FILE       also write the JSON report to FILE\n"
         "  --quiet               no progress lines on stderr\n";
}

BenchOptions parse_bench_args(const std::vector<std::string>& args) {
  BenchOptions o;
  for (size_t i = 0; i < args.size(); ++i) {
    if (i) o.command_line += ' ';
    o.command_line += args[i];
  }
  for (size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i];
    std::string value;
    bool has_inline = false;
    if (flag.rfind("--", 0) == 0) {
      const size_t eq = flag.find('=');
      if (eq != std::string::npos) {
        value = flag.substr(eq + 1);
        flag = flag.substr(0, eq);
        has_inline = true;
      }
    }
    // Flags without a value.
    if (flag == "-h" || flag == "--help" || flag == "--json" || flag == "--quiet" || flag == "--no-graphs") {
      if (has_inline) throw_bad_input(flag, "takes no value");
      if (flag == "-h" || flag == "--help") o.help = true;
      if (flag == "--json") o.json = true;
      if (flag == "--quiet") o.quiet = true;
      if (flag == "--no-graphs") o.cuda_graphs = false;
      continue;
    }
    static const char* kValued[] = {"--device", "--synthetic", "--layers", "--experts", "--ctx", "--plan",
                                    "--mode", "--decode-steps", "--chunk", "--repeat", "--seed", "--json-out",
                                    "--indexer", "--engine"};
    if (std::find_if(std::begin(kValued), std::end(kValued), [&](const char* k) { return flag == k; }) ==
        std::end(kValued)) {
      if (flag.rfind("-", 0) == 0)
        throw_bad_input("bench " + quote_for_message(flag), "unknown option (see indexcache bench --help)");
      throw_bad_input("bench " + quote_for_message(flag), "unexpected argument (see indexcache bench --help)");
    }
    if (!has_inline) {
      if (i + 1 >= args.size()) throw_bad_input(flag, "needs a value");
      value = args[++i];
    }
    if (flag == "--device") {
      const std::string d = trim(value);
      if (d == "cpu")
        o.device = Device::kCpu;
      else if (d == "cuda" || d == "gpu")
        o.device = Device::kCuda;
      else
        throw_bad_input("--device " + quote_for_message(value), "expected cpu or cuda");
    } else if (flag == "--synthetic") {
      o.preset = trim(value);
      if (o.preset.empty()) throw_bad_input("--synthetic", "needs a preset name");
    } else if (flag == "--layers") {
      o.layers = parse_int_flag(value, flag, 1, 100000);
    } else if (flag == "--experts") {
      o.experts = parse_int_flag(value, flag, 1, 100000);
    } else if (flag == "--ctx") {
      o.ctx.clear();
      for (const auto& item : split_list(value, flag)) o.ctx.push_back(parse_token_count(item, flag));
    } else if (flag == "--plan") {
      o.plans = split_list(value, flag);
    } else if (flag == "--mode") {
      o.prefill = o.decode = false;
      for (const auto& m : split_list(value, flag)) {
        if (m == "prefill")
          o.prefill = true;
        else if (m == "decode")
          o.decode = true;
        else
          throw_bad_input("--mode " + quote_for_message(m), "expected prefill, decode or prefill,decode");
      }
    } else if (flag == "--decode-steps") {
      o.decode_steps = parse_int_flag(value, flag, 1, 1000000);
    } else if (flag == "--chunk") {
      o.chunk = parse_token_count(value, flag);
    } else if (flag == "--repeat") {
      o.repeat = parse_int_flag(value, flag, 1, 1000);
    } else if (flag == "--engine") {
      const std::string v = trim(value);
      if (v == "session" || v == "session-profile") {
        o.engine_session = true;
        o.engine_profile = v == "session-profile";
      } else if (v != "runner") {
        throw_bad_input("--engine " + quote_for_message(value), "expected runner, session or session-profile");
      }
    } else if (flag == "--seed") {
      uint64_t v = 0;
      if (!parse_u64(trim(value), v)) throw_bad_input("--seed " + quote_for_message(value), "expected a non-negative integer");
      o.seed = v;
    } else if (flag == "--indexer") {
      const std::string v = trim(value);
      if (v == "bf16" || v == "fp8" || v == "fp8-hadamard") {
        o.indexer_fp8 = v != "bf16";
        o.indexer_hadamard = v == "fp8-hadamard";
      } else {
        throw_bad_input("--indexer " + quote_for_message(value), "expected bf16, fp8 or fp8-hadamard");
      }
    } else if (flag == "--json-out") {
      if (value.empty()) throw_bad_input("--json-out", "needs a file name");
      o.json_out = value;
    }
  }
  return o;
}

int64_t BenchSetup::max_context() const {
  int64_t m = 0;
  for (int64_t c : options.ctx) m = std::max(m, c);
  return m + (options.decode ? decode_steps : 0);
}

BenchSetup resolve_bench(const BenchOptions& o) {
  const bool cuda = o.device == Device::kCuda;
  if (o.indexer_fp8 && !cuda) throw_bad_input("--indexer fp8", "needs --device cuda (the CPU indexer is f32)");
  const std::string preset = o.preset.empty() ? (cuda ? "glm47flash-dsa" : "dsa-mini") : o.preset;
  BenchSetup s{o, make_preset(preset, o.layers, o.experts), {}, 0, 0};
  s.decode_steps = o.decode_steps > 0 ? o.decode_steps : (cuda ? 32 : 16);
  s.chunk = o.chunk > 0 ? o.chunk : (cuda ? 8192 : 2048);
  if (s.chunk > std::numeric_limits<int>::max()) throw_bad_input("--chunk", "too large");
  const int64_t max_pos = s.preset.spec.max_position_embeddings;
  for (int64_t c : o.ctx) {
    if (c > max_pos)
      throw_bad_input("--ctx " + std::to_string(c),
                      "longer than the preset's max_position_embeddings " + std::to_string(max_pos));
    if (o.decode && c + s.decode_steps > max_pos)
      throw_bad_input("--ctx " + std::to_string(c),
                      "plus " + std::to_string(s.decode_steps) + " decode steps exceeds max_position_embeddings " +
                          std::to_string(max_pos));
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
  r.machine.device = o.device == Device::kCuda ? "cuda" : "cpu";
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
  return r;
}

}  // namespace indexcache::bench
