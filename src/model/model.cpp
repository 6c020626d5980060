#include <chrono>
#include <cstdio>
#include <filesystem>

#include "indexcache/error.h"
#include "indexcache/model.h"
#include "backend/backend.h"
#include "indexcache/progress.h"
#include "io/checkpoint_schema.h"
#include "model/placed_weights.h"
#include "model/weights.h"

namespace indexcache {

Model::~Model() = default;

LoadOptions LoadOptions::for_plan(const IndexPlan& plan) {
  LoadOptions lo;
  for (int i = 0; i < plan.num_layers(); ++i) lo.require_indexer.push_back(plan.is_full(i));
  lo.only_required_indexers = true;
  return lo;
}

std::unique_ptr<Model> Model::load(const std::string& dir, const LoadOptions& options) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) throw_bad_input(dir, "not a model directory");
  auto m = std::unique_ptr<Model>(new Model());
  m->dir_ = dir;
  m->spec_ = load_model_spec(dir);
  m->config_plan_ = IndexPlan::from_config(m->spec_, dir + "/config.json");
  std::vector<bool> require = options.require_indexer;
  if (require.empty()) {
    for (int i = 0; i < m->spec_.num_layers; ++i) require.push_back(m->config_plan_.is_full(i));
  }
  if (static_cast<int>(require.size()) != m->spec_.num_layers)
    throw_bad_input(dir, "indexer requirement list does not match the layer count");
  m->weights_ = load_weights(dir, m->spec_, require, options.only_required_indexers);
  return m;
}

std::unique_ptr<Model> Model::synthetic(const ModelSpec& spec, uint64_t seed) {
  if (static_cast<int>(spec.layer_is_moe.size()) != spec.num_layers)
    throw_bad_input("synthetic model", "layer_is_moe does not match the layer count");
  auto m = std::unique_ptr<Model>(new Model());
  m->spec_ = spec;
  m->config_plan_ = IndexPlan::from_config(spec, "synthetic model config");
  m->weights_ = synthetic_weights(spec, seed);
  return m;
}

void Model::place(Backend& backend, Progress* progress) const {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  bool shown = false;
  place_weights(backend, spec_, *weights_, [&](int64_t done, int64_t total) {
    const double s = std::chrono::duration<double>(clock::now() - t0).count();
    if (!progress || s < 1.0) return;
    char line[160];
    std::snprintf(line, sizeof line, "placing weights on %s: %.2f / %.2f GiB (%.0f s)", backend.name().c_str(),
                  done / 1073741824.0, total / 1073741824.0, s);
    progress->update(line);
    shown = true;
  });
  if (progress && shown) progress->done();
}

bool Model::has_indexer(int layer) const { return weights_->layers.at(layer).has_indexer; }

void Model::check_plan(const IndexPlan& plan) const {
  if (plan.num_layers() != spec_.num_layers)
    throw_bad_input("plan '" + plan.pattern() + "'",
                    "has " + std::to_string(plan.num_layers()) + " layers, the model has " +
                        std::to_string(spec_.num_layers));
  for (int i = 0; i < spec_.num_layers; ++i) {
    if (plan.is_full(i) && !has_indexer(i))
      throw_bad_input("plan '" + plan.pattern() + "'",
                      "layer " + std::to_string(i) + " is F but the checkpoint has no indexer weights for it");
  }
}

int64_t Model::indexer_parameter_count() const { return schema_indexer_parameter_count(spec_); }

int64_t Model::parameter_count() const { return schema_parameter_count(spec_); }

}  // namespace indexcache
