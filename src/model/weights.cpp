#include "model/weights.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

#include "indexcache/dtype.h"
#include "indexcache/error.h"
#include "model/random_fill.h"

namespace indexcache {

namespace {

template <class T>
void transpose_key_rows(const T* kv_b, T* out, int64_t heads, int64_t nope, int64_t v, int64_t kvlr) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < nope; ++i)
      for (int64_t c = 0; c < kvlr; ++c) out[(h * kvlr + c) * nope + i] = kv_b[(h * (nope + v) + i) * kvlr + c];
}

// From kv_b [heads*(nope+v), kvlr]: each head's nope key rows transposed, [heads, kvlr, nope] in
// kv_b's dtype (an element moved as it is, so placing it gives what placing kv_b's rows would).
WeightRef transposed_key_rows(ModelWeights& w, WeightRef kv_b, int64_t heads, int64_t nope, int64_t v,
                              int64_t kvlr) {
  const size_t es = dtype_size(kv_b.dtype);
  auto& buf = w.owned.emplace_back(static_cast<size_t>(heads * kvlr * nope) * es);
  if (es == 2)
    transpose_key_rows(static_cast<const uint16_t*>(kv_b.data), buf.as<uint16_t>(), heads, nope, v, kvlr);
  else if (es == 4)
    transpose_key_rows(static_cast<const uint32_t*>(kv_b.data), buf.as<uint32_t>(), heads, nope, v, kvlr);
  else
    throw_bad_input("kv_b_proj", "dtype " + std::string(dtype_name(kv_b.dtype)) + " is not a weight type");
  return {buf.data.get(), kv_b.dtype};
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

class Loader {
 public:
  Loader(ModelWeights& w, const std::string& dir, const QuantSpec& quant) : w_(w), dir_(dir), quant_(quant) {}

  // Returns the tensor with the expected shape, or throws naming the file and tensor.
  WeightRef get(const std::string& name, const std::vector<int64_t>& shape) {
    const WeightRef p = find(name, shape);
    if (!p) throw_bad_input(dir_ + ": tensor '" + name + "'", "missing from the checkpoint");
    return p;
  }

  // As get(), but empty when the tensor is absent.
  WeightRef find(const std::string& name, const std::vector<int64_t>& shape) {
    auto e = w_.store.find(name);
    if (!e.info) return {};
    const std::string what = e.file->path() + ": tensor '" + name + "'";
    if (e.info->shape != shape)
      throw_bad_input(what, "shape " + shape_str(e.info->shape) + " disagrees with config.json (expected " +
                                shape_str(shape) + ")");
    const std::string scale_name = name + "_scale_inv";
    if (e.info->dtype == DType::kF8E4M3) return dequantized(*e.info, *e.file, scale_name, what);
    if (w_.store.has(scale_name))
      throw_bad_input(what, "has a scale '" + scale_name + "' but is stored as " + std::string(dtype_name(e.info->dtype)) +
                                " (only F8_E4M3 weights are scaled)");
    return in_place(*e.info, *e.file, what);
  }

  bool has(const std::string& name) const { return w_.store.has(name); }
  WeightRef get(const TensorSpec& t) { return get(t.name, t.shape); }
  WeightRef find(const TensorSpec& t) { return find(t.name, t.shape); }

 private:
  // The tensor where the file maps it, in its dtype; an unaligned one is copied (f32) first.
  WeightRef in_place(const TensorInfo& t, const SafetensorsFile& f, const std::string& what) {
    const std::byte* src = f.data(t);
    const size_t n = static_cast<size_t>(t.numel());
    switch (t.dtype) {
      case DType::kF32:
      case DType::kBF16:
      case DType::kF16: {
        if (reinterpret_cast<uintptr_t>(src) % dtype_size(t.dtype) == 0) return {src, t.dtype};
        auto& buf = w_.owned.emplace_back(n * sizeof(float));
        convert_to_f32(t.dtype, src, n, buf.as<float>());
        return {buf.as<float>(), DType::kF32};
      }
      default:
        throw_bad_input(what, "dtype " + std::string(dtype_name(t.dtype)) +
                                  " is not a weight type (F32, BF16, F16, or F8_E4M3 with a block scale)");
    }
  }

  // A block-FP8 weight [out, in] dequantized to f32 with its `_scale_inv` grid (the exact
  // reference; a CUDA FP8 path will keep the bytes and the grid instead).
  WeightRef dequantized(const TensorInfo& t, const SafetensorsFile& f, const std::string& scale_name,
                        const std::string& what) {
    if (!quant_.fp8)
      throw_bad_input(what, "is F8_E4M3 but config.json declares no block-FP8 quantization_config");
    if (t.shape.size() != 2) throw_bad_input(what, "F8_E4M3 weights must be 2-D [out, in] (packed experts are not)");
    const auto s = w_.store.find(scale_name);
    if (!s.info) throw_bad_input(what, "is F8_E4M3 but its scale '" + scale_name + "' is missing");
    const std::string swhat = s.file->path() + ": tensor '" + scale_name + "'";
    if (s.info->dtype != DType::kF32)
      throw_bad_input(swhat, "dtype " + std::string(dtype_name(s.info->dtype)) + " (block scales are F32)");
    const int64_t rows = t.shape[0], cols = t.shape[1];
    const std::vector<int64_t> grid = {(rows + quant_.block_rows - 1) / quant_.block_rows,
                                       (cols + quant_.block_cols - 1) / quant_.block_cols};
    if (s.info->shape != grid)
      throw_bad_input(swhat, "shape " + shape_str(s.info->shape) + " is not the " + std::to_string(quant_.block_rows) +
                                 " x " + std::to_string(quant_.block_cols) + " block grid " + shape_str(grid) +
                                 " of its weight " + shape_str(t.shape));
    std::vector<float> scale(static_cast<size_t>(grid[0] * grid[1]));
    convert_to_f32(DType::kF32, s.file->data(*s.info), scale.size(), scale.data());
    for (size_t i = 0; i < scale.size(); ++i) {
      const float v = scale[i];
      const std::string at = "block (" + std::to_string(i / grid[1]) + ", " + std::to_string(i % grid[1]) + ")";
      if (!std::isfinite(v) || v <= 0) throw_bad_input(swhat, at + " is " + std::to_string(v) + " (scales are finite and > 0)");
      int e = 0;
      if (quant_.ue8m0 && std::frexp(v, &e) != 0.5f)
        throw_bad_input(swhat, at + " is " + std::to_string(v) + ", not a power of two (scale_fmt ue8m0)");
    }
    auto& buf = w_.owned.emplace_back(static_cast<size_t>(rows * cols) * sizeof(float));
    dequantize_fp8_blocks(f.data(t), scale.data(), rows, cols, quant_.block_rows, quant_.block_cols, buf.as<float>());
    return {buf.as<float>(), DType::kF32};
  }

  ModelWeights& w_;
  std::string dir_;
  QuantSpec quant_;
};

// The ExpertWeights a gate / up / down tensor belongs to: the dense MLP, the shared expert or
// one routed expert.
ExpertWeights& mlp_of(LayerWeights& lw, const TensorSpec& t) {
  if (t.role == TensorRole::kDenseMlp) return lw.dense;
  if (t.role == TensorRole::kSharedExpert) return lw.shared;
  const auto e = static_cast<size_t>(t.expert);
  if (lw.experts.size() <= e) lw.experts.resize(e + 1);
  return lw.experts[e];
}

// Puts the data `p` of schema tensor `t` where the forward pass reads it.
void bind(ModelWeights& w, const TensorSpec& t, WeightRef p) {
  if (t.layer < 0) {
    switch (t.slot) {
      case TensorSlot::kEmbed: w.embed = p; break;
      case TensorSlot::kFinalNorm: w.final_norm = p; break;
      case TensorSlot::kLmHead: w.lm_head = p; break;
      default: break;
    }
    return;
  }
  LayerWeights& lw = w.layers.at(static_cast<size_t>(t.layer));
  IndexerWeights& ix = lw.indexer;
  switch (t.slot) {
    case TensorSlot::kInputNorm: lw.input_norm = p; break;
    case TensorSlot::kPostAttnNorm: lw.post_attn_norm = p; break;
    case TensorSlot::kQa: lw.q_a = p; break;
    case TensorSlot::kQaBias: lw.q_a_bias = p; break;
    case TensorSlot::kQaNorm: lw.q_a_norm = p; break;
    case TensorSlot::kQb: lw.q_b = p; break;
    case TensorSlot::kKvA: lw.kv_a = p; break;
    case TensorSlot::kKvABias: lw.kv_a_bias = p; break;
    case TensorSlot::kKvANorm: lw.kv_a_norm = p; break;
    case TensorSlot::kKvB: lw.kv_b = p; break;
    case TensorSlot::kO: lw.o = p; break;
    case TensorSlot::kOBias: lw.o_bias = p; break;
    case TensorSlot::kIndexerWqB: ix.wq_b = p; break;
    case TensorSlot::kIndexerWk: ix.wk = p; break;
    case TensorSlot::kIndexerKNorm: ix.k_norm_w = p; break;
    case TensorSlot::kIndexerKNormBias: ix.k_norm_b = p; break;
    case TensorSlot::kIndexerWeightsProj: ix.weights_proj = p; break;
    case TensorSlot::kRouter: lw.router = p; break;
    case TensorSlot::kRouterBias: lw.router_bias = p; break;
    case TensorSlot::kGate: mlp_of(lw, t).gate = p; break;
    case TensorSlot::kUp: mlp_of(lw, t).up = p; break;
    case TensorSlot::kDown: mlp_of(lw, t).down = p; break;
    case TensorSlot::kExpertsGateUp: {  // [E, 2I, H]: per expert, gate rows then up rows
      const int64_t E = t.shape[0], I = t.shape[1] / 2, H = t.shape[2];
      lw.experts.resize(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) {
        lw.experts[e].gate = p.offset(e * 2 * I * H);
        lw.experts[e].up = p.offset(e * 2 * I * H + I * H);
      }
      break;
    }
    case TensorSlot::kExpertsDown: {  // [E, H, I]
      const int64_t E = t.shape[0], per = t.shape[1] * t.shape[2];
      lw.experts.resize(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) lw.experts[e].down = p.offset(e * per);
      break;
    }
    default: break;
  }
}

// What follows from a layer's bound tensors: its kind, which optional parts it has, and the
// per-head transposed key rows of kv_b.
void finish_layer(ModelWeights& w, const ModelSpec& s, int l) {
  LayerWeights& lw = w.layers[l];
  lw.moe = l < static_cast<int>(s.layer_is_moe.size()) && s.layer_is_moe[l];
  lw.has_indexer = static_cast<bool>(lw.indexer.wq_b);
  lw.has_shared = static_cast<bool>(lw.shared.gate);
  lw.uk_t = transposed_key_rows(w, lw.kv_b, s.num_heads, s.qk_nope_head_dim, s.v_head_dim, s.kv_lora_rank);
}

void finish_model(ModelWeights& w, const ModelSpec& s) {
  if (s.tie_word_embeddings) w.lm_head = w.embed;
}

}  // namespace

std::unique_ptr<ModelWeights> load_weights(const std::string& dir, const ModelSpec& s,
                                           const std::vector<bool>& require_indexer,
                                           bool only_required_indexers) {
  auto w = std::make_unique<ModelWeights>();
  w->store = WeightStore::open_dir(dir);
  Loader L(*w, dir, s.quant);
  for_each_global_tensor(s, [&](const TensorSpec& t) { bind(*w, t, L.get(t)); });
  finish_model(*w, s);
  w->layers.resize(s.num_layers);
  for (int l = 0; l < s.num_layers; ++l) {
    LayerSchemaOptions o;
    o.experts = L.has(packed_experts_name(l)) ? ExpertLayout::kPacked : ExpertLayout::kPerExpert;
    o.indexer = require_indexer[l]        ? IndexerTensors::kRequired
                : only_required_indexers ? IndexerTensors::kOmitted
                                         : IndexerTensors::kOptional;
    // The optional tensors (an indexer) come as a group: absent when the first is, else required.
    bool first_optional = true, have_optional = false;
    for_each_layer_tensor(s, l, o, [&](const TensorSpec& t) {
      if (t.optional) {
        if (first_optional) have_optional = L.has(t.name);
        first_optional = false;
        if (!have_optional) return;
      }
      bind(*w, t, L.get(t));
    });
    finish_layer(*w, s, l);
  }
  return w;
}

std::unique_ptr<ModelWeights> synthetic_weights(const ModelSpec& s, uint64_t seed) {
  auto w = std::make_unique<ModelWeights>();
  // Every tensor's buffer first (uninitialised), then all of them filled in parallel in blocks:
  // the first touch of the pages is parallel too.
  struct Fill {
    uint16_t* dst;
    int64_t n;
    uint64_t key;
    float a;  // > 0: uniform on [-a, a); else the constant `fill`
    uint16_t fill;
  };
  std::vector<Fill> fills;
  auto alloc = [&](const TensorSpec& t) {
    auto& buf = w->owned.emplace_back(static_cast<size_t>(t.numel()) * sizeof(uint16_t));
    const float a = t.init.std > 0 ? static_cast<float>(t.init.std * std::sqrt(3.0)) : 0.0f;
    fills.push_back({buf.as<uint16_t>(), t.numel(), random_fill::tensor_key(seed, t.name), a,
                     f32_to_bf16(t.init.fill)});
    bind(*w, t, WeightRef(buf.data.get(), DType::kBF16));
  };
  for_each_global_tensor(s, alloc);
  finish_model(*w, s);
  w->layers.resize(s.num_layers);
  for (int l = 0; l < s.num_layers; ++l) for_each_layer_tensor(s, l, {}, alloc);

  constexpr int64_t kBlock = int64_t{1} << 17;
  std::vector<std::pair<uint32_t, int64_t>> blocks;  // (fill, first element)
  for (size_t f = 0; f < fills.size(); ++f)
    for (int64_t b = 0; b < fills[f].n; b += kBlock) blocks.emplace_back(static_cast<uint32_t>(f), b);
#pragma omp parallel for schedule(dynamic)
  for (size_t i = 0; i < blocks.size(); ++i) {
    const Fill& f = fills[blocks[i].first];
    const int64_t b = blocks[i].second, e = std::min(f.n, b + kBlock);
    if (f.a > 0)
      random_fill::uniform_bf16(f.dst + b, f.key, b, e, f.a);
    else
      std::fill(f.dst + b, f.dst + e, f.fill);
  }
  for (int l = 0; l < s.num_layers; ++l) finish_layer(*w, s, l);
  return w;
}

size_t ModelWeights::owned_bytes() const {
  size_t n = 0;
  for (const OwnedBuffer& b : owned) n += b.bytes;
  return n;
}

WeightRef bound_tensor(const ModelWeights& w, const TensorSpec& t) {
  if (t.layer < 0) {
    switch (t.slot) {
      case TensorSlot::kEmbed: return w.embed;
      case TensorSlot::kFinalNorm: return w.final_norm;
      case TensorSlot::kLmHead: return w.lm_head;
      default: return {};
    }
  }
  if (t.layer >= static_cast<int>(w.layers.size())) return {};
  const LayerWeights& lw = w.layers[t.layer];
  const IndexerWeights& ix = lw.indexer;
  auto mlp = [&]() -> const ExpertWeights* {
    if (t.role == TensorRole::kDenseMlp) return &lw.dense;
    if (t.role == TensorRole::kSharedExpert) return &lw.shared;
    const auto e = static_cast<size_t>(t.expert);
    return e < lw.experts.size() ? &lw.experts[e] : nullptr;
  };
  const ExpertWeights* first = lw.experts.empty() ? nullptr : &lw.experts[0];
  switch (t.slot) {
    case TensorSlot::kInputNorm: return lw.input_norm;
    case TensorSlot::kPostAttnNorm: return lw.post_attn_norm;
    case TensorSlot::kQa: return lw.q_a;
    case TensorSlot::kQaBias: return lw.q_a_bias;
    case TensorSlot::kQaNorm: return lw.q_a_norm;
    case TensorSlot::kQb: return lw.q_b;
    case TensorSlot::kKvA: return lw.kv_a;
    case TensorSlot::kKvABias: return lw.kv_a_bias;
    case TensorSlot::kKvANorm: return lw.kv_a_norm;
    case TensorSlot::kKvB: return lw.kv_b;
    case TensorSlot::kO: return lw.o;
    case TensorSlot::kOBias: return lw.o_bias;
    case TensorSlot::kIndexerWqB: return ix.wq_b;
    case TensorSlot::kIndexerWk: return ix.wk;
    case TensorSlot::kIndexerKNorm: return ix.k_norm_w;
    case TensorSlot::kIndexerKNormBias: return ix.k_norm_b;
    case TensorSlot::kIndexerWeightsProj: return ix.weights_proj;
    case TensorSlot::kRouter: return lw.router;
    case TensorSlot::kRouterBias: return lw.router_bias;
    case TensorSlot::kGate: return mlp() ? mlp()->gate : WeightRef{};
    case TensorSlot::kUp: return mlp() ? mlp()->up : WeightRef{};
    case TensorSlot::kDown: return mlp() ? mlp()->down : WeightRef{};
    case TensorSlot::kExpertsGateUp: return first ? first->gate : WeightRef{};
    case TensorSlot::kExpertsDown: return first ? first->down : WeightRef{};
    default: return {};
  }
}

}  // namespace indexcache
