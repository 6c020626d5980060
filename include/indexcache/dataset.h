// Evaluation and calibration data: the files `--data` names, loaded into token-id windows (for LM
// loss, calibration and overlap) and retrieval items (for accuracy).
//
// File kinds, by extension:
//   .txt    plain UTF-8 text: tokenized as one stream (no special tokens added; "<|endoftext|>"
//           written in the text becomes its id), cut into non-overlapping windows of `ctx` tokens.
//   .ids    whitespace-separated token ids: one stream, cut into windows (no tokenizer needed).
//   .jsonl  one JSON object per line (blank lines skipped), each one of:
//             {"text": "..."}                      a document: tokenized, cut into its own windows
//             {"ids": [1, 2, ...]}                 the same, already tokenized
//             {"prompt": "...", "answer": "..."}   a retrieval item (prompt tokenized; answer
//                                                  tokenized unless "answer_ids" is given)
//             {"prompt_ids": [...], "answer_ids": [...]}   a retrieval item, already tokenized
//             {"messages": [{"role": "user", "content": "..."},
//                           {"role": "assistant", "content": "..."}]}
//                                                  a chat document: the user message wrapped in
//                                                  the model's chat format (wrap_chat, as
//                                                  `generate --chat`), the optional assistant
//                                                  reply after it; tokenized, cut into windows.
//                                                  One user turn only (the chat format has no
//                                                  system prompt or history).
//           Other keys ("context", ...) are ignored; "task", when given, must be a string (it
//           groups accuracy). Each line is parsed with the bounded JSON reader.
// Token ids must be below the model's vocab_size. Text needs a tokenizer; a text file given for a
// model without one is bad input naming the file. Errors name the file and, for .jsonl and .ids,
// the line ("data.ids:3: token 'x1' is not a token id"); bytes from the file are quoted
// (quote_for_message / json_for_message), never printed raw.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "indexcache/model_spec.h"
#include "indexcache/tokenizer.h"

namespace indexcache {

struct RetrievalItem {
  std::string task;    // "task" key, or "" when absent
  std::string answer;  // answer text ("" when only ids were given)
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> answer_ids;
  int line = 0;  // 1-based line in the file
};

struct DataFile {
  std::string path;
  std::string name;  // file name without directories, for tables
  std::vector<std::vector<int32_t>> windows;  // LM windows (each from position 0)
  int64_t stream_tokens = 0;                  // tokens read before windowing and limits
  std::vector<RetrievalItem> items;           // retrieval items
  int64_t window_tokens() const;              // tokens in `windows`
};

struct DataOptions {
  int ctx = 1024;         // window length in tokens (>= 2)
  int max_windows = 0;    // per file, 0: all
  int max_items = 0;      // retrieval items per file, 0: all
  int vocab_size = 0;     // ids must be below this (0: unchecked)
  std::optional<ChatFormat> chat = std::nullopt;  // for {"messages": ...} lines (unset: such lines are refused)
};

// The chat format of a model family: the one `generate --chat` uses.
ChatFormat chat_format_for(Family family);

// Loads one file. `tokenizer` may be null (then only .ids files and *_ids JSONL entries load).
// Errors (kBadInput) name the file and, for JSONL, the line: a missing or unreadable file, an
// unknown extension, invalid JSON, an entry of no known shape, an id out of range, a file that
// yields neither windows nor items.
DataFile load_data_file(const std::string& path, const Tokenizer* tokenizer, const DataOptions& options);
// The same from the file's contents already in memory (`path` gives the kind and names it).
DataFile load_data_text(std::string_view text, const std::string& path, const Tokenizer* tokenizer,
                        const DataOptions& options);
std::vector<DataFile> load_data_files(const std::vector<std::string>& paths, const Tokenizer* tokenizer,
                                      const DataOptions& options);

// What the default data is for.
enum class DataUse {
  kEval,         // held-out text (heldout*.txt) and the retrieval sets (retrieval*.jsonl)
  kCalibration,  // the calibration text (calibration*.txt)
  kDistill,      // the distillation text (distill*.txt: training documents), else the calibration text
};
// The files in `data_dir` for `use`, sorted by name. Throws kBadInput naming the directory when
// there are none (so the user knows to pass --data).
std::vector<std::string> default_data_files(const std::string& data_dir, DataUse use);
// The data directory that ships with the embedded model: <repo>/data for <repo>/models/default.
std::string embedded_data_dir(const std::string& embedded_model_dir);

// What the CLI commands load: `paths`, or when empty the default files of `use` in `default_dir`,
// tokenized with `model_dir`/tokenizer.json when the model has one (without it only token-id data
// loads), chat lines in the chat format of the model's family (unless options.chat is set), ids
// checked against `vocab_size`.
std::vector<DataFile> load_model_data(const std::string& model_dir, std::vector<std::string> paths, DataUse use,
                                      const std::string& default_dir, const DataOptions& options);
// The window length: `flag` when > 0 (kBadInput "--ctx" when above `max_positions`), else
// min(default_ctx, max_positions).
int resolve_ctx(int flag, int max_positions, int default_ctx);

// Concatenated windows of several files (e.g. the calibration batches).
std::vector<std::vector<int32_t>> all_windows(const std::vector<DataFile>& files);
// A stable fingerprint of a list of windows (FNV-1a over lengths and ids), hex: identifies the
// calibration data in a resumable search state.
std::string windows_fingerprint(const std::vector<std::vector<int32_t>>& windows);

}  // namespace indexcache
