#include "io/tokenizer_bpe.h"

#include <queue>

#include "io/tokenizer_text.h"

namespace indexcache::tok {

namespace {

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

struct Symbol {
  int32_t id;
  int prev;
  int next;
  bool alive;
};

struct Candidate {
  int32_t rank;
  int pos;
  int32_t result;
  // Lowest rank first; among equal ranks the leftmost.
  bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

}  // namespace

BpeModel::BpeModel(TokenMap vocab, const std::vector<Merge>& merges, Options options)
    : vocab_(std::move(vocab)), options_(options) {
  merges_.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    // A pair listed twice keeps its first (best) rank.
    merges_.try_emplace(pair_key(merges[r].left, merges[r].right), static_cast<int32_t>(r),
                        merges[r].result);
  }
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kCacheMaxWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() < kCacheMaxEntries) {
      cache_.try_emplace(std::string(word), out.begin() + first, out.end());
    }
  }
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  // One symbol per character; characters missing from the vocab become unk (fused if asked) or
  // are dropped.
  std::vector<Symbol> syms;
  syms.reserve(word.size());
  bool last_was_unk = false;
  for (size_t i = 0; i < word.size();) {
    const size_t n = utf8_len(static_cast<unsigned char>(word[i]));
    auto it = vocab_.find(word.substr(i, n));
    i += n;
    int32_t id;
    if (it != vocab_.end()) {
      id = it->second;
      last_was_unk = false;
    } else if (options_.unk_id) {
      if (options_.fuse_unk && last_was_unk) continue;
      id = *options_.unk_id;
      last_was_unk = true;
    } else {
      continue;
    }
    const int idx = static_cast<int>(syms.size());
    syms.push_back({id, idx - 1, -1, true});
    if (idx > 0) syms[idx - 1].next = idx;
  }
  if (syms.empty()) return;

  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto consider = [&](int pos) {
    const int nxt = syms[pos].next;
    if (nxt < 0) return;
    auto it = merges_.find(pair_key(syms[pos].id, syms[nxt].id));
    if (it != merges_.end()) queue.push({it->second.first, pos, it->second.second});
  };
  for (int i = 0; i + 1 < static_cast<int>(syms.size()); ++i) consider(i);

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& s = syms[c.pos];
    if (!s.alive || s.next < 0) continue;
    // Stale if the pair at this position changed since the candidate was queued.
    auto it = merges_.find(pair_key(s.id, syms[s.next].id));
    if (it == merges_.end() || it->second.second != c.result) continue;
    Symbol& right = syms[s.next];
    s.id = c.result;
    right.alive = false;
    s.next = right.next;
    if (s.next >= 0) syms[s.next].prev = c.pos;
    if (s.prev >= 0) consider(s.prev);
    consider(c.pos);
  }
  for (int i = 0; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
}

}  // namespace indexcache::tok
