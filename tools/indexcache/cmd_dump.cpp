// `indexcache dump`: runs prefill on a token-id file and writes the final logits and every
// layer's top-k selection to a safetensors file.
#include <fmt/core.h>

#include <fstream>
#include <sstream>

#include "commands.h"
#include "flags.h"
#include "indexcache/error.h"
#include "indexcache/model.h"
#include "indexcache/safetensors.h"

namespace indexcache::cli {

namespace {

struct DumpFlags {
  DeviceFlags device;
  std::string model, ids, out, plan;
};

int run_dump(const DumpFlags& f) {
  const std::string dir = resolve_model_dir(f.model);
  const std::vector<int32_t> ids = read_token_ids(f.ids);
  const ModelSpec spec = load_model_spec(dir);
  const IndexPlan plan = resolve_plan(f.plan, spec, dir);
  auto model = Model::load(dir, LoadOptions::for_plan(plan));
  auto backend = open_backend(f.device, *model);
  const PrefillResult r = prefill(*model, plan, ids, *backend);

  std::vector<TensorToWrite> out;
  auto bytes = [](const auto& v) { return std::as_bytes(std::span(v)); };
  out.push_back({"logits", DType::kF32, {r.tokens, r.vocab}, bytes(r.logits)});
  std::vector<std::string> names;
  for (int l = 0; l < static_cast<int>(r.topk.size()); ++l)
    out.push_back({"topk." + std::to_string(l), DType::kI32, {r.tokens, r.k}, bytes(r.topk[l])});
  write_safetensors(f.out, out, {{"plan", plan.pattern()}, {"model", dir}});
  fmt::print("wrote {}: logits [{}, {}], top-k [{}, {}] x {} layers, plan {}\n", f.out, r.tokens, r.vocab,
             r.tokens, r.k, r.topk.size(), plan.pattern());
  return 0;
}

}  // namespace

Runner register_dump(CLI::App& app) {
  auto f = std::make_shared<DumpFlags>();
  app.add_option("-m,--model", f->model, "model directory (default: the embedded model)");
  add_device_flags(app, f->device);
  app.add_option("--ids", f->ids, "file of whitespace-separated token ids")->required();
  app.add_option("--out", f->out, "output .safetensors file")->required();
  app.add_option("--plan", f->plan, "full, 1/N, an F/S string, or a config/report JSON")->check(non_empty());
  return [f] { return run_dump(*f); };
}

}  // namespace indexcache::cli
