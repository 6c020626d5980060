// The prefill forward pass of a DSA model (both families), layer by layer:
//   x -> RMSNorm -> MLA with the lightning indexer (F layers) or the reused selection (S layers)
//     -> sparse attention over the selected tokens -> residual -> RMSNorm -> MLP / MoE -> residual.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/backend.h"
#include "indexcache/error.h"
#include "indexcache/model.h"
#include "model/moe.h"
#include "model/rope_table.h"
#include "model/weights.h"

namespace indexcache {

namespace {

using Vec = std::vector<float>;

constexpr float kLatentNormEps = 1e-6f;

struct Context {
  const ModelSpec& s;
  Backend& be;
  const RopeTable& rope;
  const std::vector<int32_t>& positions;
  int T;
};

// Runs layer `lw`'s indexer on h (normed input) and qr (normed q latent); writes the top-k of
// every query into `sel` [T, k] and, if requested, the full scores into `captured` [T, T].
void run_indexer(const Context& c, const IndexerWeights& iw, const float* h, const float* qr, int k,
                 int query_block, std::vector<int32_t>& sel, Vec* captured) {
  const ModelSpec& s = c.s;
  const int T = c.T, H = s.hidden_size, hi = s.index_n_heads, di = s.index_head_dim;
  Vec q(static_cast<size_t>(T) * hi * di), key(static_cast<size_t>(T) * di), w(static_cast<size_t>(T) * hi);
  c.be.linear({.x = qr, .x_stride = s.q_lora_rank, .w = iw.wq_b, .y = q.data(), .y_stride = hi * di,
               .tokens = T, .in = s.q_lora_rank, .out = hi * di});
  c.be.linear({.x = h, .x_stride = H, .w = iw.wk, .y = key.data(), .y_stride = di, .tokens = T,
               .in = H, .out = di});
  c.be.norm({.x = key.data(), .x_stride = di, .w = iw.k_norm_w, .bias = iw.k_norm_b, .y = key.data(),
             .y_stride = di, .tokens = T, .dim = di, .eps = 1e-6f, .layer_norm = true});
  for (auto [x, heads] : {std::pair{q.data(), hi}, std::pair{key.data(), 1}}) {
    c.be.rope({.x = x, .token_stride = static_cast<int64_t>(heads) * di, .head_stride = di, .tokens = T,
               .heads = heads, .offset = 0, .rope_dim = s.qk_rope_head_dim, .cos = c.rope.cos.data(),
               .sin = c.rope.sin.data(), .positions = c.positions.data(),
               .layout = s.indexer_rope_layout()});
  }
  c.be.linear({.x = h, .x_stride = H, .w = iw.weights_proj, .y = w.data(), .y_stride = hi,
               .tokens = T, .in = H, .out = hi});
  const float head_scale = 1.0f / std::sqrt(static_cast<float>(hi));
  for (float& v : w) v *= head_scale;

  sel.assign(static_cast<size_t>(T) * k, -1);
  if (captured) captured->assign(static_cast<size_t>(T) * T, 0.0f);
  const int block = std::max(1, query_block);
  Vec scores(static_cast<size_t>(std::min(block, T)) * T);
  std::vector<int32_t> valid(block);
  for (int t0 = 0; t0 < T; t0 += block) {
    const int n = std::min(block, T - t0);
    c.be.indexer_scores({.q = q.data() + static_cast<size_t>(t0) * hi * di,
                         .w = w.data() + static_cast<size_t>(t0) * hi, .k = key.data(),
                         .positions = c.positions.data() + t0, .scores = scores.data(),
                         .scores_stride = T, .tokens = n, .keys = T, .heads = hi, .head_dim = di,
                         .scale = 1.0f / std::sqrt(static_cast<float>(di))});
    for (int i = 0; i < n; ++i) valid[i] = c.positions[t0 + i] + 1;
    c.be.topk({.scores = scores.data(), .scores_stride = T, .valid = valid.data(),
               .indices = sel.data() + static_cast<size_t>(t0) * k, .tokens = n, .k = k});
    if (captured)
      std::copy_n(scores.data(), static_cast<size_t>(n) * T, captured->data() + static_cast<size_t>(t0) * T);
  }
}

// Multi-head latent attention of one layer on the normed input h; adds its output to x.
void attention(const Context& c, const LayerWeights& lw, const float* h, int k, bool run_own_indexer,
               int query_block, std::vector<int32_t>& sel, Vec* captured, float* x) {
  const ModelSpec& s = c.s;
  const int T = c.T, H = s.hidden_size, nh = s.num_heads, qlr = s.q_lora_rank, kvlr = s.kv_lora_rank;
  const int nope = s.qk_nope_head_dim, rd = s.qk_rope_head_dim, qkd = s.qk_head_dim(), vd = s.v_head_dim;

  Vec qr(static_cast<size_t>(T) * qlr);
  c.be.linear({.x = h, .x_stride = H, .w = lw.q_a, .bias = lw.q_a_bias, .y = qr.data(), .y_stride = qlr,
               .tokens = T, .in = H, .out = qlr});
  // transformers builds q_a_layernorm and kv_a_layernorm with the RMSNorm default eps (1e-6),
  // not rms_norm_eps.
  c.be.norm({.x = qr.data(), .x_stride = qlr, .w = lw.q_a_norm, .y = qr.data(), .y_stride = qlr,
             .tokens = T, .dim = qlr, .eps = kLatentNormEps});
  Vec q(static_cast<size_t>(T) * nh * qkd);
  c.be.linear({.x = qr.data(), .x_stride = qlr, .w = lw.q_b, .y = q.data(), .y_stride = nh * qkd,
               .tokens = T, .in = qlr, .out = nh * qkd});
  Vec kv(static_cast<size_t>(T) * (kvlr + rd));
  c.be.linear({.x = h, .x_stride = H, .w = lw.kv_a, .bias = lw.kv_a_bias, .y = kv.data(),
               .y_stride = kvlr + rd, .tokens = T, .in = H, .out = kvlr + rd});
  c.be.norm({.x = kv.data(), .x_stride = kvlr + rd, .w = lw.kv_a_norm, .y = kv.data(),
             .y_stride = kvlr + rd, .tokens = T, .dim = kvlr, .eps = kLatentNormEps});
  // Main MLA rope: interleaved, on the last rd dims of each query head and on the shared k_pe.
  c.be.rope({.x = q.data(), .token_stride = static_cast<int64_t>(nh) * qkd, .head_stride = qkd,
             .tokens = T, .heads = nh, .offset = nope, .rope_dim = rd, .cos = c.rope.cos.data(),
             .sin = c.rope.sin.data(), .positions = c.positions.data(), .layout = RopeLayout::kInterleaved});
  c.be.rope({.x = kv.data(), .token_stride = kvlr + rd, .head_stride = 0, .tokens = T, .heads = 1,
             .offset = kvlr, .rope_dim = rd, .cos = c.rope.cos.data(), .sin = c.rope.sin.data(),
             .positions = c.positions.data(), .layout = RopeLayout::kInterleaved});

  if (run_own_indexer) run_indexer(c, lw.indexer, h, qr.data(), k, query_block, sel, captured);

  // Expanded keys/values: k = [k_nope (per head), k_pe (shared)], v per head.
  const int kvb_w = nh * (nope + vd);
  Vec kvb(static_cast<size_t>(T) * kvb_w);
  c.be.linear({.x = kv.data(), .x_stride = kvlr + rd, .w = lw.kv_b, .y = kvb.data(), .y_stride = kvb_w,
               .tokens = T, .in = kvlr, .out = kvb_w});
  Vec keys(static_cast<size_t>(T) * nh * qkd);
  for (int t = 0; t < T; ++t) {
    for (int hd = 0; hd < nh; ++hd) {
      float* dst = keys.data() + (static_cast<size_t>(t) * nh + hd) * qkd;
      std::copy_n(kvb.data() + static_cast<size_t>(t) * kvb_w + hd * (nope + vd), nope, dst);
      std::copy_n(kv.data() + static_cast<size_t>(t) * (kvlr + rd) + kvlr, rd, dst + nope);
    }
  }
  Vec out(static_cast<size_t>(T) * nh * vd);
  c.be.sparse_attention({.q = q.data(), .q_token_stride = static_cast<int64_t>(nh) * qkd, .q_head_stride = qkd,
                         .k = keys.data(), .k_token_stride = static_cast<int64_t>(nh) * qkd, .k_head_stride = qkd,
                         .v = kvb.data() + nope, .v_token_stride = kvb_w, .v_head_stride = nope + vd,
                         .indices = sel.data(), .num_selected = k, .out = out.data(),
                         .out_token_stride = static_cast<int64_t>(nh) * vd, .out_head_stride = vd,
                         .tokens = T, .heads = nh, .kv_heads = nh, .head_dim_k = qkd, .head_dim_v = vd,
                         .scale = static_cast<float>(s.attention_scale())});
  Vec o(static_cast<size_t>(T) * H);
  c.be.linear({.x = out.data(), .x_stride = nh * vd, .w = lw.o, .bias = lw.o_bias, .y = o.data(),
               .y_stride = H, .tokens = T, .in = nh * vd, .out = H});
  for (size_t i = 0; i < o.size(); ++i) x[i] += o[i];
}

}  // namespace

PrefillResult prefill(const Model& model, const IndexPlan& plan, std::span<const int32_t> ids,
                      Backend& be, const PrefillOptions& options) {
  const ModelSpec& s = model.spec();
  const ModelWeights& w = model.weights();
  model.check_plan(plan);
  const int T = static_cast<int>(ids.size());
  if (T == 0) throw_bad_input("input ids", "empty sequence");
  if (T > s.max_position_embeddings)
    throw_bad_input("input ids", std::to_string(T) + " tokens exceed max_position_embeddings " +
                                     std::to_string(s.max_position_embeddings));
  for (int32_t id : ids)
    if (id < 0 || id >= s.vocab_size)
      throw_bad_input("input ids", "token id " + std::to_string(id) + " outside the vocabulary [0, " +
                                       std::to_string(s.vocab_size) + ")");

  const int H = s.hidden_size;
  const int k = std::min(s.index_topk, T);
  std::vector<int32_t> positions(T);
  std::iota(positions.begin(), positions.end(), 0);
  const RopeTable rope = make_rope_table(s, T);
  const Context c{s, be, rope, positions, T};

  PrefillResult r;
  r.tokens = T;
  r.vocab = s.vocab_size;
  r.k = k;
  r.topk.resize(s.num_layers);
  if (options.capture_index_scores) r.index_scores.resize(s.num_layers);

  Vec x(static_cast<size_t>(T) * H), hn(x.size()), mlp_out(x.size());
  for (int t = 0; t < T; ++t)
    std::copy_n(w.embed + static_cast<size_t>(ids[t]) * H, H, x.data() + static_cast<size_t>(t) * H);

  for (int l = 0; l < s.num_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    be.norm({.x = x.data(), .x_stride = H, .w = lw.input_norm, .y = hn.data(), .y_stride = H,
             .tokens = T, .dim = H, .eps = static_cast<float>(s.rms_norm_eps)});
    const bool full = plan.is_full(l);
    if (!full) r.topk[l] = r.topk[plan.source_layer(l)];
    attention(c, lw, hn.data(), k, full, options.query_block, r.topk[l],
              full && options.capture_index_scores ? &r.index_scores[l] : nullptr, x.data());
    be.norm({.x = x.data(), .x_stride = H, .w = lw.post_attn_norm, .y = hn.data(), .y_stride = H,
             .tokens = T, .dim = H, .eps = static_cast<float>(s.rms_norm_eps)});
    if (lw.moe)
      moe_forward(be, s, lw, hn.data(), T, mlp_out.data());
    else
      mlp_forward(be, lw.dense, hn.data(), T, H, s.intermediate_size, mlp_out.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += mlp_out[i];
  }
  be.norm({.x = x.data(), .x_stride = H, .w = w.final_norm, .y = hn.data(), .y_stride = H, .tokens = T,
           .dim = H, .eps = static_cast<float>(s.rms_norm_eps)});
  r.logits.resize(static_cast<size_t>(T) * s.vocab_size);
  be.linear({.x = hn.data(), .x_stride = H, .w = w.lm_head, .y = r.logits.data(), .y_stride = s.vocab_size,
             .tokens = T, .in = H, .out = s.vocab_size});
  return r;
}

}  // namespace indexcache
