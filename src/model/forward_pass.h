// THE forward pass of a DSA model, in backend ops only: the tokens of one step through the layers.
// A step is one or more sequences' chunks laid one after another (a Session's step has one; a
// BatchSession's one per running sequence). The dense work (norms, projections, MLP / MoE, lm_head)
// runs over all the step's tokens at once; each sequence's cache writes, indexer, top-k and sparse
// attention run over its own cache, under its own plan. Every layer:
//   x -> RMSNorm -> MLA in absorbed form (queries folded into the kv latent space, keys/values are
//   the cached latent + roped key part shared by all heads) over the top-k selection of this
//   layer's indexer (F) or the nearest preceding F layer's (S) -> residual -> RMSNorm -> MLP/MoE.
#pragma once

#include <span>
#include <vector>

#include "backend/arena.h"
#include "backend/backend.h"
#include "indexcache/index_plan.h"
#include "indexcache/session.h"
#include "model/placed_weights.h"

namespace indexcache {

// Where one sequence keeps its cache rows, per layer: its own contiguous rows (pages empty), or
// pages of pools shared by every sequence (one page table for all layers).
struct SegmentCache {
  const std::vector<TensorView>* latent = nullptr;      // per layer [rows, kv_lora_rank + rope]
  const std::vector<TensorView>* index_keys = nullptr;  // per layer [rows, index_head_dim] (F layers)
  PageTable pages{};
};

// One sequence's tokens in a step: the step's rows t0..t0+n-1, at positions p0..p0+n-1.
struct Segment {
  int t0 = 0, n = 0, p0 = 0;
  int keys = 0;  // the cache rows its ops see: p0 + n, or more (a recorded decode step)
  int k = 0;     // selection width: min(index_topk, keys), no query has more candidates
  const IndexPlan* plan = nullptr;
  SegmentCache cache;
};

struct Step {
  int n = 0;                         // tokens, all segments together
  std::vector<Segment> segments;     // in row order, covering rows 0..n-1
  TensorView ids, positions, valid;  // int32 [n] in backend memory; valid = positions + 1
};

// Rows first..first+n-1 of a step.
struct RowRange {
  int first = 0, n = 0;
};

// A view's elements as f32 on the host (observers see f32 whatever the activation dtype).
std::vector<float> host_f32(Backend& be, const TensorView& v);

class ForwardPass {
 public:
  ForwardPass(Backend& be, const ModelSpec& spec, const PlacedWeights& w, Arena& arena)
      : be_(be), s_(spec), w_(w), arena_(arena), act_(be.activation_dtype()) {}
  // The RoPE tables (f32 [positions, rope_dim / 2] in backend memory) every later step reads.
  void set_rope(TensorView cos, TensorView sin) {
    cos_ = cos;
    sin_ = sin;
  }
  // x = the step's token embeddings (f32 [n, hidden], the residual stream, from the arena).
  TensorView embed(const Step& step);
  // Enqueues layers first_layer.. of the step from x, then the final norm and lm_head over
  // `logit_rows` (ranges of the step's rows, in order): f32 [their rows, vocab], empty when none.
  // sel[segment][layer]: each layer's selection (F: taken here; the F layers before first_layer
  // given). o.observer needs a step of one segment; it is handed only what it wants.
  TensorView run_layers(const Step& step, int first_layer, TensorView x,
                        std::vector<std::vector<TensorView>>& sel, std::span<const RowRange> logit_rows,
                        const ForwardOptions& o);

 private:
  void attention(const Step& step, int layer, TensorView h, const ForwardOptions& o,
                 std::vector<std::vector<TensorView>>& sel, bool scores_wanted, TensorView x);
  RopeOp rope_op(TensorView x, TensorView positions, int offset, RopeLayout layout) const {
    return {.x = x, .offset = offset, .rope_dim = s_.qk_rope_head_dim, .cos = cos_, .sin = sin_,
            .positions = positions, .layout = layout};
  }

  Backend& be_;
  const ModelSpec& s_;
  const PlacedWeights& w_;
  Arena& arena_;
  DType act_;
  TensorView cos_, sin_;
};

}  // namespace indexcache
