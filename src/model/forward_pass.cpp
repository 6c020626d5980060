#include "model/forward_pass.h"

#include <algorithm>
#include <cmath>

#include "indexcache/error.h"

namespace indexcache {

namespace {

// transformers builds q_a_layernorm and kv_a_layernorm with the RMSNorm default eps (1e-6), not
// rms_norm_eps; the indexer's key LayerNorm uses 1e-6 too.
constexpr float kLatentNormEps = 1e-6f;
constexpr float kIndexerNormEps = 1e-6f;

// A segment's cache of one layer as its ops see it: its rows 0..keys-1, or the whole page pool.
TensorView cache_seen(const Segment& g, const std::vector<TensorView>& per_layer, int layer) {
  const TensorView& c = per_layer[layer];
  return g.cache.pages.empty() ? c.rows(0, g.keys) : c;
}

}  // namespace

std::vector<float> host_f32(Backend& be, const TensorView& v) {
  std::vector<float> out(static_cast<size_t>(v.numel()));
  if (v.dtype == DType::kF32) {
    be.download(v, out.data());
  } else {
    std::vector<std::byte> raw(out.size() * dtype_size(v.dtype));
    be.download(v, raw.data());
    convert_to_f32(v.dtype, raw.data(), out.size(), out.data());
  }
  return out;
}

TensorView ForwardPass::embed(const Step& step) {
  const TensorView x = arena_.take(DType::kF32, step.n, s_.hidden_size);
  be_.embed({.table = w_.embed, .ids = step.ids, .out = x});
  return x;
}

void ForwardPass::attention(const Step& step, int layer, TensorView h, const ForwardOptions& o,
                            std::vector<std::vector<TensorView>>& sel, bool scores_wanted, TensorView x) {
  const PlacedLayer& lw = w_.layers[layer];
  const int n = step.n, nh = s_.num_heads, qlr = s_.q_lora_rank, kvlr = s_.kv_lora_rank;
  const int nope = s_.qk_nope_head_dim, rd = s_.qk_rope_head_dim, qkd = s_.qk_head_dim(), vd = s_.v_head_dim;
  const int lat = kvlr + rd;  // one cached token: normed latent, then the roped key part

  // Projections that feed a norm stay f32 until the norm writes them in the activation dtype.
  const TensorView qr_raw = arena_.take(DType::kF32, n, qlr);
  const TensorView qr = arena_.take(act_, n, qlr);
  be_.linear({.x = h, .w = lw.q_a, .bias = lw.q_a_bias, .y = qr_raw});
  be_.norm({.x = qr_raw, .w = lw.q_a_norm, .y = qr, .eps = kLatentNormEps});
  const TensorView q = arena_.take(act_, n, int64_t{nh} * qkd);
  be_.linear({.x = qr, .w = lw.q_b, .y = q});
  const TensorView q3 = q.split_heads(nh);
  // Each token's latent row into its sequence's cache row at its position (read on the device, so
  // that a recorded step writes where the step is): the normed latent, then the roped key part.
  const TensorView kv_raw = arena_.take(DType::kF32, n, lat);
  be_.linear({.x = h, .w = lw.kv_a, .bias = lw.kv_a_bias, .y = kv_raw});
  for (const Segment& g : step.segments)
    be_.cache_rows({.x = kv_raw.rows(g.t0, g.n), .norm_w = lw.kv_a_norm, .cache = (*g.cache.latent)[layer],
                    .positions = step.positions.rows(g.t0, g.n), .cos = cos_, .sin = sin_, .norm_dim = kvlr,
                    .eps = kLatentNormEps, .rope_offset = kvlr, .rope_dim = rd, .layout = RopeLayout::kInterleaved,
                    .pages = g.cache.pages});

  // The indexer's projections over the whole step (when any sequence runs it here), then each
  // such sequence's keys, scores and top-k over its own cache.
  const bool any_full = std::any_of(step.segments.begin(), step.segments.end(),
                                    [&](const Segment& g) { return g.plan->is_full(layer); });
  if (any_full) {
    const int hi = s_.index_n_heads, di = s_.index_head_dim;
    const TensorView iq = arena_.take(act_, n, int64_t{hi} * di).split_heads(hi);
    const TensorView wts = arena_.take(DType::kF32, n, hi);
    be_.linear({.x = qr, .w = lw.wq_b, .y = view2d(iq.data, act_, n, int64_t{hi} * di)});
    // The key projection stays f32 until its LayerNorm writes the roped key into the cache row at
    // its position (in the cache's dtype).
    const TensorView raw_keys = arena_.take(DType::kF32, n, di);
    be_.linear({.x = h, .w = lw.wk, .y = raw_keys});
    be_.rope(rope_op(iq, step.positions, 0, s_.indexer_rope_layout()));
    be_.linear({.x = h, .w = lw.weights_proj, .y = wts, .alpha = 1.0f / std::sqrt(static_cast<float>(hi))});
    for (size_t gi = 0; gi < step.segments.size(); ++gi) {
      const Segment& g = step.segments[gi];
      if (!g.plan->is_full(layer)) continue;
      const TensorView positions = step.positions.rows(g.t0, g.n);
      be_.cache_rows({.x = raw_keys.rows(g.t0, g.n), .norm_w = lw.k_norm_w, .norm_bias = lw.k_norm_b,
                      .cache = (*g.cache.index_keys)[layer], .positions = positions, .cos = cos_, .sin = sin_,
                      .norm_dim = di, .eps = kIndexerNormEps, .layer_norm = true, .rope_offset = 0,
                      .rope_dim = s_.qk_rope_head_dim, .layout = s_.indexer_rope_layout(), .pages = g.cache.pages});
      const int S = g.keys;
      LayerObserver* scores_to = scores_wanted ? o.observer : nullptr;
      std::vector<float> captured(scores_to ? static_cast<size_t>(g.n) * S : 0);
      const int block = std::max(1, std::min(o.query_block > 0 ? o.query_block : be_.indexer_query_block(), g.n));
      const TensorView scores = arena_.take(DType::kF32, block, S);
      const TensorView keys = cache_seen(g, *g.cache.index_keys, layer);
      const TensorView valid = step.valid.rows(g.t0, g.n);
      const TensorView sel_g = sel[gi][layer];
      for (int t0 = 0; t0 < g.n; t0 += block) {
        const int m = std::min(block, g.n - t0);
        be_.indexer_scores({.q = iq.rows(g.t0 + t0, m), .w = wts.rows(g.t0 + t0, m), .k = keys,
                            .positions = positions.rows(t0, m), .scores = scores.rows(0, m),
                            .scale = 1.0f / std::sqrt(static_cast<float>(di)), .pages = g.cache.pages});
        be_.topk({.scores = scores.rows(0, m), .valid = valid.rows(t0, m), .indices = sel_g.rows(t0, m)});
        if (scores_to) be_.download(scores.rows(0, m), captured.data() + static_cast<size_t>(t0) * S);
      }
      if (scores_to) scores_to->on_index_scores(layer, captured);
    }
  }

  // Absorbed queries [n, nh, kvlr + rd]: q_nope folded through each head's key rows of kv_b, then
  // q_rope roped into the rest.
  const TensorView qa = arena_.take(act_, n, int64_t{nh} * lat).split_heads(nh);
  be_.linear_heads({.x = q3.cols(0, nope), .w = lw.uk, .y = qa.cols(0, kvlr)});
  RopeOp qrope = rope_op(qa, step.positions, kvlr, RopeLayout::kInterleaved);
  qrope.src = q3.cols(nope, rd);
  be_.rope(qrope);
  if (o.observer && o.observer->wants().attention) {
    const Segment& g = step.segments[0];
    const std::vector<float> hh = host_f32(be_, h), qrh = host_f32(be_, qr), qah = host_f32(be_, qa),
                             keys = host_f32(be_, cache_seen(g, *g.cache.latent, layer));
    o.observer->on_attention(layer, {.input = hh, .query_latent = qrh, .queries = qah, .keys = keys});
  }
  const TensorView out_latent = arena_.take(act_, n, int64_t{nh} * kvlr).split_heads(nh);
  for (size_t gi = 0; gi < step.segments.size(); ++gi) {
    const Segment& g = step.segments[gi];
    be_.sparse_attention({.q = qa.rows(g.t0, g.n), .kv = cache_seen(g, *g.cache.latent, layer),
                          .indices = sel[gi][layer], .out = out_latent.rows(g.t0, g.n),
                          .scale = static_cast<float>(s_.attention_scale()), .pages = g.cache.pages});
  }
  // Each head's latent output through its value rows of kv_b, then o_proj.
  const TensorView heads_out = arena_.take(act_, n, int64_t{nh} * vd);
  be_.linear_heads({.x = out_latent, .w = lw.uv, .y = heads_out.split_heads(nh)});
  be_.linear({.x = heads_out, .w = lw.o, .bias = lw.o_bias, .y = x, .accumulate = true});  // the residual
}

TensorView ForwardPass::run_layers(const Step& step, int first_layer, TensorView x,
                                   std::vector<std::vector<TensorView>>& sel, std::span<const RowRange> logit_rows,
                                   const ForwardOptions& o) {
  if (o.observer && step.segments.size() != 1) throw_runtime("forward pass", "an observer needs a step of one sequence");
  const int n = step.n, H = s_.hidden_size;
  const LayerObserver::Wants wants = o.observer ? o.observer->wants() : LayerObserver::Wants{};
  std::vector<float> input(wants.inputs ? static_cast<size_t>(n) * H : 0);
  sel.resize(step.segments.size());
  for (auto& v : sel) v.resize(s_.num_layers);
  const TensorView hn = arena_.take(act_, n, H);
  for (int l = first_layer; l < s_.num_layers; ++l) {
    const PlacedLayer& lw = w_.layers[l];
    if (wants.inputs) {
      be_.download(x, input.data());
      o.observer->on_input(l, input);
    }
    be_.norm({.x = x, .w = lw.input_norm, .y = hn, .eps = static_cast<float>(s_.rms_norm_eps)});
    for (size_t gi = 0; gi < step.segments.size(); ++gi) {
      const Segment& g = step.segments[gi];
      sel[gi][l] = g.plan->is_full(l) ? arena_.take(DType::kI32, g.n, g.k) : sel[gi][g.plan->source_layer(l)];
    }
    attention(step, l, hn, o, sel, wants.index_scores, x);
    be_.norm({.x = x, .w = lw.post_attn_norm, .y = hn, .eps = static_cast<float>(s_.rms_norm_eps)});
    if (lw.moe) {  // into the residual
      be_.moe({.x = hn, .y = x, .router = lw.router, .router_bias = lw.router_bias, .experts = lw.experts,
               .shared = lw.has_shared ? &lw.shared : nullptr, .groups = s_.n_group, .topk_group = s_.topk_group,
               .experts_per_token = s_.num_experts_per_tok, .norm_topk_prob = s_.norm_topk_prob,
               .routed_scaling = static_cast<float>(s_.routed_scaling_factor), .accumulate = true});
    } else {
      be_.mlp({.x = hn, .y = x, .w = lw.dense, .accumulate = true});
    }
  }
  int rows = 0;
  for (const RowRange& r : logit_rows) {
    be_.norm({.x = x.rows(r.first, r.n), .w = w_.final_norm, .y = hn.rows(rows, r.n),
              .eps = static_cast<float>(s_.rms_norm_eps)});
    rows += r.n;
  }
  if (rows == 0) return {};
  const TensorView logits = arena_.take(DType::kF32, rows, s_.vocab_size);
  be_.linear({.x = hn.rows(0, rows), .w = w_.lm_head, .y = logits});
  return logits;
}

}  // namespace indexcache
