// One sequence through a DSA model, chunk by chunk. Every layer:
//   x -> RMSNorm -> MLA in absorbed form (queries folded into the kv latent space, keys/values are
//   the cached latent + roped key part shared by all heads) over the top-k selection of this
//   layer's indexer (F) or the nearest preceding F layer's (S) -> residual -> RMSNorm -> MLP/MoE.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "backend/arena.h"
#include "backend/backend.h"
#include "indexcache/error.h"
#include "indexcache/model.h"
#include "indexcache/session.h"
#include "model/placed_weights.h"
#include "model/rope_table.h"
#include "model/weights.h"

namespace indexcache {

namespace {

// transformers builds q_a_layernorm and kv_a_layernorm with the RMSNorm default eps (1e-6), not
// rms_norm_eps; the indexer's key LayerNorm uses 1e-6 too.
constexpr float kLatentNormEps = 1e-6f;
constexpr float kIndexerNormEps = 1e-6f;

// Rows of one layer's cache in backend memory, grown by doubling (rows kept).
struct CacheRows {
  Tensor t{};
  int64_t width = 0;
  int64_t capacity = 0;
};

}  // namespace

int64_t KvCacheFootprint::bytes_per_token() const {
  return latent_bytes_per_token_per_layer * layers + indexer_bytes_per_token_per_layer * indexer_layers;
}

KvCacheFootprint kv_cache_footprint(const ModelSpec& spec, const IndexPlan& plan, int element_bytes) {
  KvCacheFootprint f;
  f.latent_bytes_per_token_per_layer = int64_t{spec.kv_lora_rank + spec.qk_rope_head_dim} * element_bytes;
  f.indexer_bytes_per_token_per_layer = int64_t{spec.index_head_dim} * element_bytes;
  f.indexer_layers = plan.num_full();
  f.layers = spec.num_layers;
  return f;
}

struct SessionState {
  const Model& model;
  const ModelSpec& s;
  IndexPlan plan;
  Backend& be;
  PlacedWeights w;
  DType act;  // activations, caches, placed weights
  int length = 0;
  std::vector<CacheRows> latent;      // per layer [tokens, kv_lora_rank + rope]
  std::vector<CacheRows> index_keys;  // per layer [tokens, index_head_dim]; width 0 on S layers
  RopeTable rope;
  Tensor rope_cos, rope_sin;  // f32 [rope_positions, rope_dim / 2] in backend memory
  int rope_positions = 0;
  Arena arena;

  SessionState(const Model& m, const IndexPlan& p, Backend& b)
      : model(m), s(m.spec()), plan(p), be(b), act(b.activation_dtype()), arena(b) {
    model.check_plan(plan);
    w = place_weights(be, s, model.weights());
    for (int l = 0; l < s.num_layers; ++l) {
      latent.push_back({.width = s.kv_lora_rank + s.qk_rope_head_dim});
      index_keys.push_back({.width = plan.is_full(l) ? s.index_head_dim : 0});  // S layers: nothing
    }
  }

  void grow(CacheRows& c, int64_t rows) {
    if (c.width == 0 || rows <= c.capacity) return;
    const int64_t cap = std::max<int64_t>(rows, std::max<int64_t>(16, c.capacity * 2));
    Tensor t = be.tensor(act, cap, c.width);
    if (length > 0 && c.capacity > 0)
      be.copy({.src = c.t.view.rows(0, std::min<int64_t>(length, c.capacity)),
               .dst = t.view.rows(0, std::min<int64_t>(length, c.capacity))});
    c.t = std::move(t);
    c.capacity = cap;
  }

  void ensure_capacity(int tokens) {
    for (int l = 0; l < s.num_layers; ++l) {
      grow(latent[l], tokens);
      grow(index_keys[l], tokens);
    }
    if (tokens > rope_positions) {
      rope_positions = std::max(tokens, std::min(2 * rope_positions, s.max_position_embeddings));
      rope = make_rope_table(s, rope_positions);
      rope_cos = be.tensor(DType::kF32, rope_positions, rope.half);
      rope_sin = be.tensor(DType::kF32, rope_positions, rope.half);
      be.upload(rope_cos.view, rope.cos.data());
      be.upload(rope_sin.view, rope.sin.data());
    }
  }

  int64_t cache_bytes() const {
    int64_t b = 0;
    for (const auto* v : {&latent, &index_keys})
      for (const CacheRows& c : *v) b += static_cast<int64_t>(c.t.buffer.bytes());
    return b;
  }

  ChunkResult forward(std::span<const int32_t> ids, const ForwardOptions& o);
  ChunkResult forward_from(int first_layer, std::span<const int32_t> ids, const ResumePoint& from,
                           const ForwardOptions& o);
  void set_plan(const IndexPlan& p);

 private:
  struct Chunk {
    int n = 0;      // tokens in the chunk
    int p0 = 0;     // first position
    int total = 0;  // tokens in the cache after the chunk
    std::vector<int32_t> positions, valid;  // valid = positions + 1 (keys a query may select from)
    TensorView positions_t, valid_t;        // the same in backend memory
  };
  Chunk begin_chunk(std::span<const int32_t> ids);
  ChunkResult run_layers(const Chunk& c, int first_layer, TensorView x, std::vector<TensorView>& sel,
                         const ForwardOptions& o);
  void run_indexer(const Chunk& c, int layer, TensorView h, TensorView qr, const ForwardOptions& o,
                   TensorView sel, std::vector<float>* captured);
  void attention(const Chunk& c, int layer, TensorView h, const ForwardOptions& o, std::vector<TensorView>& sel,
                 std::vector<float>* captured, TensorView x);
  RopeOp rope_op(const Chunk& c, TensorView x, int offset, RopeLayout layout) const {
    return {.x = x, .offset = offset, .rope_dim = s.qk_rope_head_dim, .cos = rope_cos.view, .sin = rope_sin.view,
            .positions = c.positions_t, .layout = layout};
  }
};

void SessionState::run_indexer(const Chunk& c, int layer, TensorView h, TensorView qr, const ForwardOptions& o,
                               TensorView sel, std::vector<float>* captured) {
  const PlacedLayer& lw = w.layers[layer];
  const int n = c.n, hi = s.index_n_heads, di = s.index_head_dim;
  const TensorView q = arena.take(act, n, int64_t{hi} * di).split_heads(hi);
  const TensorView wts = arena.take(DType::kF32, n, hi);
  const TensorView keys = index_keys[layer].t.view.rows(c.p0, n);  // the chunk's keys go straight into the cache
  be.linear({.x = qr, .w = lw.wq_b, .y = view2d(q.data, act, n, int64_t{hi} * di)});
  // The key projection stays f32 until its LayerNorm writes the cache row (in the cache's dtype).
  const TensorView raw_keys = arena.take(DType::kF32, n, di);
  be.linear({.x = h, .w = lw.wk, .y = raw_keys});
  be.norm({.x = raw_keys, .w = lw.k_norm_w, .bias = lw.k_norm_b, .y = keys, .eps = kIndexerNormEps, .layer_norm = true});
  be.rope(rope_op(c, q, 0, s.indexer_rope_layout()));
  be.rope(rope_op(c, keys, 0, s.indexer_rope_layout()));
  be.linear({.x = h, .w = lw.weights_proj, .y = wts});
  be.scale({.x = wts, .factor = 1.0f / std::sqrt(static_cast<float>(hi))});

  const int S = c.total;
  if (captured) captured->assign(static_cast<size_t>(n) * S, 0.0f);
  const int block = std::max(1, std::min(o.query_block > 0 ? o.query_block : be.indexer_query_block(), n));
  const TensorView scores = arena.take(DType::kF32, block, S);
  const TensorView all_keys = index_keys[layer].t.view.rows(0, S);
  for (int t0 = 0; t0 < n; t0 += block) {
    const int m = std::min(block, n - t0);
    be.indexer_scores({.q = q.rows(t0, m), .w = wts.rows(t0, m), .k = all_keys, .positions = c.positions_t.rows(t0, m),
                       .scores = scores.rows(0, m), .scale = 1.0f / std::sqrt(static_cast<float>(di))});
    be.topk({.scores = scores.rows(0, m), .valid = c.valid_t.rows(t0, m), .indices = sel.rows(t0, m)});
    if (captured) be.download(scores.rows(0, m), captured->data() + static_cast<size_t>(t0) * S);
  }
}

void SessionState::attention(const Chunk& c, int layer, TensorView h, const ForwardOptions& o,
                             std::vector<TensorView>& sel, std::vector<float>* captured, TensorView x) {
  const PlacedLayer& lw = w.layers[layer];
  const int n = c.n, H = s.hidden_size, nh = s.num_heads, qlr = s.q_lora_rank, kvlr = s.kv_lora_rank;
  const int nope = s.qk_nope_head_dim, rd = s.qk_rope_head_dim, qkd = s.qk_head_dim(), vd = s.v_head_dim;
  const int lat = kvlr + rd;  // one cached token: normed latent, then the roped key part

  // Projections that feed a norm stay f32 until the norm writes them in the activation dtype.
  const TensorView qr_raw = arena.take(DType::kF32, n, qlr);
  const TensorView qr = arena.take(act, n, qlr);
  be.linear({.x = h, .w = lw.q_a, .bias = lw.q_a_bias, .y = qr_raw});
  be.norm({.x = qr_raw, .w = lw.q_a_norm, .y = qr, .eps = kLatentNormEps});
  const TensorView q = arena.take(act, n, int64_t{nh} * qkd);
  be.linear({.x = qr, .w = lw.q_b, .y = q});
  const TensorView q3 = q.split_heads(nh);
  be.rope(rope_op(c, q3, nope, RopeLayout::kInterleaved));
  // The chunk's latent rows go straight into the cache: norm the latent, rope the key part.
  const TensorView kv = latent[layer].t.view.rows(c.p0, n);
  const TensorView kv_raw = arena.take(DType::kF32, n, lat);
  be.linear({.x = h, .w = lw.kv_a, .bias = lw.kv_a_bias, .y = kv_raw});
  be.norm({.x = kv_raw.cols(0, kvlr), .w = lw.kv_a_norm, .y = kv.cols(0, kvlr), .eps = kLatentNormEps});
  be.copy({.src = kv_raw.cols(kvlr, rd), .dst = kv.cols(kvlr, rd)});
  be.rope(rope_op(c, kv, kvlr, RopeLayout::kInterleaved));

  if (plan.is_full(layer)) run_indexer(c, layer, h, qr, o, sel[layer], captured);

  // Absorbed queries [n, nh, kvlr + rd]: q_nope folded through each head's key rows of kv_b.
  const TensorView qa = arena.take(act, n, int64_t{nh} * lat).split_heads(nh);
  be.linear_heads({.x = q3.cols(0, nope), .w = lw.uk, .y = qa.cols(0, kvlr)});
  be.copy({.src = q3.cols(nope, rd), .dst = qa.cols(kvlr, rd)});
  const TensorView out_latent = arena.take(act, n, int64_t{nh} * kvlr).split_heads(nh);
  be.sparse_attention({.q = qa, .kv = latent[layer].t.view.rows(0, c.total), .indices = sel[layer],
                       .out = out_latent, .scale = static_cast<float>(s.attention_scale())});
  // Each head's latent output through its value rows of kv_b, then o_proj.
  const TensorView heads_out = arena.take(act, n, int64_t{nh} * vd);
  be.linear_heads({.x = out_latent, .w = lw.uv, .y = heads_out.split_heads(nh)});
  const TensorView o_out = arena.take(DType::kF32, n, H);
  be.linear({.x = heads_out, .w = lw.o, .bias = lw.o_bias, .y = o_out});
  be.add({.x = x, .y = o_out});
}

SessionState::Chunk SessionState::begin_chunk(std::span<const int32_t> ids) {
  const int n = static_cast<int>(ids.size());
  if (n == 0) throw_bad_input("input ids", "empty chunk");
  if (static_cast<int64_t>(length) + n > s.max_position_embeddings)
    throw_bad_input("input ids", std::to_string(length + n) + " tokens exceed max_position_embeddings " +
                                     std::to_string(s.max_position_embeddings));
  for (int32_t id : ids)
    if (id < 0 || id >= s.vocab_size)
      throw_bad_input("input ids", "token id " + std::to_string(id) + " outside the vocabulary [0, " +
                                       std::to_string(s.vocab_size) + ")");
  Chunk c;
  c.n = n;
  c.p0 = length;
  c.total = length + n;
  c.positions.resize(n);
  std::iota(c.positions.begin(), c.positions.end(), c.p0);
  c.valid.resize(n);
  std::iota(c.valid.begin(), c.valid.end(), c.p0 + 1);
  ensure_capacity(c.total);
  arena.reset();
  c.positions_t = arena.take_1d(DType::kI32, n);
  c.valid_t = arena.take_1d(DType::kI32, n);
  be.upload(c.positions_t, c.positions.data());
  be.upload(c.valid_t, c.valid.data());
  return c;
}

ChunkResult SessionState::run_layers(const Chunk& c, int first_layer, TensorView x, std::vector<TensorView>& sel,
                                     const ForwardOptions& o) {
  const int n = c.n, H = s.hidden_size, k = s.index_topk;
  ChunkResult r;
  r.tokens = n;
  r.first_position = c.p0;
  r.vocab = s.vocab_size;
  r.k = k;
  if (o.capture_index_scores) r.index_scores.resize(s.num_layers);
  if (o.layer_inputs) o.layer_inputs->resize(s.num_layers);
  const TensorView hn = arena.take(act, n, H);
  const TensorView mlp_out = arena.take(DType::kF32, n, H);
  for (int l = first_layer; l < s.num_layers; ++l) {
    const PlacedLayer& lw = w.layers[l];
    if (o.layer_inputs) {
      (*o.layer_inputs)[l].resize(static_cast<size_t>(n) * H);
      be.download(x, (*o.layer_inputs)[l].data());
    }
    be.norm({.x = x, .w = lw.input_norm, .y = hn, .eps = static_cast<float>(s.rms_norm_eps)});
    const bool full = plan.is_full(l);
    if (full)
      sel[l] = arena.take(DType::kI32, n, k);
    else
      sel[l] = sel[plan.source_layer(l)];
    attention(c, l, hn, o, sel, full && o.capture_index_scores ? &r.index_scores[l] : nullptr, x);
    be.norm({.x = x, .w = lw.post_attn_norm, .y = hn, .eps = static_cast<float>(s.rms_norm_eps)});
    if (lw.moe) {
      be.moe({.x = hn, .y = mlp_out, .router = lw.router, .router_bias = lw.router_bias, .experts = lw.experts,
              .shared = lw.has_shared ? &lw.shared : nullptr, .groups = s.n_group, .topk_group = s.topk_group,
              .experts_per_token = s.num_experts_per_tok, .norm_topk_prob = s.norm_topk_prob,
              .routed_scaling = static_cast<float>(s.routed_scaling_factor)});
    } else {
      be.mlp({.x = hn, .y = mlp_out, .w = lw.dense});
    }
    be.add({.x = x, .y = mlp_out});
  }
  length = c.total;
  if (o.capture_topk) {
    r.topk.resize(s.num_layers);
    for (int l = 0; l < s.num_layers; ++l) {
      if (sel[l].empty()) continue;
      r.topk[l].resize(static_cast<size_t>(n) * k);
      be.download(sel[l], r.topk[l].data());
    }
  }

  if (o.logits != LogitsWanted::kNone) {
    const int first = o.logits == LogitsWanted::kLast ? n - 1 : 0;
    const int rows = n - first;
    be.norm({.x = x.rows(first, rows), .w = w.final_norm, .y = hn.rows(0, rows),
             .eps = static_cast<float>(s.rms_norm_eps)});
    const TensorView logits = arena.take(DType::kF32, rows, s.vocab_size);
    be.linear({.x = hn.rows(0, rows), .w = w.lm_head, .y = logits});
    r.logits.resize(static_cast<size_t>(rows) * s.vocab_size);
    be.download(logits, r.logits.data());
  }
  return r;
}

ChunkResult SessionState::forward(std::span<const int32_t> ids, const ForwardOptions& o) {
  const Chunk c = begin_chunk(ids);
  const TensorView ids_t = arena.take_1d(DType::kI32, c.n);
  be.upload(ids_t, ids.data());
  const TensorView x = arena.take(DType::kF32, c.n, s.hidden_size);
  be.embed({.table = w.embed, .ids = ids_t, .out = x});
  std::vector<TensorView> sel(s.num_layers);
  return run_layers(c, 0, x, sel, o);
}

ChunkResult SessionState::forward_from(int first_layer, std::span<const int32_t> ids, const ResumePoint& from,
                                       const ForwardOptions& o) {
  if (first_layer < 0 || first_layer >= s.num_layers) throw_runtime("forward_from", "layer out of range");
  length = 0;
  const Chunk c = begin_chunk(ids);
  if (from.hidden.size() != static_cast<size_t>(c.n) * s.hidden_size)
    throw_runtime("forward_from", "hidden state does not match the chunk");
  const TensorView x = arena.take(DType::kF32, c.n, s.hidden_size);
  be.upload(x, from.hidden.data());
  std::vector<TensorView> sel(s.num_layers);
  for (int l = 0; l < first_layer; ++l)
    if (plan.is_full(l)) {
      if (!from.selections || (*from.selections)[l].size() != static_cast<size_t>(c.n) * s.index_topk)
        throw_runtime("forward_from", "missing the selection of layer " + std::to_string(l));
      sel[l] = arena.take(DType::kI32, c.n, s.index_topk);
      be.upload(sel[l], (*from.selections)[l].data());
    }
  return run_layers(c, first_layer, x, sel, o);
}

void SessionState::set_plan(const IndexPlan& p) {
  model.check_plan(p);
  plan = p;
  length = 0;
  for (int l = 0; l < s.num_layers; ++l) {
    const int width = plan.is_full(l) ? s.index_head_dim : 0;
    if (index_keys[l].width != width) index_keys[l] = {.width = width};
  }
}

Session::Session(const Model& model, const IndexPlan& plan, Backend& backend)
    : s_(std::make_unique<SessionState>(model, plan, backend)) {}
Session::~Session() = default;
Session::Session(Session&&) noexcept = default;
ChunkResult Session::forward(std::span<const int32_t> ids, const ForwardOptions& options) {
  return s_->forward(ids, options);
}
int Session::length() const { return s_->length; }
const IndexPlan& Session::plan() const { return s_->plan; }
void Session::set_plan(const IndexPlan& plan) { s_->set_plan(plan); }
ChunkResult Session::forward_from(int first_layer, std::span<const int32_t> ids, const ResumePoint& from,
                                  const ForwardOptions& options) {
  return s_->forward_from(first_layer, ids, from, options);
}
void Session::reset() { s_->length = 0; }
int64_t Session::cache_bytes() const { return s_->cache_bytes(); }

PrefillResult prefill(const Model& model, const IndexPlan& plan, std::span<const int32_t> ids, Backend& be,
                      const PrefillOptions& options) {
  const int T = static_cast<int>(ids.size());
  if (T == 0) throw_bad_input("input ids", "empty sequence");
  Session session(model, plan, be);
  const int L = model.spec().num_layers;
  const int k = model.spec().index_topk;
  const int kept = std::min(k, T);  // columns reported: transformers' width min(index_topk, T)
  PrefillResult r;
  r.tokens = T;
  r.vocab = model.spec().vocab_size;
  r.k = kept;
  r.topk.assign(L, std::vector<int32_t>(static_cast<size_t>(T) * kept, -1));
  if (options.capture_index_scores)
    r.index_scores.assign(L, std::vector<float>(static_cast<size_t>(T) * T, -std::numeric_limits<float>::infinity()));
  const int chunk = options.chunk > 0 ? options.chunk : T;
  ForwardOptions fo;
  fo.capture_topk = true;
  fo.capture_index_scores = options.capture_index_scores;
  fo.query_block = options.query_block;
  for (int p0 = 0; p0 < T; p0 += chunk) {
    const int n = std::min(chunk, T - p0);
    ChunkResult c = session.forward(ids.subspan(p0, n), fo);
    r.logits.insert(r.logits.end(), c.logits.begin(), c.logits.end());
    for (int l = 0; l < L; ++l) {
      for (int t = 0; t < n; ++t)
        std::copy_n(c.topk[l].data() + static_cast<size_t>(t) * k, kept,
                    r.topk[l].data() + static_cast<size_t>(p0 + t) * kept);
      if (options.capture_index_scores && plan.is_full(l))
        for (int t = 0; t < n; ++t)
          std::copy_n(c.index_scores[l].data() + static_cast<size_t>(t) * (p0 + n), p0 + n,
                      r.index_scores[l].data() + static_cast<size_t>(p0 + t) * T);
    }
  }
  return r;
}

}  // namespace indexcache
