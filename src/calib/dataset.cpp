#include "indexcache/dataset.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/json_input.h"
#include "indexcache/error.h"
#include "indexcache/evaluate.h"
#include "indexcache/model_spec.h"
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
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) throw_bad_input(path, "data file not found");
  if (fs::is_directory(st)) throw_bad_input(path, "is a directory, expected a data file");
  if (!fs::is_regular_file(st)) throw_bad_input(path, "is not a regular file (a pipe or device?), expected a data file");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw_bad_input(path, "cannot open data file");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw_bad_input(path, "read error");
  return ss.str();
}

// A token of an .ids file for a message: quoted (escapes never reach the terminal), cut when long.
std::string token_for_message(std::string_view tok) {
  constexpr size_t kMax = 24;
  return tok.size() > kMax ? quote_for_message(tok.substr(0, kMax)) + "..." : quote_for_message(tok);
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
    if (!v.is_array()) throw_bad_input(where, "expected an array of token ids, found " + json_for_message(v));
    const int64_t hi = o_.vocab_size > 0 ? o_.vocab_size - 1 : INT32_MAX;
    std::vector<int32_t> ids;
    ids.reserve(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      const auto id = json_integer_in(v[i], 0, hi);
      if (!id)
        throw_bad_input(where, "entry " + std::to_string(i) + ": expected a token id in [0, " + std::to_string(hi) +
                                   "], found " + json_for_message(v[i]));
      ids.push_back(static_cast<int32_t>(*id));
    }
    return ids;
  }

  // {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}: the
  // user turn wrapped in the model's chat format (wrap_chat, as `generate --chat` does), then the
  // assistant's reply, if any, as the continuation.
  std::string render_chat(const json& messages, const std::string& where) {
    const std::string key = where + ": key 'messages'";
    if (!messages.is_array()) throw_bad_input(key, "expected an array of messages, found " + json_for_message(messages));
    if (messages.empty()) throw_bad_input(key, "no messages");
    if (!o_.chat) throw_bad_input(key, "chat data needs the model's chat format (no tokenizer?)");
    std::vector<std::string> roles, contents;
    for (size_t i = 0; i < messages.size(); ++i) {
      const std::string mk = where + ": key 'messages[" + std::to_string(i) + "]";
      const json& m = messages[i];
      if (!m.is_object()) throw_bad_input(mk + "'", "expected {\"role\": ..., \"content\": ...}, found " + json_for_message(m));
      const auto role = m.find("role"), content = m.find("content");
      if (role == m.end() || !role->is_string())
        throw_bad_input(mk + ".role'", "expected a string, found " + (role == m.end() ? "nothing" : json_for_message(*role)));
      if (content == m.end() || !content->is_string())
        throw_bad_input(mk + ".content'",
                        "expected a string, found " + (content == m.end() ? "nothing" : json_for_message(*content)));
      const std::string& r = role->get_ref<const std::string&>();
      if (r != "user" && r != "assistant" && r != "system")
        throw_bad_input(mk + ".role'", "unknown role " + quote_for_message(r) + " (system, user, assistant)");
      roles.push_back(r);
      contents.push_back(content->get<std::string>());
    }
    // A system prompt only first; at least one user message; rendered as the conversation it is
    // (the last assistant reply, if any, is the continuation scored like any text).
    for (size_t i = 1; i < roles.size(); ++i)
      if (roles[i] == "system")
        throw_bad_input(where + ": key 'messages[" + std::to_string(i) + "].role'", "a system message comes first only");
    if (std::find(roles.begin(), roles.end(), "user") == roles.end()) throw_bad_input(key, "no user message");
    std::vector<ChatMessage> chat;
    for (size_t i = 0; i < roles.size(); ++i) chat.push_back({roles[i], contents[i]});
    return indexcache::render_chat(chat, *o_.chat, /*generation_prompt=*/false);
  }

  void load_jsonl(DataFile& d, std::string_view text) {
    int lineno = 0;
    for (size_t pos = 0; pos < text.size();) {
      size_t nl = text.find('\n', pos);
      if (nl == std::string_view::npos) nl = text.size();
      const std::string_view line = text.substr(pos, nl - pos);
      pos = nl + 1;
      ++lineno;
      if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
      const std::string where = path_ + ":" + std::to_string(lineno);
      const json j = parse_json_input(line, where);
      if (!j.is_object()) throw_bad_input(where, "expected a JSON object, found " + json_for_message(j));
      auto str = [&](const char* key) -> std::string {
        const auto it = j.find(key);
        if (it == j.end() || !it->is_string())
          throw_bad_input(where + ": key '" + key + "'",
                          "expected a string, found " + (it == j.end() ? "nothing" : json_for_message(*it)));
        return it->get<std::string>();
      };
      if (j.contains("prompt") || j.contains("prompt_ids")) {
        if (o_.max_items > 0 && static_cast<int>(d.items.size()) >= o_.max_items) continue;
        RetrievalItem it;
        it.line = lineno;
        if (j.contains("task")) it.task = str("task");
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
      } else if (j.contains("messages")) {
        auto ids = encode(render_chat(j["messages"], where), where + ": key 'messages'");
        check_ids(ids, where + ": key 'messages'");
        add_stream(d, ids);
      } else {
        throw_bad_input(where, "expected {\"text\": ...}, {\"ids\": [...]}, {\"messages\": [...]} or "
                               "{\"prompt\": ..., \"answer\": ...}");
      }
    }
  }

  // Whitespace-separated ids; an error names the file, the line and the token.
  std::vector<int32_t> parse_ids(std::string_view text) {
    std::vector<int32_t> ids;
    const int64_t hi = o_.vocab_size > 0 ? o_.vocab_size - 1 : INT32_MAX;
    int line = 1;
    for (size_t p = 0; p < text.size();) {
      const char c = text[p];
      if (c == '\n') ++line;
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
        ++p;
        continue;
      }
      size_t e = p;
      while (e < text.size() && !std::strchr(" \t\n\r\f\v", text[e])) ++e;
      const std::string_view tok = text.substr(p, e - p);
      p = e;
      const std::string where = path_ + ":" + std::to_string(line);
      int64_t v = 0;
      const auto [end, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), v);
      const bool digits = tok.find_first_not_of("0123456789") == std::string_view::npos ||
                          (tok[0] == '-' && tok.size() > 1 && tok.find_first_not_of("0123456789", 1) == std::string_view::npos);
      if (!digits || (ec != std::errc() && ec != std::errc::result_out_of_range) || end != tok.data() + tok.size())
        throw_bad_input(where, "token " + token_for_message(tok) + " is not a token id (a non-negative integer)");
      if (tok[0] == '-') throw_bad_input(where, "token " + token_for_message(tok) + " is negative, not a token id");
      if (ec == std::errc::result_out_of_range || v > hi) {
        if (o_.vocab_size > 0)
          throw_bad_input(where, "token id " + token_for_message(tok) + " is outside the model's vocabulary [0, " +
                                     std::to_string(o_.vocab_size) + ")");
        throw_bad_input(where, "token id " + token_for_message(tok) + " is too large (at most " + std::to_string(hi) + ")");
      }
      ids.push_back(static_cast<int32_t>(v));
    }
    return ids;
  }

  DataFile load(std::string_view text) {
    if (o_.ctx < 2) throw_bad_input("--ctx", "must be at least 2 tokens");
    DataFile d;
    d.path = path_;
    d.name = fs::path(path_).filename().string();
    const bool jsonl = ends_with(path_, ".jsonl"), ids = ends_with(path_, ".ids"), txt = ends_with(path_, ".txt");
    if (ids)
      add_stream(d, parse_ids(text));
    else if (txt) {
      auto t = encode(std::string(text), path_);
      check_ids(t, path_);
      add_stream(d, t);
    } else if (jsonl) {
      load_jsonl(d, text);
    } else {
      throw_bad_input(path_, "unknown data file kind (expected .txt, .jsonl or .ids)");
    }
    if (d.windows.empty() && d.items.empty()) {
      if (text.find_first_not_of(" \t\r\n") == std::string_view::npos) throw_bad_input(path_, "empty data file");
      throw_bad_input(path_, "no data: no window of at least 2 tokens and no retrieval item");
    }
    return d;
  }

  DataFile load() {
    if (!ends_with(path_, ".jsonl") && !ends_with(path_, ".ids") && !ends_with(path_, ".txt"))
      throw_bad_input(path_, "unknown data file kind (expected .txt, .jsonl or .ids)");
    return load(read_whole(path_));
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

DataFile load_data_text(std::string_view text, const std::string& path, const Tokenizer* tokenizer,
                        const DataOptions& options) {
  return Loader(path, tokenizer, options).load(text);
}

std::vector<DataFile> load_data_files(const std::vector<std::string>& paths, const Tokenizer* tokenizer,
                                      const DataOptions& options) {
  std::vector<DataFile> out;
  for (const auto& p : paths) out.push_back(load_data_file(p, tokenizer, options));
  return out;
}

ChatFormat chat_format_for(Family family) {
  // As `generate --chat` chooses (tools/indexcache/cmd_generate.cpp).
  return family == Family::kGlmMoeDsa ? ChatFormat::glm() : ChatFormat::deepseek_v3();
}

namespace {
bool is_default_file(const std::string& name, DataUse use) {
  const auto starts = [&](const char* prefix) { return name.rfind(prefix, 0) == 0; };
  switch (use) {
    case DataUse::kEval:
      return (starts("heldout") && ends_with(name, ".txt")) || (starts("retrieval") && ends_with(name, ".jsonl"));
    case DataUse::kCalibration:
      return starts("calibration") && ends_with(name, ".txt");
    case DataUse::kDistill:
      return starts("distill") && ends_with(name, ".txt");
  }
  return false;
}
}  // namespace

std::vector<std::string> default_data_files(const std::string& data_dir, DataUse use) {
  std::vector<std::string> out;
  std::error_code ec;
  if (fs::is_directory(data_dir, ec)) {
    for (const auto& e : fs::directory_iterator(data_dir, ec)) {
      if (!e.is_regular_file()) continue;
      const std::string name = e.path().filename().string();
      if (is_default_file(name, use)) out.push_back(e.path().string());
    }
  }
  std::sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) {
    // heldout before retrieval; retrieval sets by length (1k, 2k, 4k: same digit count sorts right)
    const bool ra = a.find("retrieval") != std::string::npos, rb = b.find("retrieval") != std::string::npos;
    if (ra != rb) return rb;
    if (a.size() != b.size()) return a.size() < b.size();
    return a < b;
  });
  // No distillation set: the calibration text.
  if (out.empty() && use == DataUse::kDistill) return default_data_files(data_dir, DataUse::kCalibration);
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
  DataOptions o = options;
  if (need_tok && fs::exists(tok_path, ec)) {
    tok = Tokenizer::load(tok_path);
    if (!o.chat) o.chat = chat_format_for(load_model_spec(model_dir).family);
  }
  return load_data_files(paths, tok ? &*tok : nullptr, o);
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
