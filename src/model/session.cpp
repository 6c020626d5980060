// One sequence through a DSA model, chunk by chunk: its own contiguous cache rows, steps of one
// segment through the forward pass (model/forward_pass.h), decode steps recorded as graphs.
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
#include "model/forward_pass.h"
#include "model/logits_check.h"
#include "model/placed_weights.h"
#include "model/rope_table.h"
#include "model/weights.h"

namespace indexcache {

namespace {

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
  ForwardPass pass;
  std::vector<TensorView> latent_views, index_key_views;  // the caches' whole views, per layer
  uint64_t layout_version = 0;  // counts moves of the caches and the RoPE table
  DecodeGraph decode_graph;
  int64_t graph_steps = 0;

  SessionState(const Model& m, const IndexPlan& p, Backend& b)
      : model(m), s(m.spec()), plan(p), be(b), act(b.activation_dtype()), arena(b), pass(b, s, w, arena) {
    model.check_plan(plan);
    w = place_weights(be, s, model.weights());
    for (int l = 0; l < s.num_layers; ++l) {
      latent.push_back({.width = s.kv_lora_rank + s.qk_rope_head_dim});
      index_keys.push_back({.width = plan.is_full(l) ? s.index_head_dim : 0});  // S layers: nothing
    }
    latent_views.resize(s.num_layers);
    index_key_views.resize(s.num_layers);
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
      latent_views[l] = latent[l].t.view;
      index_key_views[l] = index_keys[l].t.view;
    }
    if (tokens > rope_positions) {
      rope_positions = std::max(tokens, std::min(2 * rope_positions, s.max_position_embeddings));
      rope = make_rope_table(s, rope_positions);
      rope_cos = be.tensor(DType::kF32, rope_positions, rope.half);
      rope_sin = be.tensor(DType::kF32, rope_positions, rope.half);
      be.upload(rope_cos.view, rope.cos.data());
      be.upload(rope_sin.view, rope.sin.data());
      pass.set_rope(rope_cos.view, rope_sin.view);
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
    Step step;      // the chunk as the forward pass's one segment, its inputs' views in the arena
  };
  void check_ids(std::span<const int32_t> ids) const;
  // The chunk of n tokens at positions p0.., seeing `keys` (>= its total) cache rows: the caches
  // grown to hold them, the arena reset, the inputs' views taken (not uploaded).
  Chunk begin_chunk(int p0, int n, int keys);
  void upload_inputs(const Chunk& c, std::span<const int32_t> ids);
  // Layers first_layer.. of the chunk from x, then the final norm and lm_head per o.logits (the
  // logits view returned; empty for kNone).
  TensorView run_layers(const Chunk& c, int first_layer, TensorView x, std::vector<TensorView>& sel,
                        const ForwardOptions& o);
  // The embedding, then run_layers.
  TensorView run_chunk(const Chunk& c, const ForwardOptions& o, std::vector<TensorView>& sel);
  // The selections to the observer, the logits to the host; the cache's length advances.
  ChunkResult finish(const Chunk& c, const ForwardOptions& o, std::vector<TensorView>& sel, TensorView logits);
  bool graph_step(std::span<const int32_t> ids, const ForwardOptions& o) const;
  ChunkResult decode_step(std::span<const int32_t> ids, const ForwardOptions& o);
};

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
  c.step.n = n;
  c.step.positions = arena.take_1d(DType::kI32, n);
  c.step.valid = arena.take_1d(DType::kI32, n);
  c.step.ids = arena.take_1d(DType::kI32, n);
  c.step.segments = {{.t0 = 0, .n = n, .p0 = p0, .keys = c.keys, .k = c.k, .plan = &plan,
                      .cache = {.latent = &latent_views, .index_keys = &index_key_views}}};
  return c;
}

void SessionState::upload_inputs(const Chunk& c, std::span<const int32_t> ids) {
  be.upload(c.step.positions, c.positions.data());
  be.upload(c.step.valid, c.valid.data());
  if (!ids.empty()) be.upload(c.step.ids, ids.data());
}

TensorView SessionState::run_layers(const Chunk& c, int first_layer, TensorView x, std::vector<TensorView>& sel,
                                    const ForwardOptions& o) {
  std::vector<std::vector<TensorView>> per_segment{std::move(sel)};
  std::vector<RowRange> rows;
  if (o.logits == LogitsWanted::kAll) rows.push_back({0, c.n});
  if (o.logits == LogitsWanted::kLast) rows.push_back({c.n - 1, 1});
  const TensorView logits = pass.run_layers(c.step, first_layer, x, per_segment, rows, o);
  sel = std::move(per_segment[0]);
  return logits;
}

TensorView SessionState::run_chunk(const Chunk& c, const ForwardOptions& o, std::vector<TensorView>& sel) {
  const TensorView x = pass.embed(c.step);
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
