// ModelSpec: every config.json field that changes the math of a DSA model, read from a Hugging
// Face config of model_type `glm_moe_dsa` or `deepseek_v32`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace indexcache {

enum class Family { kGlmMoeDsa, kDeepseekV32 };
std::string family_name(Family f);

// How the indexer lays out its rotary pairs: GLM interleaves (x0,x1),(x2,x3)...; DeepSeek-V3.2
// pairs x_i with x_{i+r/2} (NeoX half-split). The main MLA rope is interleaved in both.
enum class RopeLayout { kInterleaved, kHalfSplit };

enum class RopeType { kDefault, kYarn };

struct RopeSpec {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  // YaRN only:
  double factor = 1.0;
  double original_max_position = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> mscale;
  std::optional<double> mscale_all_dim;
  std::optional<double> attention_factor;  // explicit override of the cos/sin scale
  bool truncate = true;
};

// IndexCache keys as found in the config (resolved into an IndexPlan by plan/).
struct PlanKeys {
  std::optional<std::vector<std::string>> indexer_types;  // "full" / "shared" per layer
  std::optional<std::string> index_topk_pattern;          // "FSSF..."
  std::optional<int> index_topk_freq;
  std::optional<int> index_skip_topk_offset;
};

// Block-FP8 weights (quantization_config with quant_method "fp8", fmt "e4m3"): a tensor stored
// as F8_E4M3 has an F32 `<name>_scale_inv` grid beside it, one multiplier per block of
// block_rows x block_cols elements (edge blocks partial); other tensors are stored as they are.
struct QuantSpec {
  bool fp8 = false;
  int block_rows = 128, block_cols = 128;  // weight_block_size
  bool ue8m0 = false;                      // scale_fmt "ue8m0": every scale a power of two
};

// Sanity limits on the sizes config.json declares, far above every shipped DSA model (GLM-5: 78
// layers, hidden 6144, vocab 154880, 202752 positions; DeepSeek-V3.2: 61 layers, hidden 7168, 128
// heads, 256 experts, vocab 129280, 163840 positions) yet small enough that no single value makes
// an allocation that cannot be met or an int product that overflows. A value outside is bad input
// naming its key. Every tensor size is also checked against the checkpoint when the weights load.
namespace spec_limits {
inline constexpr int kMaxLayers = 1024;              // num_hidden_layers, first_k_dense_replace
inline constexpr int kMaxMtpLayers = 16;             // num_nextn_predict_layers
inline constexpr int kMaxHiddenSize = 1 << 17;       // hidden_size (131072)
inline constexpr int kMaxHeads = 1024;               // num_attention_heads, index_n_heads
inline constexpr int kMaxLoraRank = 1 << 16;         // q_lora_rank, kv_lora_rank
inline constexpr int kMaxHeadDim = 4096;             // qk_nope/qk_rope/v_head_dim, index_head_dim
inline constexpr int kMaxIntermediate = 1 << 18;     // intermediate_size, moe_intermediate_size
inline constexpr int kMaxExperts = 1 << 14;          // n_routed_experts, n_shared_experts, n_group...
inline constexpr int kMaxVocab = 1 << 22;            // vocab_size (4194304)
inline constexpr int kMaxPositions = 1 << 24;        // max_position_embeddings (16777216)
inline constexpr int kMaxIndexTopk = 1 << 16;        // index_topk (buffers are clamped by the context)
inline constexpr int64_t kMaxTokenId = INT32_MAX;    // eos_token_id, bos_token_id
// RoPE: theta in (1, kMaxRopeTheta]; YaRN factor in [1, kMaxRopeFactor]; mscale, mscale_all_dim in
// [0, kMaxMscale]; attention_factor in (0, kMaxMscale].
inline constexpr double kMaxRopeTheta = 1e15;
inline constexpr double kMaxRopeFactor = 1e4;
inline constexpr double kMaxMscale = 100;
}  // namespace spec_limits

struct ModelSpec {
  Family family = Family::kGlmMoeDsa;
  std::string model_type;
  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int q_lora_rank = 0;
  int kv_lora_rank = 0;
  int qk_nope_head_dim = 0;
  int qk_rope_head_dim = 0;
  int v_head_dim = 0;
  int intermediate_size = 0;      // dense MLP
  int moe_intermediate_size = 0;  // per routed expert
  int n_routed_experts = 0;
  int n_shared_experts = 0;
  int num_experts_per_tok = 0;
  int n_group = 1;
  int topk_group = 1;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
  std::vector<bool> layer_is_moe;  // per layer: MoE block (true) or dense MLP (false)
  double rms_norm_eps = 1e-6;
  int max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // bias on q_a_proj, kv_a_proj_with_mqa, o_proj
  int index_n_heads = 0;
  int index_head_dim = 0;
  int index_topk = 0;
  RopeSpec rope;
  PlanKeys plan_keys;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> bos_token_id;
  QuantSpec quant;
  // Multi-token-prediction layers stored after the num_layers main ones (num_nextn_predict_layers):
  // recognised, never run, never part of a plan.
  int num_mtp_layers = 0;

  int qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  RopeLayout indexer_rope_layout() const {
    return family == Family::kGlmMoeDsa ? RopeLayout::kInterleaved : RopeLayout::kHalfSplit;
  }
  // Softmax scale of the main attention: qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)^2
  // under YaRN when mscale_all_dim is set.
  double attention_scale() const;
  // Scale applied to RoPE cos/sin (YaRN attention factor; 1 for default RoPE).
  double rope_attention_factor() const;
};

// Parses config.json text. `source` names the file in errors. Throws Error(kBadInput) for invalid
// or too deeply nested JSON, an unknown model_type, a missing or mistyped key, a size outside
// spec_limits, inconsistent dims, RoPE parameters that would not give finite tables, or a config
// without `q_lora_rank`.
ModelSpec parse_model_spec(const std::string& json_text, const std::string& source);
// Reads `dir`/config.json.
ModelSpec load_model_spec(const std::string& dir);
// End-of-sequence ids: config.json's eos_token_id plus generation_config.json's (if present).
std::vector<int64_t> load_eos_ids(const std::string& dir, const ModelSpec& spec);

}  // namespace indexcache
