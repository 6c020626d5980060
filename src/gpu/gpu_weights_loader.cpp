// Checkpoint -> GPU weights (see gpu_weights.h). Tensor names, shapes and the kv_b split follow
// src/model/weights.cpp (the CPU loader); here every tensor is converted to bf16 on the host in
// bounded pieces and copied straight to its place on the device.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/cuda_check.cuh"
#include "gpu/gpu_weights.h"
#include "indexcache/dtype.h"
#include "indexcache/error.h"
#include "indexcache/weight_store.h"

namespace indexcache::gpu {

namespace {

constexpr size_t kPiece = size_t{1} << 22;  // elements converted per host round trip

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

class Uploader {
 public:
  explicit Uploader(const std::string& dir) : dir_(dir), store_(WeightStore::open_dir(dir)) {}

  bool has(const std::string& name) const { return store_.has(name); }

  // The tensor's entry after checking presence, shape and dtype.
  WeightStore::Entry entry(const std::string& name, const std::vector<int64_t>& shape) const {
    const WeightStore::Entry e = store_.find(name);
    if (!e.info) throw_bad_input(dir_ + ": tensor '" + name + "'", "missing from the checkpoint");
    const std::string what = e.file->path() + ": tensor '" + name + "'";
    if (e.info->shape != shape)
      throw_bad_input(what, "shape " + shape_str(e.info->shape) + " disagrees with config.json (expected " +
                                shape_str(shape) + ")");
    switch (e.info->dtype) {
      case DType::kF32:
      case DType::kBF16:
      case DType::kF16:
        break;
      case DType::kF8E4M3:
        throw_bad_input(what, "FP8 (F8_E4M3) weights are not supported yet; use a bf16 checkpoint");
      default:
        throw_bad_input(what, "dtype " + std::string(dtype_name(e.info->dtype)) +
                                  " is not a weight type (F32, BF16 or F16)");
    }
    return e;
  }

  // The whole tensor as f32 on the host.
  std::vector<float> f32(const std::string& name, const std::vector<int64_t>& shape) const {
    const WeightStore::Entry e = entry(name, shape);
    std::vector<float> v(static_cast<size_t>(e.info->numel()));
    convert_to_f32(e.info->dtype, e.file->data(*e.info), v.size(), v.data());
    return v;
  }

  // The tensor converted to bf16 into device memory at `dst`.
  void bf16(const std::string& name, const std::vector<int64_t>& shape, void* dst) {
    const WeightStore::Entry e = entry(name, shape);
    const size_t n = static_cast<size_t>(e.info->numel()), es = dtype_size(e.info->dtype);
    const std::byte* src = e.file->data(*e.info);
    tmp_.resize(std::min(n, kPiece));
    half_.resize(tmp_.size());
    for (size_t off = 0; off < n; off += kPiece) {
      const size_t cnt = std::min(kPiece, n - off);
      if (e.info->dtype == DType::kBF16) {
        std::memcpy(half_.data(), src + off * es, cnt * 2);  // exact: no round trip
      } else {
        convert_to_f32(e.info->dtype, src + off * es, cnt, tmp_.data());
        for (size_t i = 0; i < cnt; ++i) half_[i] = f32_to_bf16(tmp_[i]);
      }
      IC_CUDA_CHECK(cudaMemcpy(static_cast<uint16_t*>(dst) + off, half_.data(), cnt * 2, cudaMemcpyHostToDevice));
    }
  }

  static void upload_bf16(const std::vector<float>& v, void* dst) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_bf16(v[i]);
    IC_CUDA_CHECK(cudaMemcpy(dst, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  }

 private:
  std::string dir_;
  WeightStore store_;
  std::vector<float> tmp_;
  std::vector<uint16_t> half_;
};

// gate_proj [inter, H] and up_proj [inter, H] stacked into gate_up [2*inter, H]; down [H, inter].
void load_mlp(Uploader& u, const std::string& prefix, int64_t H, int64_t inter, void* gate_up, void* down) {
  u.bf16(prefix + "gate_proj.weight", {inter, H}, gate_up);
  u.bf16(prefix + "up_proj.weight", {inter, H}, static_cast<uint16_t*>(gate_up) + inter * H);
  u.bf16(prefix + "down_proj.weight", {H, inter}, down);
}

void load_layer(Uploader& u, const ModelSpec& s, int i, GpuLayerWeights& L) {
  const std::string p = "model.layers." + std::to_string(i) + ".";
  const std::string a = p + "self_attn.";
  const int64_t H = s.hidden_size, nh = s.num_heads, qlr = s.q_lora_rank, kvlr = s.kv_lora_rank;
  const int64_t rd = s.qk_rope_head_dim, nope = s.qk_nope_head_dim, vd = s.v_head_dim;
  u.bf16(p + "input_layernorm.weight", {H}, L.in_norm);
  u.bf16(p + "post_attention_layernorm.weight", {H}, L.post_norm);
  u.bf16(a + "q_a_proj.weight", {qlr, H}, L.q_a);
  u.bf16(a + "q_a_layernorm.weight", {qlr}, L.q_a_norm);
  u.bf16(a + "q_b_proj.weight", {nh * (nope + rd), qlr}, L.q_b);
  u.bf16(a + "kv_a_proj_with_mqa.weight", {kvlr + rd, H}, L.kv_a);
  u.bf16(a + "kv_a_layernorm.weight", {kvlr}, L.kv_a_norm);
  u.bf16(a + "o_proj.weight", {H, nh * vd}, L.o);
  // kv_b [nh * (nope + vd), kvlr]: per head `nope` key rows then `vd` value rows.
  const std::vector<float> kv_b = u.f32(a + "kv_b_proj.weight", {nh * (nope + vd), kvlr});
  std::vector<float> uk(static_cast<size_t>(nh * kvlr * nope)), uv(static_cast<size_t>(nh * vd * kvlr));
  for (int64_t h = 0; h < nh; ++h) {
    for (int64_t j = 0; j < nope; ++j)
      for (int64_t c = 0; c < kvlr; ++c) uk[(h * kvlr + c) * nope + j] = kv_b[(h * (nope + vd) + j) * kvlr + c];
    for (int64_t j = 0; j < vd; ++j)
      for (int64_t c = 0; c < kvlr; ++c) uv[(h * vd + j) * kvlr + c] = kv_b[(h * (nope + vd) + nope + j) * kvlr + c];
  }
  Uploader::upload_bf16(uk, L.w_uk);
  Uploader::upload_bf16(uv, L.w_uv);

  const std::string ix = a + "indexer.";
  const int64_t hi = s.index_n_heads, di = s.index_head_dim;
  L.has_indexer = u.has(ix + "wq_b.weight");
  if (L.has_indexer) {
    u.bf16(ix + "wq_b.weight", {hi * di, qlr}, L.wq_b);
    u.bf16(ix + "wk.weight", {di, H}, L.wk);
    u.bf16(ix + "k_norm.weight", {di}, L.k_norm_w);
    u.bf16(ix + "k_norm.bias", {di}, L.k_norm_b);
    u.bf16(ix + "weights_proj.weight", {hi, H}, L.wproj);
  }

  const std::string m = p + "mlp.";
  if (!L.moe) {
    load_mlp(u, m, H, s.intermediate_size, L.gate_up, L.down);
    return;
  }
  const int64_t E = s.n_routed_experts, I = s.moe_intermediate_size;
  u.bf16(m + "gate.weight", {E, H}, L.router);
  const std::vector<float> bias = u.f32(m + "gate.e_score_correction_bias", {E});
  IC_CUDA_CHECK(cudaMemcpy(L.router_bias, bias.data(), bias.size() * 4, cudaMemcpyHostToDevice));
  if (u.has(m + "experts.gate_up_proj")) {  // packed: [E, 2I, H] (gate rows first) and [E, H, I]
    u.bf16(m + "experts.gate_up_proj", {E, 2 * I, H}, L.e_gate_up);
    u.bf16(m + "experts.down_proj", {E, H, I}, L.e_down);
  } else {
    for (int64_t e = 0; e < E; ++e)
      load_mlp(u, m + "experts." + std::to_string(e) + ".", H, I,
               static_cast<uint16_t*>(L.e_gate_up) + e * 2 * I * H, static_cast<uint16_t*>(L.e_down) + e * H * I);
  }
  if (s.n_shared_experts > 0)
    load_mlp(u, m + "shared_experts.", H, I * s.n_shared_experts, L.s_gate_up, L.s_down);
}

}  // namespace

void load_checkpoint_weights(const std::string& dir, const ModelSpec& s, GpuWeights& w) {
  if (s.attention_bias)
    throw_bad_input(dir + "/config.json: attention_bias", "the GPU model does not support attention biases yet");
  if (static_cast<int>(w.layers.size()) != s.num_layers)
    throw_runtime("load_checkpoint_weights", "weights laid out for a different number of layers");
  Uploader u(dir);
  const int64_t V = s.vocab_size, H = s.hidden_size;
  u.bf16("model.embed_tokens.weight", {V, H}, w.embed);
  u.bf16("model.norm.weight", {H}, w.final_norm);
  if (!s.tie_word_embeddings) u.bf16("lm_head.weight", {V, H}, w.lm_head);
  for (int i = 0; i < s.num_layers; ++i) load_layer(u, s, i, w.layers[i]);
  IC_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace indexcache::gpu
