// One sequence through a DSA model, chunk by chunk. Every layer:
//   x -> RMSNorm -> MLA in absorbed form (queries folded into the kv latent space, keys/values are
//   the cached latent + roped key part shared by all heads) over the top-k selection of this
//   layer's indexer (F) or the nearest preceding F layer's (S) -> residual -> RMSNorm -> MLP/MoE.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "backend/backend.h"
#include "indexcache/error.h"
#include "indexcache/model.h"
#include "indexcache/session.h"
#include "model/moe.h"
#include "model/rope_table.h"
#include "model/weights.h"

namespace indexcache {

namespace {

using Vec = std::vector<float>;

// transformers builds q_a_layernorm and kv_a_layernorm with the RMSNorm default eps (1e-6), not
// rms_norm_eps; the indexer's key LayerNorm uses 1e-6 too.
constexpr float kLatentNormEps = 1e-6f;
constexpr float kIndexerNormEps = 1e-6f;

// A row-major [rows, width] f32 matrix that grows by doubling, keeping its rows.
class GrowingRows {
 public:
  explicit GrowingRows(int width = 0) : width_(width) {}
  void reserve_rows(int rows) {
    if (rows <= capacity_) return;
    const int cap = std::max(rows, std::max(16, capacity_ * 2));
    data_.resize(static_cast<size_t>(cap) * width_);
    capacity_ = cap;
  }
  float* row(int r) { return data_.data() + static_cast<size_t>(r) * width_; }
  const float* row(int r) const { return data_.data() + static_cast<size_t>(r) * width_; }
  int width() const { return width_; }

 private:
  int width_ = 0;
  int capacity_ = 0;
  Vec data_;
};

}  // namespace

int64_t KvCacheFootprint::bytes_per_token() const {
  return latent_bytes_per_token_per_layer * layers + indexer_bytes_per_token_per_layer * indexer_layers;
}

KvCacheFootprint kv_cache_footprint(const ModelSpec& spec, const IndexPlan& plan) {
  KvCacheFootprint f;
  f.latent_bytes_per_token_per_layer = int64_t{spec.kv_lora_rank + spec.qk_rope_head_dim} * 4;
  f.indexer_bytes_per_token_per_layer = int64_t{spec.index_head_dim} * 4;
  f.indexer_layers = plan.num_full();
  f.layers = spec.num_layers;
  return f;
}

struct SessionState {
  const Model& model;
  const ModelSpec& s;
  const ModelWeights& w;
  IndexPlan plan;
  Backend& be;
  int length = 0;
  std::vector<GrowingRows> latent;       // per layer [tokens, kv_lora_rank + rope]
  std::vector<GrowingRows> index_keys;   // per layer [tokens, index_head_dim]; width 0 on S layers
  RopeTable rope;
  int rope_positions = 0;

  SessionState(const Model& m, const IndexPlan& p, Backend& b)
      : model(m), s(m.spec()), w(m.weights()), plan(p), be(b) {
    model.check_plan(plan);
    for (int l = 0; l < s.num_layers; ++l) {
      latent.emplace_back(s.kv_lora_rank + s.qk_rope_head_dim);
      index_keys.emplace_back(plan.is_full(l) ? s.index_head_dim : 0);  // S layers: nothing
    }
  }

  void ensure_capacity(int tokens) {
    for (int l = 0; l < s.num_layers; ++l) {
      latent[l].reserve_rows(tokens);
      if (index_keys[l].width() > 0) index_keys[l].reserve_rows(tokens);
    }
    if (tokens > rope_positions) {
      rope_positions = std::max(tokens, std::min(2 * rope_positions, s.max_position_embeddings));
      rope = make_rope_table(s, rope_positions);
    }
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
    std::vector<int32_t> positions;
  };
  Chunk begin_chunk(std::span<const int32_t> ids);
  ChunkResult run_layers(const Chunk& c, int first_layer, Vec& x, std::vector<std::vector<int32_t>>& sel,
                         const ForwardOptions& o);
  void run_indexer(const Chunk& c, int layer, const float* h, const float* qr, int k,
                   const ForwardOptions& o, std::vector<int32_t>& sel, Vec* captured);
  void attention(const Chunk& c, int layer, const float* h, int k, const ForwardOptions& o,
                 std::vector<int32_t>& sel, Vec* captured, float* x);
};

void SessionState::run_indexer(const Chunk& c, int layer, const float* h, const float* qr, int k,
                               const ForwardOptions& o, std::vector<int32_t>& sel, Vec* captured) {
  const IndexerWeights& iw = w.layers[layer].indexer;
  const int n = c.n, H = s.hidden_size, hi = s.index_n_heads, di = s.index_head_dim;
  Vec q(static_cast<size_t>(n) * hi * di), wts(static_cast<size_t>(n) * hi);
  float* keys = index_keys[layer].row(c.p0);  // the chunk's keys go straight into the cache
  be.linear({.x = qr, .x_stride = s.q_lora_rank, .w = iw.wq_b, .y = q.data(), .y_stride = hi * di,
             .tokens = n, .in = s.q_lora_rank, .out = hi * di});
  be.linear({.x = h, .x_stride = H, .w = iw.wk, .y = keys, .y_stride = di, .tokens = n, .in = H, .out = di});
  be.norm({.x = keys, .x_stride = di, .w = iw.k_norm_w, .bias = iw.k_norm_b, .y = keys, .y_stride = di,
           .tokens = n, .dim = di, .eps = kIndexerNormEps, .layer_norm = true});
  for (auto [x, heads] : {std::pair{q.data(), hi}, std::pair{keys, 1}}) {
    be.rope({.x = x, .token_stride = static_cast<int64_t>(heads) * di, .head_stride = di, .tokens = n,
             .heads = heads, .offset = 0, .rope_dim = s.qk_rope_head_dim, .cos = rope.cos.data(),
             .sin = rope.sin.data(), .positions = c.positions.data(), .layout = s.indexer_rope_layout()});
  }
  be.linear({.x = h, .x_stride = H, .w = iw.weights_proj, .y = wts.data(), .y_stride = hi, .tokens = n,
             .in = H, .out = hi});
  const float head_scale = 1.0f / std::sqrt(static_cast<float>(hi));
  for (float& v : wts) v *= head_scale;

  const int S = c.total;
  sel.assign(static_cast<size_t>(n) * k, -1);
  if (captured) captured->assign(static_cast<size_t>(n) * S, 0.0f);
  const int block = std::max(1, std::min(o.query_block, n));
  Vec scores(static_cast<size_t>(block) * S);
  std::vector<int32_t> valid(block);
  for (int t0 = 0; t0 < n; t0 += block) {
    const int m = std::min(block, n - t0);
    be.indexer_scores({.q = q.data() + static_cast<size_t>(t0) * hi * di, .w = wts.data() + static_cast<size_t>(t0) * hi,
                       .k = index_keys[layer].row(0), .positions = c.positions.data() + t0,
                       .scores = scores.data(), .scores_stride = S, .tokens = m, .keys = S, .heads = hi,
                       .head_dim = di, .scale = 1.0f / std::sqrt(static_cast<float>(di))});
    for (int i = 0; i < m; ++i) valid[i] = c.positions[t0 + i] + 1;
    be.topk({.scores = scores.data(), .scores_stride = S, .valid = valid.data(),
             .indices = sel.data() + static_cast<size_t>(t0) * k, .tokens = m, .k = k});
    if (captured)
      std::copy_n(scores.data(), static_cast<size_t>(m) * S, captured->data() + static_cast<size_t>(t0) * S);
  }
}

void SessionState::attention(const Chunk& c, int layer, const float* h, int k, const ForwardOptions& o,
                             std::vector<int32_t>& sel, Vec* captured, float* x) {
  const LayerWeights& lw = w.layers[layer];
  const int n = c.n, H = s.hidden_size, nh = s.num_heads, qlr = s.q_lora_rank, kvlr = s.kv_lora_rank;
  const int nope = s.qk_nope_head_dim, rd = s.qk_rope_head_dim, qkd = s.qk_head_dim(), vd = s.v_head_dim;
  const int lat = kvlr + rd;  // one cached token: normed latent, then the roped key part

  Vec qr(static_cast<size_t>(n) * qlr);
  be.linear({.x = h, .x_stride = H, .w = lw.q_a, .bias = lw.q_a_bias, .y = qr.data(), .y_stride = qlr,
             .tokens = n, .in = H, .out = qlr});
  be.norm({.x = qr.data(), .x_stride = qlr, .w = lw.q_a_norm, .y = qr.data(), .y_stride = qlr, .tokens = n,
           .dim = qlr, .eps = kLatentNormEps});
  Vec q(static_cast<size_t>(n) * nh * qkd);
  be.linear({.x = qr.data(), .x_stride = qlr, .w = lw.q_b, .y = q.data(), .y_stride = nh * qkd, .tokens = n,
             .in = qlr, .out = nh * qkd});
  be.rope({.x = q.data(), .token_stride = static_cast<int64_t>(nh) * qkd, .head_stride = qkd, .tokens = n,
           .heads = nh, .offset = nope, .rope_dim = rd, .cos = rope.cos.data(), .sin = rope.sin.data(),
           .positions = c.positions.data(), .layout = RopeLayout::kInterleaved});
  // The chunk's latent rows go straight into the cache: norm the latent, rope the key part.
  float* kv = latent[layer].row(c.p0);
  be.linear({.x = h, .x_stride = H, .w = lw.kv_a, .bias = lw.kv_a_bias, .y = kv, .y_stride = lat, .tokens = n,
             .in = H, .out = lat});
  be.norm({.x = kv, .x_stride = lat, .w = lw.kv_a_norm, .y = kv, .y_stride = lat, .tokens = n, .dim = kvlr,
           .eps = kLatentNormEps});
  be.rope({.x = kv, .token_stride = lat, .head_stride = 0, .tokens = n, .heads = 1, .offset = kvlr,
           .rope_dim = rd, .cos = rope.cos.data(), .sin = rope.sin.data(), .positions = c.positions.data(),
           .layout = RopeLayout::kInterleaved});

  if (plan.is_full(layer)) run_indexer(c, layer, h, qr.data(), k, o, sel, captured);

  // Absorbed queries [n, nh, kvlr + rd]: q_nope folded through each head's key rows of kv_b.
  Vec qa(static_cast<size_t>(n) * nh * lat);
  for (int hd = 0; hd < nh; ++hd) {
    be.linear({.x = q.data() + hd * qkd, .x_stride = static_cast<int64_t>(nh) * qkd,
               .w = lw.uk_t + static_cast<size_t>(hd) * kvlr * nope, .y = qa.data() + hd * lat,
               .y_stride = static_cast<int64_t>(nh) * lat, .tokens = n, .in = nope, .out = kvlr});
    for (int t = 0; t < n; ++t)
      std::copy_n(q.data() + (static_cast<size_t>(t) * nh + hd) * qkd + nope, rd,
                  qa.data() + (static_cast<size_t>(t) * nh + hd) * lat + kvlr);
  }
  Vec out_latent(static_cast<size_t>(n) * nh * kvlr);
  const float* cache = latent[layer].row(0);
  be.sparse_attention({.q = qa.data(), .q_token_stride = static_cast<int64_t>(nh) * lat, .q_head_stride = lat,
                       .k = cache, .k_token_stride = lat, .k_head_stride = 0, .v = cache, .v_token_stride = lat,
                       .v_head_stride = 0, .indices = sel.data(), .num_selected = k, .out = out_latent.data(),
                       .out_token_stride = static_cast<int64_t>(nh) * kvlr, .out_head_stride = kvlr,
                       .tokens = n, .heads = nh, .kv_heads = 1, .head_dim_k = lat, .head_dim_v = kvlr,
                       .scale = static_cast<float>(s.attention_scale())});
  // Each head's latent output through its value rows of kv_b, then o_proj.
  Vec heads_out(static_cast<size_t>(n) * nh * vd);
  for (int hd = 0; hd < nh; ++hd) {
    be.linear({.x = out_latent.data() + static_cast<size_t>(hd) * kvlr, .x_stride = static_cast<int64_t>(nh) * kvlr,
               .w = lw.kv_b + (static_cast<size_t>(hd) * (nope + vd) + nope) * kvlr, .y = heads_out.data() + hd * vd,
               .y_stride = static_cast<int64_t>(nh) * vd, .tokens = n, .in = kvlr, .out = vd});
  }
  Vec o_out(static_cast<size_t>(n) * H);
  be.linear({.x = heads_out.data(), .x_stride = nh * vd, .w = lw.o, .bias = lw.o_bias, .y = o_out.data(),
             .y_stride = H, .tokens = n, .in = nh * vd, .out = H});
  for (size_t i = 0; i < o_out.size(); ++i) x[i] += o_out[i];
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
  ensure_capacity(c.total);
  return c;
}

ChunkResult SessionState::run_layers(const Chunk& c, int first_layer, Vec& x,
                                     std::vector<std::vector<int32_t>>& sel, const ForwardOptions& o) {
  const int n = c.n, H = s.hidden_size, k = s.index_topk;
  ChunkResult r;
  r.tokens = n;
  r.first_position = c.p0;
  r.vocab = s.vocab_size;
  r.k = k;
  if (o.capture_index_scores) r.index_scores.resize(s.num_layers);
  if (o.layer_inputs) o.layer_inputs->resize(s.num_layers);
  Vec hn(x.size()), mlp_out(x.size());
  for (int l = first_layer; l < s.num_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    if (o.layer_inputs) (*o.layer_inputs)[l] = x;
    be.norm({.x = x.data(), .x_stride = H, .w = lw.input_norm, .y = hn.data(), .y_stride = H, .tokens = n,
             .dim = H, .eps = static_cast<float>(s.rms_norm_eps)});
    const bool full = plan.is_full(l);
    if (!full) sel[l] = sel[plan.source_layer(l)];
    attention(c, l, hn.data(), k, o, sel[l], full && o.capture_index_scores ? &r.index_scores[l] : nullptr,
              x.data());
    be.norm({.x = x.data(), .x_stride = H, .w = lw.post_attn_norm, .y = hn.data(), .y_stride = H, .tokens = n,
             .dim = H, .eps = static_cast<float>(s.rms_norm_eps)});
    if (lw.moe)
      moe_forward(be, s, lw, hn.data(), n, mlp_out.data());
    else
      mlp_forward(be, lw.dense, hn.data(), n, H, s.intermediate_size, mlp_out.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += mlp_out[i];
  }
  length = c.total;
  if (o.capture_topk) r.topk = std::move(sel);

  if (o.logits != LogitsWanted::kNone) {
    const int first = o.logits == LogitsWanted::kLast ? n - 1 : 0;
    const int rows = n - first;
    be.norm({.x = x.data() + static_cast<size_t>(first) * H, .x_stride = H, .w = w.final_norm, .y = hn.data(),
             .y_stride = H, .tokens = rows, .dim = H, .eps = static_cast<float>(s.rms_norm_eps)});
    r.logits.resize(static_cast<size_t>(rows) * s.vocab_size);
    be.linear({.x = hn.data(), .x_stride = H, .w = w.lm_head, .y = r.logits.data(), .y_stride = s.vocab_size,
               .tokens = rows, .in = H, .out = s.vocab_size});
  }
  return r;
}

ChunkResult SessionState::forward(std::span<const int32_t> ids, const ForwardOptions& o) {
  const Chunk c = begin_chunk(ids);
  const int H = s.hidden_size;
  Vec x(static_cast<size_t>(c.n) * H);
  for (int t = 0; t < c.n; ++t)
    std::copy_n(w.embed + static_cast<size_t>(ids[t]) * H, H, x.data() + static_cast<size_t>(t) * H);
  std::vector<std::vector<int32_t>> sel(s.num_layers);
  return run_layers(c, 0, x, sel, o);
}

ChunkResult SessionState::forward_from(int first_layer, std::span<const int32_t> ids, const ResumePoint& from,
                                       const ForwardOptions& o) {
  if (first_layer < 0 || first_layer >= s.num_layers) throw_runtime("forward_from", "layer out of range");
  length = 0;
  const Chunk c = begin_chunk(ids);
  if (from.hidden.size() != static_cast<size_t>(c.n) * s.hidden_size)
    throw_runtime("forward_from", "hidden state does not match the chunk");
  Vec x(from.hidden.begin(), from.hidden.end());
  std::vector<std::vector<int32_t>> sel(s.num_layers);
  for (int l = 0; l < first_layer; ++l)
    if (plan.is_full(l)) {
      if (!from.selections || (*from.selections)[l].empty())
        throw_runtime("forward_from", "missing the selection of layer " + std::to_string(l));
      sel[l] = (*from.selections)[l];
    }
  return run_layers(c, first_layer, x, sel, o);
}

void SessionState::set_plan(const IndexPlan& p) {
  model.check_plan(p);
  plan = p;
  length = 0;
  for (int l = 0; l < s.num_layers; ++l) {
    const int width = plan.is_full(l) ? s.index_head_dim : 0;
    if (index_keys[l].width() != width) index_keys[l] = GrowingRows(width);
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
    r.index_scores.assign(L, Vec(static_cast<size_t>(T) * T, -std::numeric_limits<float>::infinity()));
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
