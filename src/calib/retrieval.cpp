#include "indexcache/retrieval.h"

#include <algorithm>

#include "indexcache/model.h"
#include "indexcache/session.h"

namespace indexcache {

namespace {

int32_t argmax(const std::vector<float>& row) {
  return static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
}

bool correct_in(Session& s, const RetrievalItem& item) {
  s.reset();
  ForwardOptions fo;
  fo.logits = LogitsWanted::kLast;
  ChunkResult r = s.forward(item.prompt_ids, fo);
  for (size_t i = 0; i < item.answer_ids.size(); ++i) {
    const int32_t next = argmax(r.logits);
    if (next != item.answer_ids[i]) return false;
    if (i + 1 < item.answer_ids.size()) r = s.forward(std::span<const int32_t>(&next, 1), fo);
  }
  return true;
}

}  // namespace

LossSum windows_loss(const Model& model, const IndexPlan& plan, const std::vector<std::vector<int32_t>>& windows,
                     Backend& backend, const std::function<void()>& on_window) {
  Session s(model, plan, backend);
  LossSum total;
  for (const auto& w : windows) {
    s.reset();
    const ChunkResult r = s.forward(w);
    total += next_token_loss(r.logits, w, r.vocab);
    if (on_window) on_window();
  }
  return total;
}

bool retrieval_correct(const Model& model, const IndexPlan& plan, const RetrievalItem& item, Backend& backend) {
  Session s(model, plan, backend);
  return correct_in(s, item);
}

RetrievalScore retrieval_accuracy(const Model& model, const IndexPlan& plan, const std::vector<RetrievalItem>& items,
                                  Backend& backend, const RetrievalOptions& options) {
  const int64_t limit = options.max_tokens > 0 ? options.max_tokens : model.spec().max_position_embeddings;
  Session s(model, plan, backend);
  RetrievalScore sc;
  for (const auto& it : items) {
    // The last answer token is predicted, never fed: prompt + answer - 1 positions are used.
    const int64_t used = static_cast<int64_t>(it.prompt_ids.size() + it.answer_ids.size()) - 1;
    if (limit > 0 && used > limit) {
      ++sc.skipped;
    } else {
      const bool ok = correct_in(s, it);
      ++sc.items;
      sc.correct += ok;
      auto& t = sc.by_task[it.task];
      t.first += ok;
      ++t.second;
      if (!ok) sc.wrong_lines.push_back(it.line);
    }
    if (options.on_item) options.on_item();
  }
  return sc;
}

}  // namespace indexcache
