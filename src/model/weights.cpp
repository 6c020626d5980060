#include "model/weights.h"

#include <cstdint>
#include <string>

#include "indexcache/error.h"

namespace indexcache {

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

class Loader {
 public:
  Loader(ModelWeights& w, const std::string& dir) : w_(w), dir_(dir) {}

  // Returns the tensor as f32 with the expected shape, or throws naming the file and tensor.
  const float* get(const std::string& name, const std::vector<int64_t>& shape) {
    const float* p = find(name, shape);
    if (!p) throw_bad_input(dir_ + ": tensor '" + name + "'", "missing from the checkpoint");
    return p;
  }

  // As get(), but nullptr when the tensor is absent.
  const float* find(const std::string& name, const std::vector<int64_t>& shape) {
    auto e = w_.store.find(name);
    if (!e.info) return nullptr;
    const std::string what = e.file->path() + ": tensor '" + name + "'";
    if (e.info->shape != shape)
      throw_bad_input(what, "shape " + shape_str(e.info->shape) + " disagrees with config.json (expected " +
                                shape_str(shape) + ")");
    return as_f32(*e.info, *e.file, what);
  }

  bool has(const std::string& name) const { return w_.store.has(name); }

  // From kv_b [heads*(nope+v), kvlr]: each head's nope key rows transposed, [heads, kvlr, nope].
  const float* transposed_key_rows(const float* kv_b, int64_t heads, int64_t nope, int64_t v, int64_t kvlr) {
    auto& buf = w_.owned.emplace_back(static_cast<size_t>(heads * kvlr * nope));
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < nope; ++i)
        for (int64_t c = 0; c < kvlr; ++c)
          buf[(h * kvlr + c) * nope + i] = kv_b[(h * (nope + v) + i) * kvlr + c];
    return buf.data();
  }

 private:
  const float* as_f32(const TensorInfo& t, const SafetensorsFile& f, const std::string& what) {
    const std::byte* src = f.data(t);
    const size_t n = static_cast<size_t>(t.numel());
    switch (t.dtype) {
      case DType::kF32:
        if (reinterpret_cast<uintptr_t>(src) % alignof(float) == 0)
          return reinterpret_cast<const float*>(src);
        [[fallthrough]];
      case DType::kBF16:
      case DType::kF16: {
        auto& buf = w_.owned.emplace_back(n);
        convert_to_f32(t.dtype, src, n, buf.data());
        return buf.data();
      }
      case DType::kF8E4M3:
        throw_bad_input(what, "FP8 (F8_E4M3) weights are not supported yet; use a bf16 checkpoint");
      default:
        throw_bad_input(what, "dtype " + std::string(dtype_name(t.dtype)) +
                                  " is not a weight type (F32, BF16 or F16)");
    }
  }

  ModelWeights& w_;
  std::string dir_;
};

ExpertWeights load_mlp(Loader& L, const std::string& prefix, int64_t hidden, int64_t inter) {
  ExpertWeights e;
  e.gate = L.get(prefix + "gate_proj.weight", {inter, hidden});
  e.up = L.get(prefix + "up_proj.weight", {inter, hidden});
  e.down = L.get(prefix + "down_proj.weight", {hidden, inter});
  return e;
}

void load_experts(Loader& L, const ModelSpec& s, const std::string& p, LayerWeights& lw) {
  const int64_t E = s.n_routed_experts, H = s.hidden_size, I = s.moe_intermediate_size;
  lw.experts.resize(E);
  if (L.has(p + "experts.gate_up_proj")) {  // packed: [E, 2I, H] (gate rows first) and [E, H, I]
    const float* gu = L.get(p + "experts.gate_up_proj", {E, 2 * I, H});
    const float* dn = L.get(p + "experts.down_proj", {E, H, I});
    for (int64_t e = 0; e < E; ++e) {
      lw.experts[e].gate = gu + e * 2 * I * H;
      lw.experts[e].up = gu + e * 2 * I * H + I * H;
      lw.experts[e].down = dn + e * H * I;
    }
    return;
  }
  for (int64_t e = 0; e < E; ++e)
    lw.experts[e] = load_mlp(L, p + "experts." + std::to_string(e) + ".", H, I);
}

void load_layer(Loader& L, const ModelSpec& s, int i, bool load_indexer, bool require_indexer,
                LayerWeights& lw) {
  const std::string p = "model.layers." + std::to_string(i) + ".";
  const std::string a = p + "self_attn.";
  const int64_t H = s.hidden_size, nh = s.num_heads, qlr = s.q_lora_rank, kvlr = s.kv_lora_rank;
  const int64_t rope = s.qk_rope_head_dim;
  lw.input_norm = L.get(p + "input_layernorm.weight", {H});
  lw.post_attn_norm = L.get(p + "post_attention_layernorm.weight", {H});
  lw.q_a = L.get(a + "q_a_proj.weight", {qlr, H});
  lw.q_a_norm = L.get(a + "q_a_layernorm.weight", {qlr});
  lw.q_b = L.get(a + "q_b_proj.weight", {nh * s.qk_head_dim(), qlr});
  lw.kv_a = L.get(a + "kv_a_proj_with_mqa.weight", {kvlr + rope, H});
  lw.kv_a_norm = L.get(a + "kv_a_layernorm.weight", {kvlr});
  lw.kv_b = L.get(a + "kv_b_proj.weight", {nh * (s.qk_nope_head_dim + s.v_head_dim), kvlr});
  lw.o = L.get(a + "o_proj.weight", {H, nh * s.v_head_dim});
  lw.uk_t = L.transposed_key_rows(lw.kv_b, nh, s.qk_nope_head_dim, s.v_head_dim, kvlr);
  if (s.attention_bias) {
    lw.q_a_bias = L.get(a + "q_a_proj.bias", {qlr});
    lw.kv_a_bias = L.get(a + "kv_a_proj_with_mqa.bias", {kvlr + rope});
    lw.o_bias = L.get(a + "o_proj.bias", {H});
  }
  const std::string ix = a + "indexer.";
  const int64_t hi = s.index_n_heads, di = s.index_head_dim;
  if (require_indexer || (load_indexer && L.has(ix + "wq_b.weight"))) {
    lw.indexer.wq_b = L.get(ix + "wq_b.weight", {hi * di, qlr});
    lw.indexer.wk = L.get(ix + "wk.weight", {di, H});
    lw.indexer.k_norm_w = L.get(ix + "k_norm.weight", {di});
    lw.indexer.k_norm_b = L.get(ix + "k_norm.bias", {di});
    lw.indexer.weights_proj = L.get(ix + "weights_proj.weight", {hi, H});
    lw.has_indexer = true;
  }
  const std::string m = p + "mlp.";
  lw.moe = s.layer_is_moe[i];
  if (!lw.moe) {
    lw.dense = load_mlp(L, m, H, s.intermediate_size);
    return;
  }
  lw.router = L.get(m + "gate.weight", {s.n_routed_experts, H});
  lw.router_bias = L.get(m + "gate.e_score_correction_bias", {s.n_routed_experts});
  load_experts(L, s, m, lw);
  if (s.n_shared_experts > 0) {
    lw.shared = load_mlp(L, m + "shared_experts.", H,
                         static_cast<int64_t>(s.moe_intermediate_size) * s.n_shared_experts);
    lw.has_shared = true;
  }
}

}  // namespace

std::unique_ptr<ModelWeights> load_weights(const std::string& dir, const ModelSpec& s,
                                           const std::vector<bool>& require_indexer,
                                           bool only_required_indexers) {
  auto w = std::make_unique<ModelWeights>();
  w->store = WeightStore::open_dir(dir);
  Loader L(*w, dir);
  const int64_t V = s.vocab_size, H = s.hidden_size;
  w->embed = L.get("model.embed_tokens.weight", {V, H});
  w->final_norm = L.get("model.norm.weight", {H});
  w->lm_head = s.tie_word_embeddings ? w->embed : L.get("lm_head.weight", {V, H});
  w->layers.resize(s.num_layers);
  for (int i = 0; i < s.num_layers; ++i) {
    const bool req = require_indexer[i];
    load_layer(L, s, i, req || !only_required_indexers, req, w->layers[i]);
  }
  return w;
}

}  // namespace indexcache
