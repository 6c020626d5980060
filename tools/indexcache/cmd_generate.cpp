// `indexcache generate`: tokenizes a prompt, prefills it (optionally in chunks), decodes new
// tokens while streaming the text, and reports prefill and decode tokens per second.
#include <fmt/core.h>

#include <filesystem>
#include <fstream>
#include <optional>

#include "commands.h"
#include "flags.h"
#include "indexcache/dataset.h"
#include "indexcache/error.h"
#include "indexcache/generate.h"
#include "indexcache/model.h"
#include "indexcache/session.h"
#include "indexcache/tokenizer.h"

namespace indexcache::cli {

namespace {

struct GenerateFlags {
  DeviceFlags device;
  std::string model, prompt, ids, plan;
  int n = 64;
  int chunk = 0;
  float temp = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  bool chat = false;
};

// Prints generated text as it comes: the ids since the last print are decoded together and held
// back while they end in a cut UTF-8 character (byte-level BPE splits characters across tokens).
// Each id is decoded about once, so streaming stays linear in the output length.
class TextStream {
 public:
  explicit TextStream(const Tokenizer& tok) : tok_(tok) {}
  void push(int32_t id) {
    pending_.push_back(id);
    const std::string text = tok_.decode(pending_);
    static const std::string kReplacement = "\xEF\xBF\xBD";
    if (text.size() >= 3 && text.compare(text.size() - 3, 3, kReplacement) == 0) return;
    print(text);
  }
  void finish() {
    if (!pending_.empty()) print(tok_.decode(pending_));
  }

 private:
  void print(const std::string& text) {
    fmt::print("{}", text);
    std::fflush(stdout);
    pending_.clear();
  }
  const Tokenizer& tok_;
  std::vector<int32_t> pending_;
};

int run_generate(const GenerateFlags& f) {
  const std::string dir = resolve_model_dir(f.model);
  if (f.prompt.empty() == f.ids.empty()) throw_bad_input("-p", "give a non-empty prompt with -p, or token ids with --ids");
  const ModelSpec spec = load_model_spec(dir);
  const std::string tok_path = dir + "/tokenizer.json";
  std::optional<Tokenizer> tok;
  if (!f.prompt.empty() || std::filesystem::exists(tok_path)) {
    if (!std::filesystem::exists(tok_path)) throw_bad_input(tok_path, "missing: the model has no tokenizer (use --ids)");
    tok = Tokenizer::load(tok_path);
  }
  std::vector<int32_t> prompt;
  if (!f.prompt.empty()) {
    const std::string text =
        f.chat ? wrap_chat(f.prompt, chat_format_for(spec.family)) : f.prompt;
    prompt = tok->encode(text);
  } else {
    prompt = read_token_ids(f.ids);
  }
  if (prompt.empty()) throw_bad_input("-p", "the prompt has no tokens");
  if (static_cast<int64_t>(prompt.size()) > spec.max_position_embeddings)
    throw_bad_input("-p", "prompt of " + std::to_string(prompt.size()) + " tokens is longer than max_position_embeddings " +
                              std::to_string(spec.max_position_embeddings));
  if (f.n < 0) throw_bad_input("-n", "must be >= 0");
  if (f.chunk < 0) throw_bad_input("--chunk", "must be >= 0");
  const IndexPlan plan = resolve_plan(f.plan, spec, dir);

  auto model = Model::load(dir, LoadOptions::for_plan(plan));
  auto backend = open_backend(f.device, *model);
  Session session(*model, plan, *backend);

  GenerateOptions go;
  go.max_new_tokens = std::min<int64_t>(f.n, spec.max_position_embeddings - static_cast<int64_t>(prompt.size()));
  go.chunk = f.chunk;
  go.sampler = {.temperature = f.temp, .top_k = f.top_k, .top_p = f.top_p, .seed = f.seed};
  go.eos_ids = load_eos_ids(dir, spec);
  std::optional<TextStream> stream;
  if (tok && f.ids.empty()) stream.emplace(*tok);
  int produced = 0;
  const GenerateStats st = generate(session, prompt, go, [&](int32_t id) {
    ++produced;
    if (stream)
      stream->push(id);
    else
      fmt::print("{}{}", produced > 1 ? " " : "", id);  // token-id mode: ids, space-separated
    std::fflush(stdout);
    return true;
  });
  if (stream) stream->finish();
  fmt::print("\n");
  std::fflush(stdout);
  fmt::print(stderr, "plan {} | prefill {} tokens in {:.3f} s: {:.1f} tok/s | decode {} tokens in {:.3f} s: {:.1f} tok/s{}\n",
             plan.pattern(), st.prompt_tokens, st.prefill_seconds, st.prefill_tokens_per_second(),
             std::max(0, st.new_tokens - 1), st.decode_seconds, st.decode_tokens_per_second(),
             st.stopped_at_eos ? " | stopped at EOS" : "");
  return 0;
}

}  // namespace

Runner register_generate(CLI::App& app) {
  auto f = std::make_shared<GenerateFlags>();
  app.add_option("-m,--model", f->model, "model directory (default: the embedded model)");
  add_device_flags(app, f->device);
  app.add_option("-p,--prompt", f->prompt, "prompt text (UTF-8)");
  app.add_option("--ids", f->ids, "prompt as a file of token ids (prints generated ids)");
  app.add_option("-n", f->n, "tokens to generate (default 64)")->check(integer_in(0, kMaxTokensFlag));
  app.add_option("--plan", f->plan, "full, 1/N, an F/S string, or a config/report JSON")->check(non_empty());
  app.add_option("--chunk", f->chunk, "prefill chunk size in tokens (0: whole prompt)")
      ->check(integer_in(0, kMaxTokensFlag));
  app.add_option("--temp", f->temp, "sampling temperature (0: greedy)");
  app.add_option("--top-k", f->top_k, "keep the k most likely tokens (0: all)")
      ->check(integer_in(0, spec_limits::kMaxVocab));
  app.add_option("--top-p", f->top_p, "nucleus sampling mass (1: all)");
  app.add_option("--seed", f->seed, "random seed, in [0, 2^64 - 1]")->check(seed_value());
  app.add_flag("--chat", f->chat, "wrap the prompt in the family's chat format");
  return [f] { return run_generate(*f); };
}

}  // namespace indexcache::cli
