// Many sequences over one paged KV cache: pools of pages per layer, a page table per sequence,
// and steps of several segments through the one forward pass (model/forward_pass.h).
#include "indexcache/batch_session.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <map>
#include <numeric>

#include "backend/arena.h"
#include "backend/backend.h"
#include "indexcache/error.h"
#include "indexcache/model.h"
#include "model/forward_pass.h"
#include "model/logits_check.h"
#include "model/placed_weights.h"
#include "model/rope_table.h"

namespace indexcache {

namespace {

struct Sequence {
  int plan = 0;
  int length = 0;
  std::vector<int32_t> pages;  // its page table: page i holds positions i * page_tokens ..
};

int64_t pages_for(int64_t tokens, int page_tokens) { return (tokens + page_tokens - 1) / page_tokens; }

}  // namespace

struct BatchSessionState {
  const Model& model;
  const ModelSpec& s;
  Backend& be;
  std::vector<IndexPlan> plans;
  int page_tokens = 0;
  int64_t pages_total = 0;
  std::vector<bool> key_layers;                    // layers with an indexer-key pool
  std::vector<Tensor> latent_pool, key_pool;       // per layer [pages * page_tokens, width]
  std::vector<TensorView> latent_views, key_views;
  std::vector<int32_t> free_pages;                 // a stack
  std::map<int64_t, Sequence> sequences;
  int64_t next_id = 1;
  Tensor rope_cos, rope_sin;
  int rope_positions = 0;
  PlacedWeights w;
  Arena arena;
  ForwardPass pass;

  BatchSessionState(const Model& m, std::vector<IndexPlan> p, Backend& b, const PagedCacheOptions& o)
      : model(m), s(m.spec()), be(b), plans(std::move(p)), arena(b), pass(b, s, w, arena) {
    if (plans.empty()) throw_bad_input("plans", "a batch needs at least one plan");
    for (const IndexPlan& plan : plans) model.check_plan(plan);
    if (o.page_tokens < 1 || o.page_tokens > 4096)
      throw_bad_input("page_tokens", std::to_string(o.page_tokens) + " is outside [1, 4096]");
    page_tokens = o.page_tokens;
    pages_total = o.pages > 0 ? o.pages : pages_for(s.max_position_embeddings, page_tokens);
    if (pages_total * page_tokens > std::numeric_limits<int32_t>::max())
      throw_bad_input("pages", std::to_string(pages_total) + " pages of " + std::to_string(page_tokens) +
                                   " tokens exceed 2^31 cache rows");
    w = place_weights(be, s, model.weights());
    key_layers.assign(s.num_layers, false);
    for (const IndexPlan& plan : plans)
      for (int l = 0; l < s.num_layers; ++l) key_layers[l] = key_layers[l] || plan.is_full(l);
    const DType act = be.activation_dtype();
    const int64_t rows = pages_total * page_tokens;
    for (int l = 0; l < s.num_layers; ++l) {
      latent_pool.push_back(be.tensor(act, rows, s.kv_lora_rank + s.qk_rope_head_dim));
      key_pool.push_back(key_layers[l] ? be.tensor(act, rows, s.index_head_dim) : Tensor{});
      latent_views.push_back(latent_pool.back().view);
      key_views.push_back(key_pool.back().view);
    }
    free_pages.resize(static_cast<size_t>(pages_total));
    std::iota(free_pages.rbegin(), free_pages.rend(), 0);  // page 0 handed out first
  }

  int64_t page_bytes() const {
    const int64_t es = static_cast<int64_t>(dtype_size(be.activation_dtype()));
    int64_t per_token = 0;
    for (int l = 0; l < s.num_layers; ++l)
      per_token += (s.kv_lora_rank + s.qk_rope_head_dim) + (key_layers[l] ? s.index_head_dim : 0);
    return per_token * es * page_tokens;
  }

  Sequence& find(int64_t id) {
    auto it = sequences.find(id);
    if (it == sequences.end()) throw_bad_input("sequence", "no open sequence " + std::to_string(id));
    return it->second;
  }
  const Sequence& find(int64_t id) const { return const_cast<BatchSessionState*>(this)->find(id); }

  int add_plan(const IndexPlan& plan) {
    for (size_t i = 0; i < plans.size(); ++i)
      if (plans[i].pattern() == plan.pattern()) return static_cast<int>(i);
    model.check_plan(plan);
    for (int l = 0; l < s.num_layers; ++l)
      if (plan.is_full(l) && !key_layers[l])
        throw_bad_input("index plan", "runs the indexer on layer " + std::to_string(l) +
                                          ", which has no indexer-key pages (no plan given at start runs it there)");
    plans.push_back(plan);
    return static_cast<int>(plans.size()) - 1;
  }

  void ensure_rope(int positions) {
    if (positions <= rope_positions) return;
    rope_positions = std::max(positions, std::min(2 * rope_positions, s.max_position_embeddings));
    const RopeTable rope = make_rope_table(s, rope_positions);
    rope_cos = be.tensor(DType::kF32, rope_positions, rope.half);
    rope_sin = be.tensor(DType::kF32, rope_positions, rope.half);
    be.upload(rope_cos.view, rope.cos.data());
    be.upload(rope_sin.view, rope.sin.data());
    pass.set_rope(rope_cos.view, rope_sin.view);
  }

  std::vector<std::vector<float>> step(std::span<const BatchSession::Piece> pieces, StepProfile* profile);
};

std::vector<std::vector<float>> BatchSessionState::step(std::span<const BatchSession::Piece> pieces,
                                                        StepProfile* profile) {
  std::vector<std::vector<float>> out(pieces.size());
  if (pieces.empty()) return out;
  // Everything checked before anything changes.
  int64_t tokens = 0, pages = 0;
  int max_total = 0;
  std::vector<int64_t> seen;
  for (const BatchSession::Piece& p : pieces) {
    const Sequence& q = find(p.sequence);
    if (std::find(seen.begin(), seen.end(), p.sequence) != seen.end())
      throw_bad_input("sequence", std::to_string(p.sequence) + " appears twice in one step");
    seen.push_back(p.sequence);
    if (p.ids.empty()) throw_bad_input("input ids", "empty piece");
    const int64_t total = int64_t{q.length} + static_cast<int64_t>(p.ids.size());
    if (total > s.max_position_embeddings)
      throw_bad_input("input ids", std::to_string(total) + " tokens exceed max_position_embeddings " +
                                       std::to_string(s.max_position_embeddings));
    for (int32_t id : p.ids)
      if (id < 0 || id >= s.vocab_size)
        throw_bad_input("input ids", "token id " + std::to_string(id) + " outside the vocabulary [0, " +
                                         std::to_string(s.vocab_size) + ")");
    tokens += static_cast<int64_t>(p.ids.size());
    pages += pages_for(total, page_tokens) - static_cast<int64_t>(q.pages.size());
    max_total = std::max(max_total, static_cast<int>(total));
  }
  if (tokens > std::numeric_limits<int32_t>::max() / 2) throw_bad_input("input ids", "step too large");
  if (pages > static_cast<int64_t>(free_pages.size()))
    throw_runtime("KV cache", "out of KV pages: the step needs " + std::to_string(pages) + ", " +
                                  std::to_string(free_pages.size()) + " are free");
  for (const BatchSession::Piece& p : pieces) {
    Sequence& q = find(p.sequence);
    const int64_t want = pages_for(q.length + static_cast<int64_t>(p.ids.size()), page_tokens);
    while (static_cast<int64_t>(q.pages.size()) < want) {
      q.pages.push_back(free_pages.back());
      free_pages.pop_back();
    }
  }
  ensure_rope(max_total);

  // The step: the pieces' tokens one after another, each piece a segment over its own pages.
  arena.reset();
  const int n = static_cast<int>(tokens);
  Step st;
  st.n = n;
  st.ids = arena.take_1d(DType::kI32, n);
  st.positions = arena.take_1d(DType::kI32, n);
  st.valid = arena.take_1d(DType::kI32, n);
  std::vector<int32_t> ids, positions, valid;
  ids.reserve(n);
  positions.reserve(n);
  valid.reserve(n);
  std::vector<RowRange> logit_rows;
  int t0 = 0;
  for (const BatchSession::Piece& p : pieces) {
    const Sequence& q = find(p.sequence);
    const int m = static_cast<int>(p.ids.size());
    ids.insert(ids.end(), p.ids.begin(), p.ids.end());
    for (int i = 0; i < m; ++i) {
      positions.push_back(q.length + i);
      valid.push_back(q.length + i + 1);
    }
    const TensorView table = arena.take_1d(DType::kI32, static_cast<int64_t>(q.pages.size()));
    be.upload(table, q.pages.data());
    const int keys = q.length + m;
    st.segments.push_back({.t0 = t0, .n = m, .p0 = q.length, .keys = keys, .k = std::min(s.index_topk, keys),
                           .plan = &plans[q.plan],
                           .cache = {.latent = &latent_views, .index_keys = &key_views,
                                     .pages = {.pages = table, .page_rows = page_tokens}}});
    if (p.logits) logit_rows.push_back({t0 + m - 1, 1});
    t0 += m;
  }
  be.upload(st.ids, ids.data());
  be.upload(st.positions, positions.data());
  be.upload(st.valid, valid.data());

  OpProfile ops;
  const double start = backend_clock_seconds();
  if (profile) be.set_profile(&ops);
  std::vector<std::vector<TensorView>> sel;
  TensorView logits;
  try {
    logits = pass.run_layers(st, 0, pass.embed(st), sel, logit_rows, ForwardOptions{});
  } catch (...) {
    be.set_profile(nullptr);
    throw;
  }
  be.set_profile(nullptr);
  std::vector<float> host;
  if (!logits.empty()) {
    host.resize(static_cast<size_t>(logits.numel()));
    be.download(logits, host.data());
  }
  if (profile) {
    profile->seconds = backend_clock_seconds() - start;
    profile->indexer_seconds = ops.of(OpKind::kIndexerScores) + ops.of(OpKind::kTopk);
  }
  // The cache holds the step's rows whatever the logits say; the caller checks each row (one
  // request's NaN is not another's failure).
  size_t row = 0;
  for (size_t i = 0; i < pieces.size(); ++i) {
    Sequence& q = find(pieces[i].sequence);
    q.length += static_cast<int>(pieces[i].ids.size());
    if (!pieces[i].logits) continue;
    out[i].assign(host.begin() + static_cast<int64_t>(row * s.vocab_size),
                  host.begin() + static_cast<int64_t>((row + 1) * s.vocab_size));
    ++row;
  }
  return out;
}

BatchSession::BatchSession(const Model& model, std::vector<IndexPlan> plans, Backend& backend,
                           const PagedCacheOptions& options)
    : s_(std::make_unique<BatchSessionState>(model, std::move(plans), backend, options)) {}
BatchSession::~BatchSession() = default;
const Model& BatchSession::model() const { return s_->model; }

int64_t BatchSession::open(int plan) {
  if (plan < 0 || plan >= static_cast<int>(s_->plans.size()))
    throw_bad_input("plan", "no plan " + std::to_string(plan) + " (" + std::to_string(s_->plans.size()) + " loaded)");
  const int64_t id = s_->next_id++;
  s_->sequences[id] = {.plan = plan};
  return id;
}

void BatchSession::close(int64_t sequence) {
  auto it = s_->sequences.find(sequence);
  if (it == s_->sequences.end()) return;
  for (auto p = it->second.pages.rbegin(); p != it->second.pages.rend(); ++p) s_->free_pages.push_back(*p);
  s_->sequences.erase(it);
}

int BatchSession::length(int64_t sequence) const { return s_->find(sequence).length; }
int BatchSession::sequences() const { return static_cast<int>(s_->sequences.size()); }
int BatchSession::page_tokens() const { return s_->page_tokens; }
int64_t BatchSession::pages_total() const { return s_->pages_total; }
int64_t BatchSession::pages_free() const { return static_cast<int64_t>(s_->free_pages.size()); }
int64_t BatchSession::pages_needed(int64_t sequence, int more) const {
  const Sequence& q = s_->find(sequence);
  return std::max<int64_t>(0, pages_for(int64_t{q.length} + std::max(more, 0), s_->page_tokens) -
                                  static_cast<int64_t>(q.pages.size()));
}
int64_t BatchSession::page_bytes() const { return s_->page_bytes(); }
const std::vector<IndexPlan>& BatchSession::plans() const { return s_->plans; }
int BatchSession::add_plan(const IndexPlan& plan) { return s_->add_plan(plan); }
std::vector<std::vector<float>> BatchSession::step(std::span<const Piece> pieces, StepProfile* profile) {
  return s_->step(pieces, profile);
}

}  // namespace indexcache
