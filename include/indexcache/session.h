// A Session runs one sequence through a model incrementally: chunked prefill and decode share one
// code path over a KV cache in MLA's compressed form (per layer: the normed kv latent and the
// roped key part per token; indexer keys only for F layers of the plan).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "indexcache/index_plan.h"

namespace indexcache {

class Model;
class Backend;
struct SessionState;

// Bytes the cache stores per token, at `element_bytes` per element (4: f32 on the CPU and the
// CUDA f32 path; 2: bf16 on CUDA).
struct KvCacheFootprint {
  int64_t latent_bytes_per_token_per_layer = 0;   // (kv_lora_rank + qk_rope_head_dim) * element_bytes
  int64_t indexer_bytes_per_token_per_layer = 0;  // index_head_dim * element_bytes, F layers only
  int indexer_layers = 0;                         // F layers of the plan
  int64_t bytes_per_token() const;                // all layers together
  int layers = 0;
};
KvCacheFootprint kv_cache_footprint(const ModelSpec& spec, const IndexPlan& plan, int element_bytes = 4);

enum class LogitsWanted { kAll, kLast, kNone };

// What a layer's attention works on, as f32 host copies: its normed input and query latent (what
// the indexer reads), its absorbed queries and the cached rows it attends over (the normed latent,
// then the roped key part), from which the dense attention over every causal key follows:
// softmax over s <= position(t) of scale * queries[t, h] . keys[s] (scale: attention_scale()).
struct AttentionInputs {
  std::span<const float> input;         // [tokens, hidden]
  std::span<const float> query_latent;  // [tokens, q_lora_rank]
  std::span<const float> queries;       // [tokens, heads, kv_lora_rank + qk_rope_head_dim]
  std::span<const float> keys;          // [first_position + tokens, kv_lora_rank + qk_rope_head_dim]
};

// Sees what a forward pass computes, layer by layer, as host copies made only for what wants()
// asks: the hidden state entering each layer that runs, each layer's selection (an F layer's from
// its indexer, an S layer's its source's), each F layer's index scores and each layer's attention
// inputs. Called during forward() in layer order per kind.
class LayerObserver {
 public:
  struct Wants {
    bool inputs = false, selections = false, index_scores = false, attention = false;
  };
  virtual ~LayerObserver() = default;
  virtual Wants wants() const = 0;
  virtual void on_input(int layer, std::span<const float> hidden) {}         // [tokens, hidden]
  virtual void on_selection(int layer, std::span<const int32_t> indices) {}  // [tokens, k], -1 unused (k: ChunkResult::k)
  virtual void on_index_scores(int layer, std::span<const float> scores) {}  // [tokens, first_position + tokens]
  virtual void on_attention(int layer, const AttentionInputs& inputs) {}
};

// An observer that keeps what it is asked for, per layer (empty where a layer gave nothing).
class LayerCapture final : public LayerObserver {
 public:
  explicit LayerCapture(Wants wants) : wants_(wants) {}
  Wants wants() const override { return wants_; }
  void on_input(int layer, std::span<const float> hidden) override { put(inputs, layer, hidden); }
  void on_selection(int layer, std::span<const int32_t> indices) override { put(selections, layer, indices); }
  void on_index_scores(int layer, std::span<const float> scores) override { put(index_scores, layer, scores); }
  std::vector<std::vector<float>> inputs, index_scores;
  std::vector<std::vector<int32_t>> selections;

 private:
  template <class T>
  static void put(std::vector<std::vector<T>>& v, int layer, std::span<const T> x) {
    if (static_cast<int>(v.size()) <= layer) v.resize(static_cast<size_t>(layer) + 1);
    v[layer].assign(x.begin(), x.end());
  }
  Wants wants_;
};

struct ForwardOptions {
  LogitsWanted logits = LogitsWanted::kAll;
  int query_block = 0;  // indexer queries scored per block (bounds memory); 0: the backend's default
  LayerObserver* observer = nullptr;
  // Decode steps (one token, no observer) replay a recorded graph on backends that record (CUDA
  // bf16): recorded at the first step of each 1024 cache rows, replayed by later ones.
  bool graphs = true;
};

// Where forward_from() picks a whole-sequence run up: the hidden state entering its first layer
// and the selections of the F layers before it (e.g. kept by a LayerCapture during an earlier
// forward of the same ids under a plan that agrees before that layer).
struct ResumePoint {
  std::span<const float> hidden;                              // [tokens, hidden]
  const std::vector<std::vector<int32_t>>* selections = nullptr;  // per layer [tokens, k]
};

struct ChunkResult {
  int tokens = 0;             // tokens in the chunk
  int first_position = 0;     // position of the chunk's first token
  int vocab = 0;
  int k = 0;                  // selection width: min(index_topk, the cache rows the chunk saw)
  std::vector<float> logits;  // [tokens or 1, vocab] per `logits`
};

class Session {
 public:
  // `plan` must fit the model (Model::check_plan). The cache grows as tokens arrive.
  Session(const Model& model, const IndexPlan& plan, Backend& backend);
  ~Session();
  Session(Session&&) noexcept;

  // Appends `ids` at positions length()..length()+n-1 and runs them through every layer.
  ChunkResult forward(std::span<const int32_t> ids, const ForwardOptions& options = {});
  // Runs `ids` as one chunk from position 0 through layers first_layer..N-1 only, starting from
  // `from`; the layers before first_layer are not run (used by the greedy layer search: flipping
  // layer l to S changes nothing before l).
  ChunkResult forward_from(int first_layer, std::span<const int32_t> ids, const ResumePoint& from,
                           const ForwardOptions& options = {});
  int length() const;
  const IndexPlan& plan() const;
  // Switches to another plan without reloading weights; forgets every token.
  void set_plan(const IndexPlan& plan);
  void reset();  // forget every token (keeps the allocation)
  // Allocates the cache (and RoPE table) for `tokens` tokens now instead of as they arrive, so that
  // later chunks and decode steps up to that length move no memory.
  void reserve(int tokens);
  // Decode steps that replayed a recorded graph so far.
  int64_t graph_steps() const;
  // Bytes the KV cache holds in backend memory now (latent rows of every layer, indexer keys of F
  // layers only), at its current capacity.
  int64_t cache_bytes() const;

 private:
  std::unique_ptr<SessionState> s_;
};

}  // namespace indexcache
