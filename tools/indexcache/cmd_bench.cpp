// `indexcache bench`: prefill / decode speed of a model with random weights and a preset's real
// shapes, per context x IndexCache plan, on the CPU or the GPU; or (--mode calibrate) the greedy
// search timed on it. The flags are here; setup, runners and report in bench/.
#include <algorithm>
#include <cctype>

#include "bench/bench_run.h"
#include "commands.h"
#include "flags.h"
#include "indexcache/error.h"

namespace indexcache::cli {

namespace {

struct BenchFlags {
  DeviceFlags device;
  std::string preset, ctx = "1024", plan = "full,1/2,1/4", mode = "prefill,decode", chunk,
                      engine = "runner", indexer = "bf16", json_out;
  uint64_t seed = 1;
  int layers = 0, experts = 0, decode_steps = 0, repeat = 1, windows = 2, keep_layers = 0, clients = 8;
  bool no_graphs = false, json = false, quiet = false;
};

// The flags as parsed (registration order), for the report's command line.
std::string command_line(const CLI::App& app) {
  std::string s;
  for (const CLI::Option* opt : app.get_options()) {
    if (opt->count() == 0) continue;
    s += (s.empty() ? "" : " ") + opt->get_name();
    if (opt->get_expected_max() > 0)
      for (const auto& v : opt->results()) s += " " + v;
  }
  return s;
}

bench::BenchOptions to_options(const BenchFlags& f, bool plan_given,
                               const std::vector<std::string>& extras, std::string command) {
  if (!extras.empty()) {
    const std::string& a = extras.front();
    throw_bad_input("bench " + quote_for_message(a),
                    a.rfind('-', 0) == 0 ? "unknown option (see indexcache bench --help)"
                                         : "unexpected argument (see indexcache bench --help)");
  }
  bench::BenchOptions o;
  DeviceFlags d = f.device;
  if (d.device == "gpu") d.device = "cuda";
  o.device = resolve_device(d);
  o.preset = f.preset;
  o.layers = f.layers;
  o.experts = f.experts;
  o.ctx.clear();
  for (const auto& item : bench::split_list(f.ctx, "--ctx"))
    o.ctx.push_back(bench::parse_token_count(item, "--ctx"));
  o.plans = bench::split_list(f.plan, "--plan");
  o.plans_given = plan_given;
  o.prefill = o.decode = false;
  for (const auto& m : bench::split_list(f.mode, "--mode")) {
    if (m == "prefill")
      o.prefill = true;
    else if (m == "decode")
      o.decode = true;
    else if (m == "calibrate")
      o.calibrate = true;
    else if (m == "serve")
      o.serve = true;
    else
      throw_bad_input("--mode " + quote_for_message(m),
                      "expected prefill, decode, prefill,decode, calibrate or serve");
  }
  o.windows = f.windows;
  o.clients = f.clients;
  o.keep_layers = f.keep_layers;
  o.decode_steps = f.decode_steps;
  if (!f.chunk.empty()) o.chunk = bench::parse_token_count(f.chunk, "--chunk");
  o.repeat = f.repeat;
  o.cuda_graphs = !f.no_graphs;
  if (f.engine == "runner")
    o.engine = bench::Engine::kRunner;
  else if (f.engine == "session")
    o.engine = bench::Engine::kSession;
  else if (f.engine == "session-profile")
    o.engine = bench::Engine::kSessionProfile;
  else
    throw_bad_input("--engine " + quote_for_message(f.engine),
                    "expected runner, session or session-profile");
  if (f.indexer != "bf16" && f.indexer != "fp8" && f.indexer != "fp8-hadamard")
    throw_bad_input("--indexer " + quote_for_message(f.indexer),
                    "expected bf16, fp8 or fp8-hadamard");
  o.indexer_fp8 = f.indexer != "bf16";
  o.indexer_hadamard = f.indexer == "fp8-hadamard";
  o.json = f.json;
  o.json_out = f.json_out;
  o.quiet = f.quiet;
  o.seed = f.seed;
  o.command_line = std::move(command);
  return o;
}

}  // namespace

Runner register_bench(CLI::App& app) {
  auto f = std::make_shared<BenchFlags>();
  app.description(
      "prefill and decode speed of a model with random weights and a preset's real shapes, for every "
      "context x plan (markdown table or JSON); or --mode calibrate: the greedy IndexCache search timed on it");
  app.allow_extras();  // unknown arguments: reported by the runner, one line in the house's words
  // A flag given a value (--json=yes) is an error, not a boolean.
  const CLI::Validator no_value([](const std::string& v) { return v == "true" ? std::string() : "takes no value"; }, "");
  const CLI::Validator not_empty([](const std::string& v) { return v.empty() ? "needs a value" : std::string(); }, "");

  add_device_flags(app, f->device);
  std::string names;
  for (const auto& n : bench::preset_names()) names += (names.empty() ? "" : ", ") + n;
  app.add_option("--synthetic", f->preset, "the preset: " + names + " (default: dsa-mini on the cpu, glm47flash-dsa on cuda)")
      ->type_name("PRESET")
      ->check(not_empty);
  app.add_option("--layers", f->layers, "keep the first N layers of the preset")->type_name("N")->check(integer_in(1, kMaxLayersFlag));
  app.add_option("--experts", f->experts, "keep E routed experts per MoE layer (so a preset fits one device)")
      ->type_name("E")
      ->check(integer_in(1, spec_limits::kMaxExperts));
  app.add_option("--ctx", f->ctx,
                 "context lengths, e.g. 10K,60K or 4096 (K = 1024; default 1024); calibrate: one, the window length")
      ->type_name("LIST");
  auto* plan =
      app.add_option("--plan", f->plan, "IndexCache plans: full, 1/N, F/S strings (default full,1/2,1/4)")->type_name("LIST");
  app.add_option("--mode", f->mode,
                 "prefill, decode or both (default prefill,decode); or calibrate (alone): the greedy search on "
                 "random token windows, on the Session of --device; or serve (alone): --clients concurrent "
                 "requests through the continuous-batching scheduler (cpu)")
      ->type_name("LIST");
  app.add_option("--windows", f->windows, "calibrate: random token windows of ctx tokens (default 2)")
      ->type_name("N")
      ->check(integer_in(1, kMaxCountFlag));
  app.add_option("--clients", f->clients,
                 "serve: concurrent requests of ctx prompt tokens and --decode-steps new tokens each (default 8)")
      ->type_name("N")
      ->check(integer_in(1, 4096));
  app.add_option("--keep-layers", f->keep_layers,
                 "calibrate: stop at this many F layers (default: a quarter of the layers, rounded up)")
      ->type_name("N")
      ->check(integer_in(1, kMaxLayersFlag));
  app.add_option("--decode-steps", f->decode_steps, "timed decode steps after the context (default cpu 16, cuda 32)")
      ->type_name("N")
      ->check(integer_in(1, kMaxTokensFlag));
  app.add_option("--chunk", f->chunk, "prefill chunk in tokens, K = 1024 (default cpu 2048, cuda 8192)")
      ->type_name("N")
      ->check(not_empty);
  app.add_option("--repeat", f->repeat, "timed runs per cell, median reported (default 1)")
      ->type_name("N")
      ->check(integer_in(1, 1000));
  app.add_flag("--no-graphs", f->no_graphs, "cuda: decode without CUDA graphs")->check(no_value);
  app.add_option("--engine", f->engine,
                 "cuda, prefill/decode: runner (the GPU runner, default), session (the one Session on the CUDA "
                 "backend, random weights placed from host memory) or session-profile (the Session with op "
                 "classes; every op synchronised)")
      ->type_name("E");
  app.add_option("--indexer", f->indexer,
                 "cuda, the GPU runner: the lightning indexer in bf16 (default), fp8 (e4m3 with per-row scales, "
                 "DeepSeek-V3.2 style; selections may differ near ties) or fp8-hadamard (e4m3 after a "
                 "Walsh-Hadamard rotation of q and k)")
      ->type_name("KIND");
  app.add_option("--seed", f->seed, "seed of the random weights and token ids (default 1)")
      ->type_name("S")
      ->check(seed_value());
  app.add_flag("--json", f->json, "print JSON instead of the markdown report")->check(no_value);
  app.add_option("--json-out", f->json_out, "also write the JSON report to FILE")->type_name("FILE")->check(not_empty);
  app.add_flag("--quiet", f->quiet, "no progress lines on stderr")->check(no_value);
  return [&app, f, plan] {
    return bench::bench_main(to_options(*f, plan->count() > 0, app.remaining(), command_line(app)));
  };
}

}  // namespace indexcache::cli
