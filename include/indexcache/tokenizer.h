// Tokenizer: Hugging Face `tokenizer.json` files of the byte-level BPE kind (GLM-4/GLM-5
// `glm_moe_dsa`, DeepSeek-V3 / V3.2 `deepseek_v32`, and tokenizers trained the same way with HF
// `tokenizers`). Encoding and decoding give the ids and text HF `tokenizers` gives for the same
// file (checked against goldens it produced: tests/data/tokenizer/cases.jsonl).
//
// What a file may contain (anything else is refused at load with an error naming the key):
//   normalizer     null, or a "Sequence" of none
//   pre_tokenizer  null, "Split" (pattern Regex or String; behavior Removed, Isolated,
//                  MergedWithPrevious, MergedWithNext, Contiguous; invert), "ByteLevel"
//                  (add_prefix_space, use_regex = the GPT-2 pattern), "Digits"
//                  (individual_digits), or a "Sequence" of these
//   model          "BPE": vocab, merges ("a b" strings or [a, b] pairs), ignore_merges, unk_token,
//                  fuse_unk; byte_fallback, dropout, continuing_subword_prefix and
//                  end_of_word_suffix must be off
//   added_tokens   special or not; matched in the text before pre-tokenization, leftmost then
//                  longest, honouring single_word, lstrip, rstrip and normalized
//   post_processor null, "ByteLevel", "TemplateProcessing", "BertProcessing",
//                  "RobertaProcessing", or a "Sequence" of these (used by add_special only)
//   decoder        null (tokens joined by spaces) or "ByteLevel"; "Sequence" of those
// Regex patterns are written in the Oniguruma dialect HF uses; they run on PCRE2 after a small
// translation of the escapes whose meaning differs (\s, \w, \h and their negations).
//
// Thread safety: a loaded Tokenizer is immutable apart from an internal, locked word cache;
// encode() and decode() may be called from several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace indexcache {

// A chat's framing: the markers before each role's message. The special tokens in them (e.g.
// "[gMASK]", "<|user|>") are recognised by encode() like any added token in the text. This is no
// Jinja engine: the families' templates reduced to their turn markers (system prompt, history and
// the assistant's replies included; no tools, no thinking markup). Plain completion (no wrapping
// at all) is the default everywhere; wrap only when asked.
struct ChatFormat {
  std::string begin;          // once, before the first message
  std::string system;         // before a system message
  std::string user;           // before a user message
  std::string assistant;      // before an assistant message, and the generation prompt
  std::string end_assistant;  // after an assistant message

  // GLM-4.x / GLM-5 (`glm_moe_dsa`): "[gMASK]<sop>", then "<|system|>\n", "<|user|>\n",
  // "<|assistant|>\n" before each message. Some versions' templates add thinking markup after
  // "<|assistant|>" ("<think>" or "<think></think>\n"); append it to `assistant` if yours does.
  static ChatFormat glm();
  // DeepSeek-V3 / V3.2 (`deepseek_v32`): "<｜begin▁of▁sentence｜>", the system prompt as it is,
  // "<｜User｜>" before a user message, "<｜Assistant｜>" before a reply and
  // "<｜end▁of▁sentence｜>" after it (fullwidth bars U+FF5C, U+2581). V3.2's template appends
  // "</think>" (non-thinking) or "<think>" (thinking) to the assistant marker.
  static ChatFormat deepseek_v3();
};

// One message of a chat: role "system", "user" or "assistant".
struct ChatMessage {
  std::string_view role;
  std::string_view content;
};

// begin + user + user_prompt + assistant: one user turn, ready for the reply.
std::string wrap_chat(std::string_view user_prompt, const ChatFormat& format);
// begin, then each message after its role's marker (an assistant message then end_assistant), then
// the assistant marker when `generation_prompt`. A role other than the three is a bad input.
std::string render_chat(std::span<const ChatMessage> messages, const ChatFormat& format, bool generation_prompt);

class Tokenizer {
 public:
  // Reads and validates a tokenizer.json. Errors (kBadInput) name the file and the key:
  // "<path>: key 'model.merges'": "entry 12 refers to unknown token 'xy'".
  static Tokenizer load(const std::string& path_to_tokenizer_json);
  // The same from JSON text already in memory; `source` names it in errors.
  static Tokenizer from_json(std::string_view json_text, const std::string& source);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Token ids of `text` (UTF-8; invalid UTF-8 throws kBadInput "prompt: invalid UTF-8 at byte
  // N"). Added tokens written in the text (e.g. "<|user|>") become their ids. add_special wraps
  // the result the way the file's post_processor does (e.g. TemplateProcessing's BOS); with no
  // post_processor it adds nothing.
  std::vector<int32_t> encode(std::string_view text, bool add_special = false) const;

  // Text of `ids`. Ids with no token are skipped (as HF does; a model's embedding table may be
  // padded past the tokenizer's vocabulary). skip_special drops the added tokens marked special.
  // Byte sequences that are not valid UTF-8 (e.g. a cut multi-byte character) come out as
  // U+FFFD, one per maximal invalid subpart, like Rust's String::from_utf8_lossy.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  // One more than the highest id of any token (vocab or added): the id space's size.
  int vocab_size() const;
  // Id of a token by its exact text in the vocabulary (byte-level form, e.g. "Ġthe") or of an
  // added token ("<|user|>").
  std::optional<int32_t> token_id(std::string_view token) const;
  // The token's text as stored in the file (byte-level form for BPE tokens).
  std::optional<std::string> token_text(int32_t id) const;
  // True for added tokens marked special.
  bool is_special(int32_t id) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace indexcache
