#include <chrono>
#include <cmath>
#include <limits>

#include "indexcache/calibrate.h"
#include "indexcache/error.h"
#include "indexcache/evaluate.h"
#include "indexcache/model.h"
#include "indexcache/session.h"

namespace indexcache {

namespace {

using Clock = std::chrono::steady_clock;

// One batch's run under a plan: the hidden state entering every layer and every layer's
// selection (only F layers' are needed to resume).
struct BatchTrace {
  std::vector<std::vector<float>> layer_inputs;
  std::vector<std::vector<int32_t>> topk;
};

int target_full_layers(const CalibrateStop& stop, int n) {
  int target = 1;
  if (stop.keep_fraction) target = std::max(target, static_cast<int>(std::ceil(*stop.keep_fraction * n - 1e-9)));
  if (stop.keep_layers) target = std::max(target, *stop.keep_layers);
  return target;
}

class Search {
 public:
  Search(const Model& m, const std::vector<std::vector<int32_t>>& b, Backend& be, const CalibrateOptions& o,
         const IndexPlan& start)
      : model_(m), batches_(b), o_(o), session_(m, start, be), n_(m.spec().num_layers), start_(start) {}

  // Full run of `plan` on every batch; keeps the traces; returns the mean loss.
  double run_base(const IndexPlan& plan, std::vector<BatchTrace>* traces) {
    session_.set_plan(plan);
    LossSum total;
    if (traces) traces->assign(batches_.size(), {});
    for (size_t b = 0; b < batches_.size(); ++b) {
      LayerCapture cap({.inputs = true, .selections = true});
      ForwardOptions fo;
      fo.observer = traces ? &cap : nullptr;
      session_.reset();
      ChunkResult r = session_.forward(batches_[b], fo);
      if (traces) (*traces)[b] = {std::move(cap.inputs), std::move(cap.selections)};
      total += next_token_loss(r.logits, batches_[b], r.vocab);
      state_->layer_forwards += n_;
    }
    return total.mean();
  }

  // Loss of `plan` (= base plan with `layer` flipped), resuming at `layer` from the base traces.
  // Fills `out` with the candidate's traces (layers >= layer) when given.
  double run_candidate(const IndexPlan& plan, int layer, const std::vector<BatchTrace>& base,
                       std::vector<BatchTrace>* out) {
    if (o_.naive) return run_base(plan, out);
    session_.set_plan(plan);
    LossSum total;
    if (out) out->assign(batches_.size(), {});
    for (size_t b = 0; b < batches_.size(); ++b) {
      LayerCapture cap({.inputs = true, .selections = true});
      ForwardOptions fo;
      fo.observer = out ? &cap : nullptr;
      ChunkResult r = session_.forward_from(layer, batches_[b],
                                            {.hidden = base[b].layer_inputs[layer], .selections = &base[b].topk}, fo);
      if (out) {
        // Layers before `layer` are unchanged: take them from the base run.
        BatchTrace& t = (*out)[b];
        t = {std::move(cap.inputs), std::move(cap.selections)};
        t.layer_inputs.resize(n_);
        t.topk.resize(n_);
        for (int l = 0; l < layer; ++l) {
          t.layer_inputs[l] = base[b].layer_inputs[l];
          t.topk[l] = base[b].topk[l];
        }
      }
      total += next_token_loss(r.logits, batches_[b], r.vocab);
      state_->layer_forwards += n_ - layer;
    }
    return total.mean();
  }

  CalibrationState run(std::optional<CalibrationState> resume) {
    CalibrationState st;
    if (resume) {
      st = *resume;
      if (st.num_layers != n_) throw_bad_input("--resume", "state is for a model with " + std::to_string(st.num_layers) + " layers");
      if (st.start() != start_.pattern())
        throw_bad_input("--resume", "state began from plan " + st.start() + ", this model's indexers give " + start_.pattern());
    }
    st.num_layers = n_;
    if (st.steps.empty()) st.start_plan = start_.num_full() == n_ ? "" : start_.pattern();
    state_ = &st;
    const int target = target_full_layers(o_.stop, n_);
    IndexPlan plan = IndexPlan::from_pattern(st.plan(), n_);
    std::vector<BatchTrace> base;
    const double base_loss = run_base(plan, &base);
    if (st.steps.empty()) {
      st.full_loss = base_loss;
      st.naive_layer_forwards += static_cast<int64_t>(n_) * batches_.size();
    }
    const auto start = Clock::now();
    const int total_steps = std::max(0, plan.num_full() - target);
    int steps_done = 0;
    while (plan.num_full() > target) {
      const auto step_start = Clock::now();
      CalibrationStep step;
      std::vector<BatchTrace> best_trace;
      double best = std::numeric_limits<double>::infinity();
      std::vector<int> candidates;
      for (int l = 1; l < n_; ++l)
        if (plan.is_full(l)) candidates.push_back(l);
      for (size_t ci = 0; ci < candidates.size(); ++ci) {
        const int l = candidates[ci];
        std::string pattern = plan.pattern();
        pattern[l] = 'S';
        std::vector<BatchTrace> trace;
        const double loss = run_candidate(IndexPlan::from_pattern(pattern, n_), l, base, &trace);
        st.naive_layer_forwards += static_cast<int64_t>(n_) * batches_.size();
        step.candidates.push_back({l, loss});
        if (loss < best) {  // ties: the lower layer (first seen) wins
          best = loss;
          step.flipped = l;
          best_trace = std::move(trace);
        }
        if (o_.on_progress) {
          const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
          const double frac = (steps_done + (ci + 1.0) / candidates.size()) / std::max(1, total_steps);
          o_.on_progress({steps_done + 1, total_steps, static_cast<int>(ci + 1), static_cast<int>(candidates.size()),
                          elapsed, frac > 0 ? elapsed / frac - elapsed : 0});
        }
      }
      if (o_.stop.max_loss_increase && 100.0 * (best - st.full_loss) / st.full_loss > *o_.stop.max_loss_increase) {
        st.stop_reason = "the next flip (layer " + std::to_string(step.flipped) + ") would raise the loss " +
                         std::to_string(100.0 * (best - st.full_loss) / st.full_loss) + " % over " + st.reference();
        break;
      }
      std::string pattern = plan.pattern();
      pattern[step.flipped] = 'S';
      plan = IndexPlan::from_pattern(pattern, n_);
      step.loss = best;
      step.plan = pattern;
      step.seconds = std::chrono::duration<double>(Clock::now() - step_start).count();
      st.steps.push_back(std::move(step));
      base = std::move(best_trace);  // the winner's run is the next base run
      ++steps_done;
      if (o_.on_step) o_.on_step(st);
    }
    if (st.stop_reason.empty()) st.stop_reason = "reached " + std::to_string(plan.num_full()) + " F layers";
    st.finished = true;
    return st;
  }

 private:
  const Model& model_;
  const std::vector<std::vector<int32_t>>& batches_;
  const CalibrateOptions& o_;
  Session session_;
  int n_;
  IndexPlan start_;
  CalibrationState* state_ = nullptr;
};

}  // namespace

CalibrationState calibrate(const Model& model, const std::vector<std::vector<int32_t>>& batches, Backend& backend,
                           const CalibrateOptions& options, std::optional<CalibrationState> resume) {
  if (batches.empty()) throw_bad_input("calibration data", "no batches");
  const int n = model.spec().num_layers;
  if (!model.has_indexer(0)) throw_bad_input("calibrate", "layer 0 has no indexer weights (it is F in every plan)");
  std::string start(n, 'S');
  for (int l = 0; l < n; ++l)
    if (model.has_indexer(l)) start[l] = 'F';
  if (options.stop.keep_fraction && !(*options.stop.keep_fraction > 0 && *options.stop.keep_fraction <= 1))
    throw_bad_input("--keep", "must be in (0, 1]");
  if (options.stop.keep_layers && (*options.stop.keep_layers < 1 || *options.stop.keep_layers > model.spec().num_layers))
    throw_bad_input("--keep-layers", "must be in [1, " + std::to_string(model.spec().num_layers) + "]");
  if (options.stop.max_loss_increase && !(*options.stop.max_loss_increase >= 0))
    throw_bad_input("--max-loss-increase", "must be >= 0");
  Search search(model, batches, backend, options, IndexPlan::from_pattern(start, n, "start plan"));
  return search.run(std::move(resume));
}

double plan_loss(const Model& model, const IndexPlan& plan, const std::vector<std::vector<int32_t>>& batches,
                 Backend& backend) {
  Session s(model, plan, backend);
  LossSum total;
  for (const auto& b : batches) {
    s.reset();
    const ChunkResult r = s.forward(b);
    total += next_token_loss(r.logits, b, r.vocab);
  }
  return total.mean();
}

}  // namespace indexcache
