// A DSA model loaded from a Hugging Face directory, and its prefill forward pass.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "indexcache/index_plan.h"
#include "indexcache/model_spec.h"

namespace indexcache {

struct ModelWeights;  // defined in src/model/weights.h
class Backend;
class Progress;

struct LoadOptions {
  // Layers whose indexer weights are required. Indexer weights of other layers are loaded when
  // the checkpoint has them and skipped when it does not (S layers may ship without them).
  // Empty: every layer that is F in the config's own plan.
  std::vector<bool> require_indexer;
  // Load only required indexers (memory-frugal) instead of every indexer present.
  bool only_required_indexers = false;

  // Exactly the indexers `plan` runs (its F layers), nothing else.
  static LoadOptions for_plan(const IndexPlan& plan);
};

class Model {
 public:
  // Reads `dir`/config.json and the safetensors weights. Throws Error(kBadInput) naming the file,
  // tensor or key for any problem (missing tensor, wrong shape or dtype, bad config).
  static std::unique_ptr<Model> load(const std::string& dir, const LoadOptions& options = {});
  // A model of `spec`'s shapes with random weights in host memory (no file): every tensor of the
  // checkpoint schema, every layer's indexer included, drawn uniform with std 1/sqrt(fan_in)
  // (residual outputs shrunk by 1/sqrt(2 * layers), norms 1) and stored as bf16, as the bench
  // presets use. Deterministic in `seed`. dir() is empty.
  static std::unique_ptr<Model> synthetic(const ModelSpec& spec, uint64_t seed);
  ~Model();

  const ModelSpec& spec() const { return spec_; }
  const std::string& dir() const { return dir_; }
  // The plan the config declares (indexer_types > index_topk_pattern > freq/offset > all F).
  const IndexPlan& config_plan() const { return config_plan_; }
  bool has_indexer(int layer) const;
  // Throws Error(kBadInput) if `plan` does not fit the model or needs an indexer it lacks.
  void check_plan(const IndexPlan& plan) const;
  const ModelWeights& weights() const { return *weights_; }
  // Places every weight on `backend` now (converted or uploaded once; a Session on it then finds
  // them placed), with a progress line on `progress` while it takes more than a second.
  void place(Backend& backend, Progress* progress = nullptr) const;
  // Total parameters and the indexers' share: the checkpoint schema's tensors for the config,
  // every layer's indexer counted (what a checkpoint that ships every indexer holds).
  int64_t parameter_count() const;
  int64_t indexer_parameter_count() const;

 private:
  Model() = default;
  std::string dir_;
  ModelSpec spec_;
  IndexPlan config_plan_ = IndexPlan::full(1);
  std::unique_ptr<ModelWeights> weights_;
};

struct PrefillOptions {
  // Keep each F layer's full [T, T] index-score matrix (debugging and tests; O(T^2) memory).
  bool capture_index_scores = false;
  // Queries scored per indexer block (bounds the score buffer to query_block x T floats); 0: the
  // backend's default (256 on the CPU).
  int query_block = 0;
  // Tokens per prefill chunk (0: the whole sequence in one chunk).
  int chunk = 0;
};

struct PrefillResult {
  int tokens = 0;
  int vocab = 0;
  int k = 0;                                     // min(index_topk, tokens)
  std::vector<float> logits;                     // [tokens, vocab]
  std::vector<std::vector<int32_t>> topk;        // per layer [tokens, k]; -1 where unused
  std::vector<std::vector<float>> index_scores;  // per layer [tokens, tokens] (F layers, if captured)
};

// Runs the whole sequence `ids` (positions 0..T-1) through the model with `plan`, in chunks of
// `options.chunk` tokens over one Session.
PrefillResult prefill(const Model& model, const IndexPlan& plan, std::span<const int32_t> ids,
                      Backend& backend, const PrefillOptions& options = {});

}  // namespace indexcache
