// The BPE model of a tokenizer.json: vocabulary, ranked merges, and the merge loop that turns
// one pre-token (a "word", already in byte-level form) into token ids.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace indexcache::tok {

// Hash for heterogeneous (string_view) lookup in string-keyed maps.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  struct Merge {
    int32_t left;
    int32_t right;
    int32_t result;
  };
  struct Options {
    bool ignore_merges = false;     // a word that is itself in the vocab is one token
    std::optional<int32_t> unk_id;  // characters not in the vocab; dropped when unset
    bool fuse_unk = false;          // consecutive unknowns become one unk
  };

  // `merges` in rank order (rank = index); their tokens must be in `vocab`.
  BpeModel(TokenMap vocab, const std::vector<Merge>& merges, Options options);

  // Appends the ids of `word`.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  const TokenMap& vocab() const { return vocab_; }

 private:
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  TokenMap vocab_;
  // (left << 32 | right) -> (rank, result id)
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;
  Options options_;

  // Words already seen (short ones only, bounded), as HF keeps.
  static constexpr size_t kCacheMaxWordBytes = 256;
  static constexpr size_t kCacheMaxEntries = 65536;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

}  // namespace indexcache::tok
