#include "model/placed_weights.h"

#include <functional>
#include <initializer_list>

namespace indexcache {

namespace {

// Places each weight, counting its bytes (as stored on the host); with `measure` it only counts.
struct Placer {
  Backend& be;
  bool measure = false;
  const std::function<void(int64_t, int64_t)>* on_bytes = nullptr;
  int64_t total = 0;
  mutable int64_t done = 0;
  TensorView operator()(WeightRef w, std::initializer_list<int64_t> shape, bool keep_f32 = false) const {
    if (!w) return {};
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    done += n * static_cast<int64_t>(dtype_size(w.dtype));
    if (measure) return {};
    const TensorView v = be.place(w.data, w.dtype, std::span<const int64_t>(shape.begin(), shape.size()), keep_f32);
    if (on_bytes && *on_bytes) (*on_bytes)(done, total);
    return v;
  }
  MlpWeightsView mlp(const ExpertWeights& e, int64_t hidden, int64_t inter) const {
    return {(*this)(e.gate, {inter, hidden}), (*this)(e.up, {inter, hidden}), (*this)(e.down, {hidden, inter})};
  }
};

}  // namespace

namespace {

PlacedWeights place_all(const Placer& P, const ModelSpec& s, const ModelWeights& w);

}  // namespace

PlacedWeights place_weights(Backend& be, const ModelSpec& s, const ModelWeights& w,
                            const std::function<void(int64_t, int64_t)>& on_bytes) {
  Placer measure{be, true};
  if (on_bytes) place_all(measure, s, w);
  const Placer P{be, false, &on_bytes, measure.done};
  return place_all(P, s, w);
}

namespace {

PlacedWeights place_all(const Placer& P, const ModelSpec& s, const ModelWeights& w) {
  const int64_t V = s.vocab_size, H = s.hidden_size, nh = s.num_heads, qlr = s.q_lora_rank;
  const int64_t kvlr = s.kv_lora_rank, rd = s.qk_rope_head_dim, nope = s.qk_nope_head_dim, vd = s.v_head_dim;
  const int64_t hi = s.index_n_heads, di = s.index_head_dim;
  PlacedWeights p;
  p.embed = P(w.embed, {V, H});
  p.final_norm = P(w.final_norm, {H});
  p.lm_head = P(w.lm_head, {V, H});
  p.layers.resize(w.layers.size());
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& lw = w.layers[l];
    PlacedLayer& pl = p.layers[l];
    pl.input_norm = P(lw.input_norm, {H});
    pl.post_attn_norm = P(lw.post_attn_norm, {H});
    pl.q_a = P(lw.q_a, {qlr, H});
    pl.q_a_bias = P(lw.q_a_bias, {qlr});
    pl.q_a_norm = P(lw.q_a_norm, {qlr});
    pl.q_b = P(lw.q_b, {nh * s.qk_head_dim(), qlr});
    pl.kv_a = P(lw.kv_a, {kvlr + rd, H});
    pl.kv_a_bias = P(lw.kv_a_bias, {kvlr + rd});
    pl.kv_a_norm = P(lw.kv_a_norm, {kvlr});
    pl.uk = P(lw.uk_t, {nh, kvlr, nope});
    const TensorView kv_b = P(lw.kv_b, {nh * (nope + vd), kvlr});
    if (!kv_b.empty()) pl.uv = view3d(kv_b.at(nope), kv_b.dtype, nh, vd, kvlr, (nope + vd) * kvlr, kvlr);
    pl.o = P(lw.o, {H, nh * vd});
    pl.o_bias = P(lw.o_bias, {H});
    pl.has_indexer = lw.has_indexer;
    if (lw.has_indexer) {
      pl.wq_b = P(lw.indexer.wq_b, {hi * di, qlr});
      pl.wk = P(lw.indexer.wk, {di, H});
      pl.k_norm_w = P(lw.indexer.k_norm_w, {di});
      pl.k_norm_b = P(lw.indexer.k_norm_b, {di});
      pl.weights_proj = P(lw.indexer.weights_proj, {hi, H});
    }
    pl.moe = lw.moe;
    if (!lw.moe) {
      pl.dense = P.mlp(lw.dense, H, s.intermediate_size);
      continue;
    }
    pl.router = P(lw.router, {s.n_routed_experts, H});
    pl.router_bias = P(lw.router_bias, {s.n_routed_experts}, /*keep_f32=*/true);
    pl.experts.reserve(lw.experts.size());
    for (const ExpertWeights& e : lw.experts) pl.experts.push_back(P.mlp(e, H, s.moe_intermediate_size));
    pl.has_shared = lw.has_shared;
    if (lw.has_shared)
      pl.shared = P.mlp(lw.shared, H, static_cast<int64_t>(s.moe_intermediate_size) * s.n_shared_experts);
  }
  return p;
}

}  // namespace

}  // namespace indexcache
