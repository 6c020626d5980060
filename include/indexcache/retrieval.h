// Evaluation on loaded data sets (indexcache/dataset.h): per-token LM loss over windows, and
// retrieval accuracy on {"prompt", "answer"} items.
//
// Retrieval is scored by greedy decoding: the prompt is prefilled (only the last position's logits
// are computed), then as many tokens as the answer has are decoded by argmax, each fed back. An
// item is correct iff the decoded token ids equal the answer's token ids exactly (token-level exact
// match, the same criterion scripts/train/evaluate.py uses; decoding stops at the first wrong token,
// which cannot change the outcome). Items whose prompt plus answer exceed the model's
// max_position_embeddings (or `max_tokens` when set) are skipped and counted as such.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "indexcache/dataset.h"
#include "indexcache/evaluate.h"
#include "indexcache/index_plan.h"

namespace indexcache {

class Model;
class Backend;

// Sum of next-token losses of `plan` over `windows` (each from position 0). `on_window` (optional)
// is called after each window.
LossSum windows_loss(const Model& model, const IndexPlan& plan, const std::vector<std::vector<int32_t>>& windows,
                     Backend& backend, const std::function<void()>& on_window = {});

struct RetrievalScore {
  int items = 0;    // scored
  int correct = 0;
  int skipped = 0;  // too long for the model
  std::vector<int> wrong_lines;  // JSONL line of each wrong item
  std::map<std::string, std::pair<int, int>> by_task;  // task -> (correct, items)
  double accuracy() const { return items ? static_cast<double>(correct) / items : 0.0; }
};

struct RetrievalOptions {
  int max_tokens = 0;  // skip items longer than this (0: the model's max_position_embeddings)
  std::function<void()> on_item;  // called after each item (scored or skipped)
};

// True iff greedy decoding after `item.prompt_ids` reproduces `item.answer_ids`.
bool retrieval_correct(const Model& model, const IndexPlan& plan, const RetrievalItem& item, Backend& backend);

RetrievalScore retrieval_accuracy(const Model& model, const IndexPlan& plan, const std::vector<RetrievalItem>& items,
                                  Backend& backend, const RetrievalOptions& options = {});

}  // namespace indexcache
