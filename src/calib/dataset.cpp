#include "indexcache/dataset.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "indexcache/error.h"
#include "indexcache/evaluate.h"
#include "indexcache/tokenizer.h"

namespace indexcache {

namespace fs = std::filesystem;
using nlohmann::json;

int64_t DataFile::window_tokens() const {
  int64_t n = 0;
  for (const auto& w : windows) n += static_cast<int64_t>(w.size());
  return n;
}

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string read_whole(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw_bad_input(path, "data file not found");
  if (fs::is_directory(path, ec)) throw_bad_input(path, "is a directory, expected a data file");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw_bad_input(path, "cannot open data file");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw_bad_input(path, "read error");
  return ss.str();
}

class Loader {
 public:
  Loader(const std::string& path, const Tokenizer* tok, const DataOptions& o) : path_(path), tok_(tok), o_(o) {}

  std::vector<int32_t> encode(const std::string& text, const std::string& where) {
    if (!tok_) throw_bad_input(where, "text data needs the model's tokenizer.json (give token ids: a .ids file)");
    try {
      return tok_->encode(text);
    } catch (const Error& e) {
      throw_bad_input(where, e.what());
    }
  }

  void check_ids(const std::vector<int32_t>& ids, const std::string& where) {
    if (o_.vocab_size <= 0) return;
    for (int32_t id : ids)
      if (id < 0 || id >= o_.vocab_size)
        throw_bad_input(where, "token id " + std::to_string(id) + " is outside the model's vocabulary [0, " +
                                   std::to_string(o_.vocab_size) + ")");
  }

  void add_stream(DataFile& d, const std::vector<int32_t>& ids) {
    d.stream_tokens += static_cast<int64_t>(ids.size());
    if (o_.max_windows > 0 && static_cast<int>(d.windows.size()) >= o_.max_windows) return;
    const int room = o_.max_windows > 0 ? o_.max_windows - static_cast<int>(d.windows.size()) : 0;
    for (auto& w : make_windows(ids, o_.ctx, room)) d.windows.push_back(std::move(w));
  }

  std::vector<int32_t> id_array(const json& v, const std::string& where) {
    if (!v.is_array()) throw_bad_input(where, "expected an array of token ids");
    std::vector<int32_t> ids;
    ids.reserve(v.size());
    for (const auto& e : v) {
      if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() > INT32_MAX)
        throw_bad_input(where, "expected non-negative integer token ids, found " + e.dump());
      ids.push_back(static_cast<int32_t>(e.get<int64_t>()));
    }
    check_ids(ids, where);
    return ids;
  }

  void load_jsonl(DataFile& d, const std::string& text) {
    std::istringstream in(text);
    std::string line;
    int lineno = 0;
    while (std::getline(in, line)) {
      ++lineno;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = path_ + ":" + std::to_string(lineno);
      json j = json::parse(line, nullptr, false);
      if (j.is_discarded()) throw_bad_input(where, "invalid JSON");
      if (!j.is_object()) throw_bad_input(where, "expected a JSON object");
      auto str = [&](const char* key) -> std::string {
        if (!j[key].is_string()) throw_bad_input(where + ": key '" + key + "'", "expected a string");
        return j[key].get<std::string>();
      };
      if (j.contains("prompt") || j.contains("prompt_ids")) {
        if (o_.max_items > 0 && static_cast<int>(d.items.size()) >= o_.max_items) continue;
        RetrievalItem it;
        it.line = lineno;
        if (j.contains("task") && j["task"].is_string()) it.task = j["task"].get<std::string>();
        if (j.contains("prompt_ids"))
          it.prompt_ids = id_array(j["prompt_ids"], where + ": key 'prompt_ids'");
        else
          it.prompt_ids = encode(str("prompt"), where + ": key 'prompt'");
        if (j.contains("answer")) it.answer = str("answer");
        if (j.contains("answer_ids"))
          it.answer_ids = id_array(j["answer_ids"], where + ": key 'answer_ids'");
        else if (j.contains("answer"))
          it.answer_ids = encode(it.answer, where + ": key 'answer'");
        else
          throw_bad_input(where, "a retrieval item needs 'answer' or 'answer_ids'");
        check_ids(it.prompt_ids, where + ": key 'prompt'");
        check_ids(it.answer_ids, where + ": key 'answer'");
        if (it.prompt_ids.empty()) throw_bad_input(where + ": key 'prompt'", "no tokens");
        if (it.answer_ids.empty()) throw_bad_input(where + ": key 'answer'", "no tokens");
        d.items.push_back(std::move(it));
      } else if (j.contains("ids")) {
        add_stream(d, id_array(j["ids"], where + ": key 'ids'"));
      } else if (j.contains("text")) {
        auto ids = encode(str("text"), where + ": key 'text'");
        check_ids(ids, where + ": key 'text'");
        add_stream(d, ids);
      } else {
        throw_bad_input(where, "expected {\"text\": ...}, {\"ids\": [...]} or {\"prompt\": ..., \"answer\": ...}");
      }
    }
  }

  std::vector<int32_t> parse_ids(const std::string& text) {
    std::vector<int32_t> ids;
    std::istringstream in(text);
    std::string tok;
    while (in >> tok) {
      size_t used = 0;
      long long v = -1;
      try {
        v = std::stoll(tok, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != tok.size() || v < 0 || v > INT32_MAX)
        throw_bad_input(path_, "'" + tok + "' is not a token id (non-negative integer)");
      ids.push_back(static_cast<int32_t>(v));
    }
    check_ids(ids, path_);
    return ids;
  }

  DataFile load() {
    if (o_.ctx < 2) throw_bad_input("--ctx", "must be at least 2 tokens");
    DataFile d;
    d.path = path_;
    d.name = fs::path(path_).filename().string();
    const bool jsonl = ends_with(path_, ".jsonl"), ids = ends_with(path_, ".ids"), txt = ends_with(path_, ".txt");
    if (!jsonl && !ids && !txt) throw_bad_input(path_, "unknown data file kind (expected .txt, .jsonl or .ids)");
    const std::string text = read_whole(path_);
    if (ids)
      add_stream(d, parse_ids(text));
    else if (txt) {
      auto t = encode(text, path_);
      check_ids(t, path_);
      add_stream(d, t);
    } else {
      load_jsonl(d, text);
    }
    if (d.windows.empty() && d.items.empty())
      throw_bad_input(path_, "no data: no window of at least 2 tokens and no retrieval item");
    return d;
  }

 private:
  std::string path_;
  const Tokenizer* tok_;
  const DataOptions& o_;
};

}  // namespace

DataFile load_data_file(const std::string& path, const Tokenizer* tokenizer, const DataOptions& options) {
  return Loader(path, tokenizer, options).load();
}

std::vector<DataFile> load_data_files(const std::vector<std::string>& paths, const Tokenizer* tokenizer,
                                      const DataOptions& options) {
  std::vector<DataFile> out;
  for (const auto& p : paths) out.push_back(load_data_file(p, tokenizer, options));
  return out;
}

std::vector<std::string> default_data_files(const std::string& data_dir, DataUse use) {
  std::vector<std::string> out;
  std::error_code ec;
  if (fs::is_directory(data_dir, ec)) {
    for (const auto& e : fs::directory_iterator(data_dir, ec)) {
      if (!e.is_regular_file()) continue;
      const std::string name = e.path().filename().string();
      const bool pick = use == DataUse::kCalibration
                            ? name.rfind("calibration", 0) == 0 && ends_with(name, ".txt")
                            : (name.rfind("heldout", 0) == 0 && ends_with(name, ".txt")) ||
                                  (name.rfind("retrieval", 0) == 0 && ends_with(name, ".jsonl"));
      if (pick) out.push_back(e.path().string());
    }
  }
  std::sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) {
    // heldout before retrieval; retrieval sets by length (1k, 2k, 4k: same digit count sorts right)
    const bool ra = a.find("retrieval") != std::string::npos, rb = b.find("retrieval") != std::string::npos;
    if (ra != rb) return rb;
    if (a.size() != b.size()) return a.size() < b.size();
    return a < b;
  });
  if (out.empty())
    throw_bad_input(data_dir, std::string("no default ") + (use == DataUse::kCalibration ? "calibration" : "evaluation") +
                                  " data there (give --data FILE)");
  return out;
}

std::string embedded_data_dir(const std::string& embedded_model_dir) {
  fs::path p = fs::path(embedded_model_dir).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();  // "models/default/"
  return (p.parent_path().parent_path() / "data").string();
}

std::vector<DataFile> load_model_data(const std::string& model_dir, std::vector<std::string> paths, DataUse use,
                                      const std::string& default_dir, const DataOptions& options) {
  if (paths.empty()) paths = default_data_files(default_dir, use);
  const std::string tok_path = model_dir + "/tokenizer.json";
  std::optional<Tokenizer> tok;
  std::error_code ec;
  const bool need_tok = std::any_of(paths.begin(), paths.end(), [](const std::string& p) { return !ends_with(p, ".ids"); });
  if (need_tok && fs::exists(tok_path, ec)) tok = Tokenizer::load(tok_path);
  return load_data_files(paths, tok ? &*tok : nullptr, options);
}

int resolve_ctx(int flag, int max_positions, int default_ctx) {
  if (flag < 0 || flag == 1) throw_bad_input("--ctx", "must be at least 2 tokens");
  if (flag == 0) return std::max(2, max_positions > 0 ? std::min(default_ctx, max_positions) : default_ctx);
  if (max_positions > 0 && flag > max_positions)
    throw_bad_input("--ctx", std::to_string(flag) + " is longer than the model's max_position_embeddings " +
                                 std::to_string(max_positions));
  return flag;
}

std::vector<std::vector<int32_t>> all_windows(const std::vector<DataFile>& files) {
  std::vector<std::vector<int32_t>> out;
  for (const auto& f : files) out.insert(out.end(), f.windows.begin(), f.windows.end());
  return out;
}

std::string windows_fingerprint(const std::vector<std::vector<int32_t>>& windows) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 1099511628211ull;
    }
  };
  mix(windows.size());
  for (const auto& w : windows) {
    mix(w.size());
    for (int32_t id : w) mix(static_cast<uint32_t>(id));
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace indexcache
