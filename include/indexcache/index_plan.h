// IndexPlan: which layers run their indexer (F, full) and which reuse the selection of the nearest
// preceding F layer (S, shared). Layer 0 is always F.
#pragma once

#include <string>
#include <vector>

#include "indexcache/model_spec.h"

namespace indexcache {

class IndexPlan {
 public:
  // All layers F.
  static IndexPlan full(int num_layers);
  // From an F/S string ("FSSF..."); errors on wrong length, unknown letters or leading S.
  static IndexPlan from_pattern(const std::string& pattern, int num_layers,
                               const std::string& source = "plan");
  // Layer i is F iff max(i - offset + 1, 0) % freq == 0 (SGLang / transformers rule).
  static IndexPlan from_freq(int freq, int offset, int num_layers);
  // From the config keys with SGLang's precedence: indexer_types > index_topk_pattern >
  // index_topk_freq + index_skip_topk_offset (default offset 2); all-F when none is present.
  static IndexPlan from_config(const ModelSpec& spec, const std::string& source = "config.json");
  // The CLI's --plan syntax: `full`, `1/N` (uniform: freq N, offset 1), an F/S string, or a path
  // to a config.json or a JSON report holding `indexer_types` / `index_topk_pattern` / `plan`.
  static IndexPlan parse(const std::string& text, const ModelSpec& spec);

  int num_layers() const { return static_cast<int>(full_.size()); }
  bool is_full(int layer) const { return full_[layer]; }
  int num_full() const;
  // The F layer whose selection `layer` uses (itself when F).
  int source_layer(int layer) const;
  std::string pattern() const;                     // "FSSF..."
  std::vector<std::string> indexer_types() const;  // "full" / "shared"

 private:
  explicit IndexPlan(std::vector<bool> full) : full_(std::move(full)) {}
  static void validate(const std::vector<bool>& full, int num_layers, const std::string& source);
  std::vector<bool> full_;
};

}  // namespace indexcache
