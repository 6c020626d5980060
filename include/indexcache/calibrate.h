// Training-free IndexCache: the greedy layer search (IndexCache paper). Start with every layer F;
// layer 0 stays F; each step flips every remaining F layer to S in turn, scores the calibration
// loss on the same batches, and commits the flip with the lowest loss. A model that ships
// indexers in only some layers (one written by `indexcache distill`) starts from those layers
// as its F set: the search can only take more of them away.
//
// Exact savings over the naive search (N full forwards per candidate per batch):
//  - flipping layer l changes nothing before l: each candidate resumes at l from the hidden
//    state and selections of the current plan's run (Session::forward_from);
//  - the winning candidate's run is the next step's base run: its layer inputs are kept, so no
//    step re-runs its base.
// Both give bit-identical losses to the naive search.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "indexcache/index_plan.h"

namespace indexcache {

class Model;
class Backend;

struct CalibrateStop {
  std::optional<double> keep_fraction;      // stop once F layers <= ceil(fraction * N)
  std::optional<int> keep_layers;           // stop once F layers <= this
  std::optional<double> max_loss_increase;  // percent over the start plan: stop before a flip exceeding it
};

struct CandidateScore {
  int layer = 0;
  double loss = 0;
};

struct CalibrationStep {
  int flipped = -1;  // the layer committed to S
  double loss = 0;   // calibration loss after the flip
  std::string plan;  // plan after the flip
  std::vector<CandidateScore> candidates;
  double seconds = 0;
};

struct CalibrationState {
  int num_layers = 0;
  // Where the search began: empty for all-F, else the pattern of the layers with indexers.
  std::string start_plan;
  double full_loss = 0;  // the start plan's loss (all-F's, unless start_plan is set)
  std::vector<CalibrationStep> steps;
  std::string stop_reason;
  bool finished = false;
  int64_t layer_forwards = 0;        // layers actually run (all batches)
  int64_t naive_layer_forwards = 0;  // what the naive search would run for the same steps
  std::string plan() const;          // current plan
  std::string start() const;         // start_plan, or all-F
  std::string reference() const;     // what losses are compared with: "all-F" or "start plan"
};

struct CalibrateProgress {
  int step = 0, total_steps = 0;
  int candidate = 0, candidates = 0;
  double elapsed_seconds = 0, eta_seconds = 0;
};

struct CalibrateOptions {
  CalibrateStop stop;
  bool naive = false;  // run every candidate as a full forward (for tests and comparisons)
  // Called after each step is committed, with the state so far (e.g. to save it for --resume).
  std::function<void(const CalibrationState&)> on_step;
  std::function<void(const CalibrateProgress&)> on_progress;
};

// Runs (or continues, when `resume` holds committed steps) the greedy search on `batches`
// (token-id windows; each one sequence from position 0). Layer 0 must have its indexer; the search
// starts from all-F, or from the layers with indexers when some lack them.
CalibrationState calibrate(const Model& model, const std::vector<std::vector<int32_t>>& batches,
                           Backend& backend, const CalibrateOptions& options,
                           std::optional<CalibrationState> resume = std::nullopt);

// Mean next-token loss of `plan` over `batches`.
double plan_loss(const Model& model, const IndexPlan& plan, const std::vector<std::vector<int32_t>>& batches,
                 Backend& backend);

}  // namespace indexcache
