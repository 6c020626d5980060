// One sequence through a DSA model, chunk by chunk. Every layer:
//   x -> RMSNorm -> MLA in absorbed form (queries folded into the kv latent space, keys/values are
//   the cached latent + roped key part shared by all heads) over the top-k selection of this
//   layer's indexer (F) or the nearest preceding F layer's (S) -> residual -> RMSNorm -> MLP/MoE.
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>

#include "backend/arena.h"
#include "backend/backend.h"
#include "indexcache/error.h"
#include "indexcache/model.h"
#include "indexcache/session.h"
#include "model/logits_check.h"
#include "model/placed_weights.h"
#include "model/rope_table.h"
#include "model/weights.h"

namespace indexcache {

namespace {

// transformers builds q_a_layernorm and kv_a_layernorm with the RMSNorm default eps (1e-6), not
// rms_norm_eps; the indexer's key LayerNorm uses 1e-6 too.
constexpr float kLatentNormEps = 1e-6f;
constexpr float kIndexerNormEps = 1e-6f;
// A recorded decode step sees the caches' first round_up(length + 1, kGraphKeyBlock) rows (keys
// past a query's position score -inf and are never selected): one recording serves this many steps.
constexpr int kGraphKeyBlock = 1024;

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

using Epoch = std::array<uint64_t, 3>;

// One decode step recorded as a graph, and what it was recorded for.
struct DecodeGraph {
  std::unique_ptr<OpGraph> graph;  // nullptr: recording failed (eager steps until the key changes)
  int keys = 0;                    // the caches' rows the step sees
  bool logits = true;
  Epoch epoch{};                   // SessionState::epoch() at recording
  TensorView ids, positions, valid, logits_view;  // the step's inputs and output
};

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
  uint64_t layout_version = 0;  // counts moves of the caches and the RoPE table
  DecodeGraph decode_graph;
  int64_t graph_steps = 0;

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
    ++layout_version;
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
      ++layout_version;
    }
  }

  // Whatever a recorded step's views point at: the arena, the caches, the RoPE table, the
  // backend's scratch. A graph recorded at another epoch is stale.
  Epoch epoch() const { return {arena.generation(), layout_version, be.memory_epoch()}; }

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
    int keys = 0;   // the caches' rows the ops see (total, or more for a recorded decode step)
    int k = 0;      // selection width: min(index_topk, keys), no query has more candidates
    std::vector<int32_t> positions, valid;  // valid = positions + 1 (keys a query may select from)
    TensorView ids_t, positions_t, valid_t;  // ids, positions, valid in backend memory
  };
  void check_ids(std::span<const int32_t> ids) const;
  // The chunk of n tokens at positions p0.., seeing `keys` (>= its total) cache rows: the caches
  // grown to hold them, the arena reset, the inputs' views taken (not uploaded).
  Chunk begin_chunk(int p0, int n, int keys);
  void upload_inputs(const Chunk& c, std::span<const int32_t> ids);
  // Enqueues the layers first_layer.. of the chunk from x, then the final norm and lm_head per
  // o.logits (the logits view returned; empty for kNone). Downloads only what o.observer wants
  // (layer inputs and index scores as they are computed).
  TensorView run_layers(const Chunk& c, int first_layer, TensorView x, std::vector<TensorView>& sel,
                        const ForwardOptions& o);
  // The embedding, then run_layers.
  TensorView run_chunk(const Chunk& c, const ForwardOptions& o, std::vector<TensorView>& sel);
  // The selections to the observer, the logits to the host; the cache's length advances.
  ChunkResult finish(const Chunk& c, const ForwardOptions& o, std::vector<TensorView>& sel, TensorView logits);
  bool graph_step(std::span<const int32_t> ids, const ForwardOptions& o) const;
  ChunkResult decode_step(std::span<const int32_t> ids, const ForwardOptions& o);
  void run_indexer(const Chunk& c, int layer, TensorView h, TensorView qr, const ForwardOptions& o,
                   TensorView sel, LayerObserver* scores_to);
  void attention(const Chunk& c, int layer, TensorView h, const ForwardOptions& o, std::vector<TensorView>& sel,
                 LayerObserver* scores_to, TensorView x);
  // A view's elements as f32 on the host (observers see f32 whatever the activation dtype).
  std::vector<float> host_f32(const TensorView& v) {
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
  RopeOp rope_op(const Chunk& c, TensorView x, int offset, RopeLayout layout) const {
    return {.x = x, .offset = offset, .rope_dim = s.qk_rope_head_dim, .cos = rope_cos.view, .sin = rope_sin.view,
            .positions = c.positions_t, .layout = layout};
  }
};

void SessionState::run_indexer(const Chunk& c, int layer, TensorView h, TensorView qr, const ForwardOptions& o,
                               TensorView sel, LayerObserver* scores_to) {
  const PlacedLayer& lw = w.layers[layer];
  const int n = c.n, hi = s.index_n_heads, di = s.index_head_dim;
  const TensorView q = arena.take(act, n, int64_t{hi} * di).split_heads(hi);
  const TensorView wts = arena.take(DType::kF32, n, hi);
  be.linear({.x = qr, .w = lw.wq_b, .y = view2d(q.data, act, n, int64_t{hi} * di)});
  // The key projection stays f32 until its LayerNorm writes the roped key into the cache row at
  // its position (in the cache's dtype).
  const TensorView raw_keys = arena.take(DType::kF32, n, di);
  be.linear({.x = h, .w = lw.wk, .y = raw_keys});
  be.cache_rows({.x = raw_keys, .norm_w = lw.k_norm_w, .norm_bias = lw.k_norm_b, .cache = index_keys[layer].t.view,
                 .positions = c.positions_t, .cos = rope_cos.view, .sin = rope_sin.view, .norm_dim = di,
                 .eps = kIndexerNormEps, .layer_norm = true, .rope_offset = 0, .rope_dim = s.qk_rope_head_dim,
                 .layout = s.indexer_rope_layout()});
  be.rope(rope_op(c, q, 0, s.indexer_rope_layout()));
  be.linear({.x = h, .w = lw.weights_proj, .y = wts, .alpha = 1.0f / std::sqrt(static_cast<float>(hi))});

  const int S = c.keys;
  std::vector<float> captured(scores_to ? static_cast<size_t>(n) * S : 0);
  const int block = std::max(1, std::min(o.query_block > 0 ? o.query_block : be.indexer_query_block(), n));
  const TensorView scores = arena.take(DType::kF32, block, S);
  const TensorView all_keys = index_keys[layer].t.view.rows(0, S);
  for (int t0 = 0; t0 < n; t0 += block) {
    const int m = std::min(block, n - t0);
    be.indexer_scores({.q = q.rows(t0, m), .w = wts.rows(t0, m), .k = all_keys, .positions = c.positions_t.rows(t0, m),
                       .scores = scores.rows(0, m), .scale = 1.0f / std::sqrt(static_cast<float>(di))});
    be.topk({.scores = scores.rows(0, m), .valid = c.valid_t.rows(t0, m), .indices = sel.rows(t0, m)});
    if (scores_to) be.download(scores.rows(0, m), captured.data() + static_cast<size_t>(t0) * S);
  }
  if (scores_to) scores_to->on_index_scores(layer, captured);
}

void SessionState::attention(const Chunk& c, int layer, TensorView h, const ForwardOptions& o,
                             std::vector<TensorView>& sel, LayerObserver* scores_to, TensorView x) {
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
  // The chunk's latent rows into the cache rows at their positions (read on the device, so that a
  // recorded step writes where the step is): the normed latent, then the roped key part.
  const TensorView kv_raw = arena.take(DType::kF32, n, lat);
  be.linear({.x = h, .w = lw.kv_a, .bias = lw.kv_a_bias, .y = kv_raw});
  be.cache_rows({.x = kv_raw, .norm_w = lw.kv_a_norm, .cache = latent[layer].t.view, .positions = c.positions_t,
                 .cos = rope_cos.view, .sin = rope_sin.view, .norm_dim = kvlr, .eps = kLatentNormEps,
                 .rope_offset = kvlr, .rope_dim = rd, .layout = RopeLayout::kInterleaved});

  if (plan.is_full(layer)) run_indexer(c, layer, h, qr, o, sel[layer], scores_to);

  // Absorbed queries [n, nh, kvlr + rd]: q_nope folded through each head's key rows of kv_b, then
  // q_rope roped into the rest.
  const TensorView qa = arena.take(act, n, int64_t{nh} * lat).split_heads(nh);
  be.linear_heads({.x = q3.cols(0, nope), .w = lw.uk, .y = qa.cols(0, kvlr)});
  RopeOp qrope = rope_op(c, qa, kvlr, RopeLayout::kInterleaved);
  qrope.src = q3.cols(nope, rd);
  be.rope(qrope);
  if (o.observer && o.observer->wants().attention) {
    const std::vector<float> hh = host_f32(h), qrh = host_f32(qr), qah = host_f32(qa),
                             keys = host_f32(latent[layer].t.view.rows(0, c.keys));
    o.observer->on_attention(layer, {.input = hh, .query_latent = qrh, .queries = qah, .keys = keys});
  }
  const TensorView out_latent = arena.take(act, n, int64_t{nh} * kvlr).split_heads(nh);
  be.sparse_attention({.q = qa, .kv = latent[layer].t.view.rows(0, c.keys), .indices = sel[layer],
                       .out = out_latent, .scale = static_cast<float>(s.attention_scale())});
  // Each head's latent output through its value rows of kv_b, then o_proj.
  const TensorView heads_out = arena.take(act, n, int64_t{nh} * vd);
  be.linear_heads({.x = out_latent, .w = lw.uv, .y = heads_out.split_heads(nh)});
  be.linear({.x = heads_out, .w = lw.o, .bias = lw.o_bias, .y = x, .accumulate = true});  // the residual
}

void SessionState::check_ids(std::span<const int32_t> ids) const {
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n == 0) throw_bad_input("input ids", "empty chunk");
  if (length + n > s.max_position_embeddings)
    throw_bad_input("input ids", std::to_string(length + n) + " tokens exceed max_position_embeddings " +
                                     std::to_string(s.max_position_embeddings));
  for (int32_t id : ids)
    if (id < 0 || id >= s.vocab_size)
      throw_bad_input("input ids", "token id " + std::to_string(id) + " outside the vocabulary [0, " +
                                       std::to_string(s.vocab_size) + ")");
}

SessionState::Chunk SessionState::begin_chunk(int p0, int n, int keys) {
  Chunk c;
  c.n = n;
  c.p0 = p0;
  c.total = p0 + n;
  c.keys = std::max(keys, c.total);
  // An index_topk past the context selects nothing more: the buffers are as wide as the keys.
  c.k = std::min(s.index_topk, c.keys);
  c.positions.resize(n);
  std::iota(c.positions.begin(), c.positions.end(), c.p0);
  c.valid.resize(n);
  std::iota(c.valid.begin(), c.valid.end(), c.p0 + 1);
  ensure_capacity(c.keys);
  arena.reset();
  c.positions_t = arena.take_1d(DType::kI32, n);
  c.valid_t = arena.take_1d(DType::kI32, n);
  c.ids_t = arena.take_1d(DType::kI32, n);
  return c;
}

void SessionState::upload_inputs(const Chunk& c, std::span<const int32_t> ids) {
  be.upload(c.positions_t, c.positions.data());
  be.upload(c.valid_t, c.valid.data());
  if (!ids.empty()) be.upload(c.ids_t, ids.data());
}

TensorView SessionState::run_layers(const Chunk& c, int first_layer, TensorView x, std::vector<TensorView>& sel,
                                    const ForwardOptions& o) {
  const int n = c.n, H = s.hidden_size, k = c.k;
  const LayerObserver::Wants wants = o.observer ? o.observer->wants() : LayerObserver::Wants{};
  std::vector<float> input(wants.inputs ? static_cast<size_t>(n) * H : 0);
  const TensorView hn = arena.take(act, n, H);
  for (int l = first_layer; l < s.num_layers; ++l) {
    const PlacedLayer& lw = w.layers[l];
    if (wants.inputs) {
      be.download(x, input.data());
      o.observer->on_input(l, input);
    }
    be.norm({.x = x, .w = lw.input_norm, .y = hn, .eps = static_cast<float>(s.rms_norm_eps)});
    const bool full = plan.is_full(l);
    if (full)
      sel[l] = arena.take(DType::kI32, n, k);
    else
      sel[l] = sel[plan.source_layer(l)];
    attention(c, l, hn, o, sel, full && wants.index_scores ? o.observer : nullptr, x);
    be.norm({.x = x, .w = lw.post_attn_norm, .y = hn, .eps = static_cast<float>(s.rms_norm_eps)});
    if (lw.moe) {  // into the residual
      be.moe({.x = hn, .y = x, .router = lw.router, .router_bias = lw.router_bias, .experts = lw.experts,
              .shared = lw.has_shared ? &lw.shared : nullptr, .groups = s.n_group, .topk_group = s.topk_group,
              .experts_per_token = s.num_experts_per_tok, .norm_topk_prob = s.norm_topk_prob,
              .routed_scaling = static_cast<float>(s.routed_scaling_factor), .accumulate = true});
    } else {
      be.mlp({.x = hn, .y = x, .w = lw.dense, .accumulate = true});
    }
  }
  if (o.logits == LogitsWanted::kNone) return {};
  const int first = o.logits == LogitsWanted::kLast ? n - 1 : 0;
  const int rows = n - first;
  be.norm({.x = x.rows(first, rows), .w = w.final_norm, .y = hn.rows(0, rows), .eps = static_cast<float>(s.rms_norm_eps)});
  const TensorView logits = arena.take(DType::kF32, rows, s.vocab_size);
  be.linear({.x = hn.rows(0, rows), .w = w.lm_head, .y = logits});
  return logits;
}

TensorView SessionState::run_chunk(const Chunk& c, const ForwardOptions& o, std::vector<TensorView>& sel) {
  const TensorView x = arena.take(DType::kF32, c.n, s.hidden_size);
  be.embed({.table = w.embed, .ids = c.ids_t, .out = x});
  sel.assign(s.num_layers, {});
  return run_layers(c, 0, x, sel, o);
}

ChunkResult SessionState::finish(const Chunk& c, const ForwardOptions& o, std::vector<TensorView>& sel,
                                 TensorView logits) {
  ChunkResult r;
  r.tokens = c.n;
  r.first_position = c.p0;
  r.vocab = s.vocab_size;
  r.k = c.k;
  if (o.observer && o.observer->wants().selections) {
    std::vector<int32_t> host(static_cast<size_t>(c.n) * r.k);
    for (int l = 0; l < static_cast<int>(sel.size()); ++l) {
      if (sel[l].empty()) continue;
      be.download(sel[l], host.data());
      o.observer->on_selection(l, host);
    }
  }
  if (!logits.empty()) {
    r.logits.resize(static_cast<size_t>(logits.numel()));
    be.download(logits, r.logits.data());
    // The rows are the chunk's last ones (one for LogitsWanted::kLast).
    const int64_t rows = static_cast<int64_t>(r.logits.size()) / s.vocab_size;
    check_logits_finite(r.logits, s.vocab_size, int64_t{c.p0} + c.n - rows);
  }
  length = c.total;
  return r;
}

bool SessionState::graph_step(std::span<const int32_t> ids, const ForwardOptions& o) const {
  return ids.size() == 1 && o.graphs && !o.observer && be.records_graphs() && !be.profiling();
}

ChunkResult SessionState::decode_step(std::span<const int32_t> ids, const ForwardOptions& o) {
  // Within a reserved capacity the key bound stays inside it (no growth past the reservation).
  int64_t bound = (static_cast<int64_t>(length) + 1 + kGraphKeyBlock - 1) / kGraphKeyBlock * kGraphKeyBlock;
  if (latent[0].capacity > length) bound = std::min(bound, latent[0].capacity);
  const int keys = static_cast<int>(std::min<int64_t>(bound, s.max_position_embeddings));
  const bool want_logits = o.logits != LogitsWanted::kNone;
  const Chunk c = begin_chunk(length, 1, keys);  // may grow the caches (a new epoch)
  DecodeGraph& g = decode_graph;
  if (g.keys == keys && g.logits == want_logits && g.epoch == epoch()) {
    if (g.graph) {
      // The same takes as at recording land on the same views: upload the inputs, replay.
      upload_inputs(c, ids);
      g.graph->launch();
      ++graph_steps;
      std::vector<TensorView> none;
      return finish(c, o, none, g.logits_view);
    }
  } else {
    g = {};
  }
  // Eagerly, with the recorded step's key bound (so scratch and arena reach their size), then, if
  // nothing was recorded for this key yet, the same step recorded for the next ones.
  upload_inputs(c, ids);
  std::vector<TensorView> sel;
  const TensorView logits = run_chunk(c, o, sel);
  const bool record = g.keys == 0;
  ChunkResult r = finish(c, o, sel, logits);
  if (record) {
    const Chunk rc = begin_chunk(c.p0, 1, keys);  // the step just run: same takes, same views
    const Epoch before = epoch();
    std::vector<TensorView> rec_sel;
    TensorView rec_logits;
    g.graph = be.record([&] { rec_logits = run_chunk(rc, o, rec_sel); });
    g.keys = keys;
    g.logits = want_logits;
    g.epoch = epoch();
    g.logits_view = rec_logits;
    if (g.epoch != before) g.graph.reset();  // memory moved while recording: never replay it
  }
  return r;
}

ChunkResult SessionState::forward(std::span<const int32_t> ids, const ForwardOptions& o) {
  check_ids(ids);
  if (graph_step(ids, o)) return decode_step(ids, o);
  const Chunk c = begin_chunk(length, static_cast<int>(ids.size()), 0);
  upload_inputs(c, ids);
  std::vector<TensorView> sel;
  const TensorView logits = run_chunk(c, o, sel);
  return finish(c, o, sel, logits);
}

ChunkResult SessionState::forward_from(int first_layer, std::span<const int32_t> ids, const ResumePoint& from,
                                       const ForwardOptions& o) {
  if (first_layer < 0 || first_layer >= s.num_layers) throw_runtime("forward_from", "layer out of range");
  length = 0;
  check_ids(ids);
  const Chunk c = begin_chunk(length, static_cast<int>(ids.size()), 0);
  if (from.hidden.size() != static_cast<size_t>(c.n) * s.hidden_size)
    throw_runtime("forward_from", "hidden state does not match the chunk");
  upload_inputs(c, {});
  const TensorView x = arena.take(DType::kF32, c.n, s.hidden_size);
  be.upload(x, from.hidden.data());
  std::vector<TensorView> sel(s.num_layers);
  for (int l = 0; l < first_layer; ++l)
    if (plan.is_full(l)) {
      if (!from.selections || (*from.selections)[l].size() != static_cast<size_t>(c.n) * c.k)
        throw_runtime("forward_from", "missing the selection of layer " + std::to_string(l));
      sel[l] = arena.take(DType::kI32, c.n, c.k);
      be.upload(sel[l], (*from.selections)[l].data());
    }
  const TensorView logits = run_layers(c, first_layer, x, sel, o);
  return finish(c, o, sel, logits);
}

void SessionState::set_plan(const IndexPlan& p) {
  model.check_plan(p);
  plan = p;
  length = 0;
  decode_graph = {};
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
void Session::reserve(int tokens) {
  s_->ensure_capacity(std::clamp(tokens, 1, s_->s.max_position_embeddings));
}
int64_t Session::graph_steps() const { return s_->graph_steps; }
int64_t Session::cache_bytes() const { return s_->cache_bytes(); }

PrefillResult prefill(const Model& model, const IndexPlan& plan, std::span<const int32_t> ids, Backend& be,
                      const PrefillOptions& options) {
  const int T = static_cast<int>(ids.size());
  if (T == 0) throw_bad_input("input ids", "empty sequence");
  Session session(model, plan, be);
  const int L = model.spec().num_layers;
  const int kept = std::min(model.spec().index_topk, T);  // columns reported: transformers' width min(index_topk, T)
  PrefillResult r;
  r.tokens = T;
  r.vocab = model.spec().vocab_size;
  r.k = kept;
  r.topk.assign(L, std::vector<int32_t>(static_cast<size_t>(T) * kept, -1));
  if (options.capture_index_scores)
    r.index_scores.assign(L, std::vector<float>(static_cast<size_t>(T) * T, -std::numeric_limits<float>::infinity()));
  const int chunk = options.chunk > 0 ? options.chunk : T;
  ForwardOptions fo;
  fo.query_block = options.query_block;
  for (int p0 = 0; p0 < T; p0 += chunk) {
    const int n = std::min(chunk, T - p0);
    LayerCapture cap({.selections = true, .index_scores = options.capture_index_scores});
    fo.observer = &cap;
    ChunkResult c = session.forward(ids.subspan(p0, n), fo);
    r.logits.insert(r.logits.end(), c.logits.begin(), c.logits.end());
    // This chunk's selections are min(index_topk, p0 + n) wide; the columns past are -1 anyway.
    const int k = c.k, cols = std::min(k, kept);
    for (int l = 0; l < L; ++l) {
      for (int t = 0; t < n; ++t)
        std::copy_n(cap.selections[l].data() + static_cast<size_t>(t) * k, cols,
                    r.topk[l].data() + static_cast<size_t>(p0 + t) * kept);
      if (options.capture_index_scores && plan.is_full(l))
        for (int t = 0; t < n; ++t)
          std::copy_n(cap.index_scores[l].data() + static_cast<size_t>(t) * (p0 + n), p0 + n,
                      r.index_scores[l].data() + static_cast<size_t>(p0 + t) * T);
    }
  }
  return r;
}

}  // namespace indexcache
