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

struct DistillOptions {
  int steps = 100;
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.0;  // decoupled (AdamW)
  double clip = 1.0;          // global gradient L2 norm; <= 0: no clipping
  DistillStage stage = DistillStage::kDense;
  DistillTarget target = DistillTarget::kMulti;
  int query_block = 64;
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
