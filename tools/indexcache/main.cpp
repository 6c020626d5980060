// indexcache CLI entry point: parses the subcommand, runs it, maps errors to exit codes
// (0 ok, 1 runtime failure, 2 bad input or usage) with one-line `error: ...` messages.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>
#include <map>

#include "commands.h"
#include "flags.h"
#include "indexcache/error.h"
#include "indexcache/model.h"
#include "indexcache/progress.h"

namespace indexcache::cli {

IndexPlan resolve_plan(const std::string& flag_value, const ModelSpec& spec, const std::string& model_dir) {
  return flag_value.empty() ? IndexPlan::from_config(spec, model_dir + "/config.json")
                            : IndexPlan::parse(flag_value, spec);
}

std::string resolve_model_dir(const std::string& flag_value) {
  if (!flag_value.empty()) return flag_value;
  const std::string dflt = INDEXCACHE_DEFAULT_MODEL;
  std::error_code ec;
  if (!std::filesystem::is_directory(dflt, ec))
    throw_bad_input("-m", "no model given and the embedded default model is missing (" + dflt + ")");
  return dflt;
}

std::vector<int32_t> read_token_ids(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw_bad_input(path, "cannot open ids file");
  std::vector<int32_t> ids;
  std::string tok;
  while (f >> tok) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(tok, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != tok.size() || v < 0 || v > INT32_MAX)
      throw_bad_input(path, quote_for_message(tok.substr(0, 40)) + " is not a token id (non-negative integer)");
    ids.push_back(static_cast<int32_t>(v));
  }
  if (ids.empty()) throw_bad_input(path, "no token ids");
  return ids;
}

void add_device_flags(CLI::App& app, DeviceFlags& f) {
  app.add_option("--device", f.device, "where the model runs: cpu (f32, exact) or cuda (default cpu)");
  app.add_option("--gpu", f.gpu, "CUDA device ordinal with --device cuda (default 0)")->check(integer_in(0, kMaxGpuFlag));
  app.add_option("--threads", f.threads, "CPU threads (default: all cores, or OMP_NUM_THREADS)")
      ->check(integer_in(1, kMaxThreadsFlag));
  app.add_option("--precision", f.precision,
                 "with --device cuda: bf16 (weights and activations bf16, f32 accumulation; default) or f32 "
                 "(the exact path, for parity checks)");
}

Device resolve_device(const DeviceFlags& f) {
  if (f.device != "cpu" && f.device != "cuda")
    throw_bad_input("--device " + quote_for_message(f.device), "unknown device (cpu or cuda)");
  Device d;
  d.kind = parse_device_kind(f.device);
  d.gpu = f.gpu;
  d.threads = f.threads;
  if (f.precision == "bf16")
    d.precision = Precision::kBf16;
  else if (f.precision == "f32")
    d.precision = Precision::kF32;
  else
    throw_bad_input("--precision " + quote_for_message(f.precision), "unknown precision (bf16 or f32)");
  if (d.kind == DeviceKind::kCpu && f.gpu != 0) throw_bad_input("--gpu", "needs --device cuda");
  return d;
}

std::shared_ptr<Backend> open_backend(const DeviceFlags& f, const Model& model) {
  auto be = make_backend(resolve_device(f));
  Progress progress;
  model.place(*be, &progress);
  return be;
}

// The last guard of the one-line contract: a control byte that reached a message unquoted (a file
// name read from hostile input) is written as \xNN; UTF-8 text stays as it is.
std::string one_line(std::string_view message) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(message.size());
  for (unsigned char c : message) {
    if (c >= 0x20 && c != 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

void print_error(std::string_view message) { std::fprintf(stderr, "error: %s\n", one_line(message).c_str()); }

}  // namespace indexcache::cli

int main(int argc, char** argv) {
  using namespace indexcache;
  CLI::App app{"indexcache: DeepSeek-Sparse-Attention models with IndexCache"};
  app.require_subcommand(1);
  std::map<CLI::App*, cli::Runner> runners;
  {
    auto* info = app.add_subcommand("info", "config summary, IndexPlan, parameter and memory counts");
    runners[info] = cli::register_info(*info);
    auto* dump = app.add_subcommand("dump", "final logits and every layer's top-k to a safetensors file");
    runners[dump] = cli::register_dump(*dump);
    auto* gen = app.add_subcommand("generate", "stream generated text; prints prefill and decode tokens/s");
    runners[gen] = cli::register_generate(*gen);
    auto* ev = app.add_subcommand("eval", "LM loss / perplexity and retrieval accuracy, plans side by side");
    runners[ev] = cli::register_eval(*ev);
    auto* ov = app.add_subcommand("overlap", "cross-layer top-k overlap matrix (JSON, CSV, SVG heatmap)");
    runners[ov] = cli::register_overlap(*ov);
    auto* cal = app.add_subcommand("calibrate", "greedy IndexCache search: plan, report, config export");
    runners[cal] = cli::register_calibrate(*cal);
    auto* dist = app.add_subcommand("distill", "train the F layers' indexers to serve the S layers (multi-layer distillation)");
    runners[dist] = cli::register_distill(*dist);
    auto* bench = app.add_subcommand("bench", "prefill and decode speed of a synthetic model per context and plan");
    runners[bench] = cli::register_bench(*bench);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    cli::print_error(e.what());
    return 2;
  }
  try {
    for (auto& [sub, run] : runners)
      if (sub->parsed()) return run();
    return 2;
  } catch (const Error& e) {
    cli::print_error(e.what());
    return e.exit_code();
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    cli::print_error(std::string("internal: ") + e.what());
    return 1;
  }
}
