// Many sequences through one model, a step at a time, over a paged KV cache: what a server's
// continuous batching runs on. Each step takes a piece (a prefill chunk or one decode token) of
// any number of open sequences; their dense work runs as one batch, each sequence's indexer, top-k
// and sparse attention over its own pages, under its own plan. The cache is a pool of fixed-size
// pages per layer (latent rows on every layer; indexer-key rows on the layers some plan runs F);
// a sequence holds ceil(length / page_tokens) pages, one page table for all layers.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "indexcache/index_plan.h"

namespace indexcache {

class Model;
class Backend;
struct BatchSessionState;

// Where a profiled step spent its time (the backend synchronises after every op then).
struct StepProfile {
  double seconds = 0;          // the whole step
  double indexer_seconds = 0;  // indexer scores and top-k
};

struct PagedCacheOptions {
  int page_tokens = 64;   // tokens per page (SGLang's DSA page size)
  int64_t pages = 0;      // pages in the pool; 0: enough for one max_position_embeddings sequence
};

class BatchSession {
 public:
  // `plans`: the plans sequences may run (each must fit the model); at least one.
  BatchSession(const Model& model, std::vector<IndexPlan> plans, Backend& backend,
               const PagedCacheOptions& options = {});
  ~BatchSession();
  const Model& model() const;

  // A new empty sequence under plans()[plan]; returns its id (ids are never reused).
  int64_t open(int plan);
  // Forgets a sequence and frees its pages. Unknown ids are ignored.
  void close(int64_t sequence);
  int length(int64_t sequence) const;
  int sequences() const;

  int page_tokens() const;
  int64_t pages_total() const;
  int64_t pages_free() const;
  // Pages a sequence must still get to hold `more` further tokens.
  int64_t pages_needed(int64_t sequence, int more) const;
  // Bytes one page takes, all layers together.
  int64_t page_bytes() const;
  const std::vector<IndexPlan>& plans() const;
  // The index of `plan` among plans(), added when new. Throws Error(kBadInput) when it does not fit
  // the model, or runs the indexer on a layer no construction plan did (that layer has no key pool).
  int add_plan(const IndexPlan& plan);

  struct Piece {
    int64_t sequence = 0;
    std::span<const int32_t> ids;  // appended at positions length()..
    bool logits = true;            // want its last token's logits
  };
  // Runs every piece in one step (each sequence at most once). Returns, per piece, its last
  // token's logits [vocab] (empty where not wanted; not checked for NaN: the caller's per request). Throws Error(kBadInput) for a bad id, an
  // unknown or repeated sequence or one past max_position_embeddings, and Error(kRuntime) "out of
  // KV pages" when the pool cannot hold the step (nothing is run then; check pages_needed first).
  // With `profile`, the step's op times are measured into it.
  std::vector<std::vector<float>> step(std::span<const Piece> pieces, StepProfile* profile = nullptr);

 private:
  std::unique_ptr<BatchSessionState> s_;
};

}  // namespace indexcache
