// Device pointers to every weight of the GPU model (bf16 unless noted), laid out by the runner
// (synthetic_gpu_model.cpp) and filled either with random values or from a checkpoint
// (gpu_weights_loader.cpp). No CUDA types here.
#pragma once

#include <string>
#include <vector>

#include "indexcache/model_spec.h"

namespace indexcache::gpu {

struct GpuLayerWeights {
  void *in_norm, *post_norm;  // [H]
  void *q_a, *q_a_norm;       // [qlr, H], [qlr]
  void* q_b;                  // [nh * (nope + rd), qlr]
  void *kv_a, *kv_a_norm;     // [kvlr + rd, H], [kvlr]
  void* w_uk;                 // [nh, kvlr, nope]: kv_b's key rows of each head, transposed (absorbed query)
  void* w_uv;                 // [nh, vd, kvlr]: kv_b's value rows of each head (absorbed output)
  void* o;                    // [H, nh * vd]
  bool has_indexer;           // false: a checkpoint without this layer's indexer (S layers of GLM-5.2)
  void *wq_b, *wk, *k_norm_w, *k_norm_b, *wproj;  // [Hi*Di, qlr], [Di, H], [Di], [Di], [Hi, H]
  bool moe;
  void *gate_up, *down;     // dense MLP [2*inter, H] (gate rows, then up rows), [H, inter]
  void* router;             // [E, H]
  float* router_bias;       // [E] f32 (e_score_correction_bias)
  void *e_gate_up, *e_down; // [E, 2*I, H], [E, H, I]
  void *s_gate_up, *s_down; // shared experts [2*Is, H], [H, Is]
};

struct GpuWeights {
  void *embed, *final_norm, *lm_head;  // [V, H], [H], [V, H] (lm_head == embed when tied)
  std::vector<GpuLayerWeights> layers;
};

// Fills every tensor of `w` (already allocated on the device with the shapes above) from the
// Hugging Face checkpoint in `dir`: f32 / bf16 / f16 converted to bf16 (the router bias to f32),
// experts packed (mlp.experts.gate_up_proj / down_proj) or per expert, kv_b_proj split into W_uk /
// W_uv. An absent indexer sets has_indexer = false. Errors (missing tensor, wrong shape, FP8 or
// other dtypes, attention_bias) throw indexcache::Error (kBadInput) naming the file and tensor.
// Synchronous.
void load_checkpoint_weights(const std::string& dir, const ModelSpec& spec, GpuWeights& w);

}  // namespace indexcache::gpu
