// Training-aware IndexCache (issue 14): multi-layer distillation of the F layers' indexers. The
// model stays frozen; each F layer's indexer (wq_b, wk, k_norm, weights_proj) learns to serve
// itself and the S layers after it (the loss: src/distill/indexer_loss.h). AdamW with global
// gradient-norm clipping, on the CPU, one window per step; the result is written as a Hugging Face
// directory that every command loads.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "indexcache/index_plan.h"

namespace indexcache {

class Model;
class Backend;

enum class DistillStage { kDense, kSparse, kBoth };  // kBoth: dense for the first half of the steps
enum class DistillTarget { kMulti, kSingle };        // served layers' mean, or the F layer alone

struct DistillState;

struct DistillOptions {
  int steps = 100;
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.0;  // decoupled (AdamW)
  double clip = 1.0;          // global gradient L2 norm; <= 0: no clipping
  DistillStage stage = DistillStage::kDense;
  DistillTarget target = DistillTarget::kMulti;
  int query_block = 64;
  // Continue a run from its state (the steps after resume->step; the same windows and options
  // give the same result as one uninterrupted run); nullptr: from the checkpoint's indexers.
  const DistillState* resume = nullptr;
  // on_state sees the whole state every `state_every` steps and after the last (0: never).
  int state_every = 0;
  std::function<void(const DistillState&)> on_state;
  // Says what the run is (model, plan, data, options; the caller's choice): stored in each state,
  // and a resumed state must carry the same.
  std::string fingerprint;
};

struct DistillStep {
  int step = 0;        // 1-based
  int window = 0;      // index into the windows
  bool sparse = false;
  double loss = 0;     // sum over the plan's F layers, before the update
  double grad_norm = 0;  // before clipping
};

// One F layer's trained indexer tensors (f32, the checkpoint's shapes).
struct TrainedIndexer {
  int layer = 0;
  std::vector<float> wq_b, wk, k_norm_w, k_norm_b, weights_proj;
};

struct DistillResult {
  std::vector<DistillStep> steps;
  std::vector<TrainedIndexer> indexers;  // one per F layer of the plan, in layer order
};

// A run after `step` steps: the trained indexers, AdamW's two moments of each (same shapes), the
// steps so far, and a fingerprint of what must not change on resume (model, plan, data, options).
struct DistillState {
  int step = 0;
  std::string fingerprint;
  std::vector<TrainedIndexer> indexers, first_moments, second_moments;
  std::vector<DistillStep> steps;
};

// The state as one safetensors file (f32 tensors "layer.L.NAME", ".m", ".v"; the rest in its
// metadata), written to a temporary then renamed over `path`. read_distill_state throws
// Error(kBadInput) naming the file for anything that is not such a state.
void write_distill_state(const std::string& path, const DistillState& state);
DistillState read_distill_state(const std::string& path);

// Trains the indexers of `plan`'s F layers on `windows` (step s uses window s mod count, each from
// position 0), the teacher being `model` under the all-F plan on `backend`. `on_step` sees each
// step as it ends. Bad input (kBadInput): no windows, steps < 1, an F layer without indexer weights,
// a window longer than the model's positions.
DistillResult distill_indexers(const Model& model, Backend& backend, const IndexPlan& plan,
                               const std::vector<std::vector<int32_t>>& windows, const DistillOptions& options,
                               const std::function<void(const DistillStep&)>& on_step = {});

// The training curve as a standalone SVG line chart: the loss per step (one marker per step), the
// dense and sparse stages as separate series.
std::string distill_curve_svg(const DistillResult& result, const std::string& title);

// Writes `out_dir`/model.safetensors and config.json: every tensor of the model's checkpoint
// unchanged (bytes and dtype) except the trained F layers' indexers (in their own dtype; block-FP8
// ones in bf16, their scales dropped) and the S layers' indexer tensors, which are left out;
// config.json as the model's with `indexer_types` and `index_topk_pattern` set to `plan`, every other
// key unchanged; the tokenizer and generation config copied when present.
void write_distilled_checkpoint(const Model& model, const IndexPlan& plan, const DistillResult& result,
                                const std::string& out_dir);

}  // namespace indexcache
