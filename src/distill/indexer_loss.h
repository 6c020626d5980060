// The multi-layer distillation loss of one F layer's indexer and its gradient (issue 14; the maths
// in ../shared/REFERENCE.md section 2), on the host in f32 from a teacher forward's captures.
//
// For F layer l serving layers J = {l, l+1, ..., l+m} (itself and the S layers after it):
//   L = (1/T) sum_t KL(pbar_t || q_t),  pbar_t = mean_{j in J} p_t^(j),  q_t = softmax(I_l[t, .])
// over the keys of query t: every causal key (dense stage) or layer l's top-k set K_t (sparse
// stage, the selection held fixed). p_t^(j) is layer j's attention averaged over its heads, each
// head's softmax taken over the same keys. A single-layer target (what the training stacks use) is
// J = {l}. The gradient of L with respect to I is (q - pbar) / T on the keys of each query, then
// back through the indexer (ReLU head scores, RoPE, the key LayerNorm and the three projections).
// Memory: O(T) per layer plus one block of queries x T; never a T x T matrix.
#pragma once

#include <span>
#include <vector>

#include "indexcache/model_spec.h"
#include "indexcache/session.h"
#include "model/rope_table.h"
#include "model/weights.h"

namespace indexcache::distill {

enum class Stage { kDense, kSparse };

// One F layer's trainable indexer tensors in f32, shaped as the checkpoint's.
struct IndexerParams {
  std::vector<float> wq_b;          // [Hi * Di, q_lora_rank]
  std::vector<float> wk;            // [Di, hidden]
  std::vector<float> k_norm_w;      // [Di]
  std::vector<float> k_norm_b;      // [Di]
  std::vector<float> weights_proj;  // [Hi, hidden]

  static IndexerParams zeros(const ModelSpec& spec);
  static IndexerParams from(const IndexerWeights& w, const ModelSpec& spec);
  // The five tensors in the order above (optimisers and tests walk them alike).
  std::vector<std::vector<float>*> all();
  std::vector<const std::vector<float>*> all() const;
};

// One layer's attention inputs from the teacher forward (AttentionInputs, kept).
struct TeacherLayer {
  std::vector<float> input, query_latent, queries, keys;
};

// Keeps every layer's attention inputs of one forward of a whole sequence from position 0.
class TeacherCapture final : public LayerObserver {
 public:
  explicit TeacherCapture(int layers) : layers(layers) {}
  Wants wants() const override { return {.attention = true}; }
  void on_attention(int layer, const AttentionInputs& in) override;
  std::vector<TeacherLayer> layers;
};

struct GroupLoss {
  double loss = 0;
  IndexerParams grad;
};

// The loss of the indexer `student` of the F layer captured in `f` against the layers `served`
// (the F layer's own capture first), over `tokens` tokens at positions 0..tokens-1, and its
// gradient. `rope` covers the positions; `query_block` queries are scored at a time.
GroupLoss indexer_group_loss(const ModelSpec& spec, const RopeTable& rope, const IndexerParams& student,
                             const TeacherLayer& f, std::span<const TeacherLayer* const> served, int tokens,
                             Stage stage, int query_block = 64);

// The indexer's scores I[t, s] of `student` on `f` (s <= t; -inf above the diagonal), [tokens, tokens]:
// the same forward as the loss uses (tests compare it with the engine's own indexer).
std::vector<float> indexer_scores(const ModelSpec& spec, const RopeTable& rope, const IndexerParams& student,
                                  const TeacherLayer& f, int tokens);

}  // namespace indexcache::distill
