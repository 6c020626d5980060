// The backend-ops test (in the style of llama.cpp's test-backend-ops): every op of backend.h, on
// every available backend (the CPU backend always; the CUDA backend's f32 and bf16 paths where a GPU
// is present), against the CPU backend's op on the same random inputs, over named corner cases and
// real model shapes (dsa-mini; glm47flash-dsa trimmed in tokens and experts).
//
// Per case: inputs are fresh deterministic random data (never zeros), rounded to bf16 for a bf16
// backend and handed to the CPU reference rounded the same way, so only the op's own arithmetic
// differs; outputs are poisoned (NaN; int32 0x7F7F7F7F) before the op, so unwritten elements show,
// and every element of an output's buffer outside the output view must be unchanged. One line per
// op / backend / case: max abs error / max |ref| (NaN / Inf positions must match exactly), or for
// top-k the mismatch count (order too on exact backends; on bf16 the set, and in the indexer ->
// top-k pipeline swaps only between near-tied scores). A backend refusing a combination prints
// "not supported" (a failure only where the case is one the Session relies on).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend_ops_harness.h"
#include "indexcache/device.h"
#include "indexcache/dtype.h"
#include "indexcache/error.h"
#ifdef INDEXCACHE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_ops.h"
#endif

namespace indexcache {
namespace {

using namespace backend_ops_test;

// ---------------------------------------------------------------- model shapes

struct ModelShapes {
  const char* name;
  int H, heads, qlr, kvlr, nope, rd, vd, Hi, Di, topk, I, moe_I, E, K;
};
// models/dsa-mini/config.json and tools/indexcache/bench/presets.cpp glm47flash_dsa().
constexpr ModelShapes kMini{"dsa-mini", 256, 8, 128, 128, 32, 32, 64, 4, 64, 256, 768, 128, 8, 2};
constexpr ModelShapes kGlm{"glm47flash", 2048, 20, 768, 512, 192, 64, 256, 32, 128, 2048, 10240, 1536, 64, 4};

// Distinct random keys of [0, pos] (all of them, shuffled, when fewer than k), then -1.
std::vector<int32_t> selection(Rng& rng, int pos, int k) {
  std::vector<int32_t> pool(static_cast<size_t>(pos) + 1);
  for (int i = 0; i <= pos; ++i) pool[i] = i;
  std::vector<int32_t> out(k, -1);
  const int take = std::min(k, pos + 1);
  for (int i = 0; i < take; ++i) {
    const int j = i + rng.below(pos + 1 - i);
    std::swap(pool[i], pool[j]);
    out[i] = pool[i];
  }
  return out;
}

// ---------------------------------------------------------------- cases

void linear_cases(std::vector<Case>& cs) {
  // y [T, out] (a column slice at y_off of rows y_off + out + y_pad) = x [T, in] (rows in + x_pad
  // apart) . w^T (+ bias).
  auto add = [&](std::string name, int T, int in, int out, Ty y_ty, bool bias, int x_pad = 0, int y_off = 0,
                 int y_pad = 0) {
    cs.push_back({"linear", name, true, [=](OpRun& r) {
                    TensorView x = r.input("x", Ty::kAct, {T, in + x_pad}).cols(0, in);
                    TensorView w = r.weight("w", {out, in}, 1.0f / std::sqrt(static_cast<float>(in)));
                    TensorView b = bias ? r.weight("b", {out}, 0.5f) : TensorView{};
                    TensorView y = r.output(y_ty, {T, y_off + out + y_pad}).cols(y_off, out);
                    r.be.linear({x, w, b, y});
                    return std::vector<Out>{r.read("y", y)};
                  }});
  };
  add("1 token, 64 -> 48", 1, 64, 48, Ty::kAct, false);
  add("odd 37 -> 29, 3 tokens, bias", 3, 37, 29, Ty::kAct, true);
  add("1 token, odd 37 -> 29, y f32", 1, 37, 29, Ty::kF32, false);
  add("strided x (pitch +8), y f32 column slice", 5, 64, 40, Ty::kF32, false, 8, 16, 8);
  add("strided odd x (pitch +3), y bf16 slice, bias", 4, 29, 24, Ty::kAct, true, 3, 5, 3);
  const ModelShapes& m = kMini;
  add("dsa-mini q_a T=7 (y f32)", 7, m.H, m.qlr, Ty::kF32, false);
  add("dsa-mini q_b T=7", 7, m.qlr, m.heads * (m.nope + m.rd), Ty::kAct, false);
  add("dsa-mini kv_a into a cache row slice (y f32)", 7, m.H, m.kvlr + m.rd, Ty::kF32, false, 0, 0, 0);
  add("dsa-mini o_proj T=1 (y f32)", 1, m.heads * m.vd, m.H, Ty::kF32, false);
  add("dsa-mini indexer wq_b T=7", 7, m.qlr, m.Hi * m.Di, Ty::kAct, false);
  const ModelShapes& g = kGlm;
  add("glm47flash q_b T=64", 64, g.qlr, g.heads * (g.nope + g.rd), Ty::kAct, false);
  add("glm47flash kv_a T=64 (y f32)", 64, g.H, g.kvlr + g.rd, Ty::kF32, false);
  add("glm47flash o_proj T=64 (y f32)", 64, g.heads * g.vd, g.H, Ty::kF32, false);
  add("glm47flash o_proj T=1 (y f32)", 1, g.heads * g.vd, g.H, Ty::kF32, false);
  add("glm47flash indexer wq_b T=1", 1, g.qlr, g.Hi * g.Di, Ty::kAct, false);
  add("glm47flash weights_proj T=64 (y f32)", 64, g.H, g.Hi, Ty::kF32, false);
  add("glm47flash lm_head (vocab trimmed to 8192) T=1 (y f32)", 1, g.H, 8192, Ty::kF32, false);

  // y = alpha x w^T (+ bias), or added into y (the f32 residual, random before the op).
  auto fused = [&](std::string name, int T, int in, int out, bool bias, float alpha, bool acc) {
    cs.push_back({"linear", name, true, [=](OpRun& r) {
                    TensorView x = r.input("x", Ty::kAct, {T, in});
                    TensorView w = r.weight("w", {out, in}, 1.0f / std::sqrt(static_cast<float>(in)));
                    TensorView b = bias ? r.weight("b", {out}, 0.5f) : TensorView{};
                    TensorView y = acc ? r.input("y", Ty::kF32, {T, out}, -4.0f, 4.0f) : r.output(Ty::kF32, {T, out});
                    if (acc) r.watch(y);
                    r.be.linear({.x = x, .w = w, .bias = b, .y = y, .alpha = alpha, .accumulate = acc});
                    return std::vector<Out>{r.read("y", y)};
                  }});
  };
  fused("odd 37 -> 29, T=3, accumulate with bias", 3, 37, 29, true, 1.0f, true);
  fused("dsa-mini o_proj T=7 into the residual", 7, m.heads * m.vd, m.H, false, 1.0f, true);
  fused("glm47flash o_proj T=1 into the residual", 1, g.heads * g.vd, g.H, false, 1.0f, true);
  fused("glm47flash o_proj T=64 into the residual", 64, g.heads * g.vd, g.H, false, 1.0f, true);
  fused("glm47flash weights_proj T=1, alpha 1/sqrt(32)", 1, g.H, g.Hi, false, 0.17677669f, false);
  fused("glm47flash weights_proj T=64, alpha 1/sqrt(32)", 64, g.H, g.Hi, false, 0.17677669f, false);
  fused("odd 37 -> 29, T=2, alpha 0.5 and accumulate", 2, 37, 29, false, 0.5f, true);
}

void linear_heads_cases(std::vector<Case>& cs) {
  // x [T, Hd, in] at column x_off of rows x_w per head; w [Hd, out, in] the per-head rows w_off..
  // of a [Hd * w_rows, in] weight; y [T, Hd, out] at column y_off of rows y_w per head.
  auto add = [&](std::string name, int T, int Hd, int in, int out, int x_w, int x_off, int w_rows, int w_off, int y_w,
                 int y_off, Ty y_ty) {
    cs.push_back({"linear_heads", name, true, [=](OpRun& r) {
                    TensorView x = r.input("x", Ty::kAct, {T, Hd, x_w}).cols(x_off, in);
                    TensorView wf = r.weight("w", {int64_t(Hd) * w_rows, in}, 1.0f / std::sqrt(float(in)));
                    TensorView w = view3d(elem(wf, int64_t(w_off) * in), wf.dtype, Hd, out, in, int64_t(w_rows) * in, in);
                    TensorView y = r.output(y_ty, {T, Hd, y_w}).cols(y_off, out);
                    r.be.linear_heads({x, w, y});
                    return std::vector<Out>{r.read("y", y)};
                  }});
  };
  add("odd 3 heads, 13 -> 7, T=3", 3, 3, 13, 7, 13, 0, 7, 0, 7, 0, Ty::kAct);
  add("odd 3 heads, strided, y f32", 2, 3, 13, 7, 20, 5, 9, 2, 11, 3, Ty::kF32);
  for (const ModelShapes* m : {&kMini, &kGlm}) {
    const int qkd = m->nope + m->rd, lat = m->kvlr + m->rd;
    for (int T : {1, 16}) {
      // w_uk: q_nope [T, heads, nope] (of q rows qkd per head) -> qabs[:, :, :kvlr] (rows lat per head).
      add(str("%s w_uk T=%d", m->name, T), T, m->heads, m->nope, m->kvlr, qkd, 0, m->kvlr, 0, lat, 0, Ty::kAct);
      // w_uv: o_lat [T, heads, kvlr] -> [T, heads, v] with kv_b's value rows per head (batch stride
      // (nope + v) * kvlr).
      add(str("%s w_uv from kv_b T=%d", m->name, T), T, m->heads, m->kvlr, m->vd, m->kvlr, 0, m->nope + m->vd,
          m->nope, m->vd, 0, Ty::kAct);
    }
  }
}

void norm_cases(std::vector<Case>& cs) {
  // y (a column slice at y_off of rows y_off + dim + 2, or x itself) = norm(x [T, dim], rows
  // dim + x_pad apart).
  auto add = [&](std::string name, int T, int dim, Ty x_ty, Ty y_ty, bool layer, bool bias, bool in_place,
                 int x_pad = 0, int y_off = 0, float eps = 1e-5f) {
    cs.push_back({"norm", name, true, [=](OpRun& r) {
                    TensorView x = r.input("x", x_ty, {T, dim + x_pad}, -2.0f, 2.0f).cols(0, dim);
                    TensorView w = r.weight_range("w", {dim}, 0.5f, 1.5f);
                    TensorView b = bias ? r.weight("b", {dim}, 0.5f) : TensorView{};
                    TensorView y;
                    if (in_place) {
                      y = x;
                      r.watch(x);
                    } else {
                      y = r.output(y_ty, {T, y_off + dim + 2}).cols(y_off, dim);
                    }
                    r.be.norm({x, w, b, y, eps, layer});
                    return std::vector<Out>{r.read("y", y)};
                  }});
  };
  add("rms 1 token, odd dim 37, f32 -> act", 1, 37, Ty::kF32, Ty::kAct, false, false, false);
  add("rms in place (act), strided rows", 3, 40, Ty::kAct, Ty::kAct, false, false, true, 6);
  add("rms in place (f32), eps 1e-6", 4, 64, Ty::kF32, Ty::kF32, false, false, true, 0, 0, 1e-6f);
  add("rms act -> f32 slice", 3, 24, Ty::kAct, Ty::kF32, false, false, false, 0, 4);
  add("layer norm with bias, f32 -> act", 5, 64, Ty::kF32, Ty::kAct, true, true, false);
  add("layer norm without bias, in place act", 2, 33, Ty::kAct, Ty::kAct, true, false, true);
  add("dsa-mini input norm T=7 (f32 -> act)", 7, kMini.H, Ty::kF32, Ty::kAct, false, false, false);
  add("dsa-mini q_a_norm T=7 (f32 -> act)", 7, kMini.qlr, Ty::kF32, Ty::kAct, false, false, false, 0, 0, 1e-6f);
  add("dsa-mini indexer k_norm T=7 (layer norm)", 7, kMini.Di, Ty::kF32, Ty::kAct, true, true, false, 0, 0, 1e-6f);
  add("glm47flash input norm T=64", 64, kGlm.H, Ty::kF32, Ty::kAct, false, false, false);
  // kv_a_norm: the first kvlr dims of the kv_a output rows (kvlr + rd wide) into a cache row slice.
  add("glm47flash kv_a_norm (strided x, y slice) T=16", 16, kGlm.kvlr, Ty::kF32, Ty::kAct, false, false, false,
      kGlm.rd, 0, 1e-6f);
  add("glm47flash indexer k_norm T=64", 64, kGlm.Di, Ty::kF32, Ty::kAct, true, true, false, 0, 0, 1e-6f);
}

void rope_cases(std::vector<Case>& cs) {
  // x [T, width] (heads == 0: rank 2, one head) or [T, heads, width] (rows width + pad per head),
  // dims offset..offset + rd rotated at random positions below P.
  auto add = [&](std::string name, int T, int heads, int width, int pad, int offset, int rd, RopeLayout layout) {
    cs.push_back({"rope", name, true, [=](OpRun& r) {
                    constexpr int P = 97;
                    TensorView x = heads == 0 ? r.input("x", Ty::kAct, {T, width + pad}).cols(0, width)
                                              : r.input("x", Ty::kAct, {T, heads, width + pad}).cols(0, width);
                    r.watch(x);
                    auto angle = [](size_t i) {
                      return static_cast<float>(mix64(i * 7919 + 1) >> 40) * (2.0f * std::numbers::pi_v<float> / 16777216.0f);
                    };
                    TensorView cs_ = r.input_gen("cos", Ty::kF32, {P, rd / 2}, [&](size_t i, Rng&) { return std::cos(angle(i)); });
                    TensorView sn = r.input_gen("sin", Ty::kF32, {P, rd / 2}, [&](size_t i, Rng&) { return std::sin(angle(i)); });
                    Rng rng(hash_str("positions" + std::to_string(T)));
                    std::vector<int32_t> pos(T);
                    for (int& p : pos) p = rng.below(P);
                    TensorView pv = r.ints(pos, {T});
                    r.be.rope({x, offset, rd, cs_, sn, pv, layout});
                    return std::vector<Out>{r.read("x", x)};
                  }});
  };
  add("1 token, one head (rank 2), interleaved", 1, 0, 40, 0, 8, 16, RopeLayout::kInterleaved);
  add("one head (rank 2), half-split, strided", 5, 0, 40, 3, 4, 32, RopeLayout::kHalfSplit);
  add("3 heads, half-split, strided heads", 4, 3, 24, 5, 2, 8, RopeLayout::kHalfSplit);
  add("dsa-mini latent row rope (rank 2, offset kvlr)", 7, 0, kMini.kvlr + kMini.rd, 0, kMini.kvlr, kMini.rd,
      RopeLayout::kInterleaved);
  add("dsa-mini q rope (offset nope)", 7, kMini.heads, kMini.nope + kMini.rd, 0, kMini.nope, kMini.rd,
      RopeLayout::kInterleaved);
  add("dsa-mini indexer q rope (half-split)", 7, kMini.Hi, kMini.Di, 0, 0, kMini.rd, RopeLayout::kHalfSplit);
  add("glm47flash qabs rope part (offset kvlr) T=16", 16, kGlm.heads, kGlm.kvlr + kGlm.rd, 0, kGlm.kvlr, kGlm.rd,
      RopeLayout::kInterleaved);
  add("glm47flash indexer q rope T=64", 64, kGlm.Hi, kGlm.Di, 0, 0, kGlm.rd, RopeLayout::kInterleaved);

  // From src: q's rope part (a column slice of q [T, heads, nope + rd]) rotated into the absorbed
  // query's last rd dims (x's other dims must keep their values).
  auto from_src = [&](std::string name, const ModelShapes& m, int T) {
    cs.push_back({"rope", name, true, [=](OpRun& r) {
                    constexpr int P = 97;
                    TensorView q = r.input("q", Ty::kAct, {T, m.heads, m.nope + m.rd});
                    TensorView x = r.input("qabs", Ty::kAct, {T, m.heads, m.kvlr + m.rd});
                    r.watch(x);
                    TensorView c_ = r.input("cos", Ty::kF32, {P, m.rd / 2});
                    TensorView sn = r.input("sin", Ty::kF32, {P, m.rd / 2});
                    Rng rng(hash_str(name));
                    std::vector<int32_t> pos(T);
                    for (int& p : pos) p = rng.below(P);
                    RopeOp op{.x = x, .offset = m.kvlr, .rope_dim = m.rd, .cos = c_, .sin = sn, .positions = r.ints(pos, {T}),
                              .layout = RopeLayout::kInterleaved, .src = q.cols(m.nope, m.rd)};
                    r.be.rope(op);
                    return std::vector<Out>{r.read("qabs", x), r.read("q", q)};
                  }});
  };
  from_src("dsa-mini q_rope into qabs from src, T=7", kMini, 7);
  from_src("glm47flash q_rope into qabs from src, T=1", kGlm, 1);
  from_src("glm47flash q_rope into qabs from src, T=16", kGlm, 16);
}

void cache_rows_cases(std::vector<Case>& cs) {
  // T new rows (x f32 [T, w]) into a cache of S rows (random before, watched) at distinct random
  // positions below S.
  auto add = [&](std::string name, int T, int S, int w, int norm_dim, bool layer, int rope_offset, int rd,
                 RopeLayout layout) {
    cs.push_back({"cache_rows", name, true, [=](OpRun& r) {
                    TensorView x = r.input("x", Ty::kF32, {T, w}, -2.0f, 2.0f);
                    TensorView nw = r.weight_range("norm_w", {norm_dim}, 0.5f, 1.5f);
                    TensorView nb = layer ? r.weight("norm_b", {norm_dim}, 0.5f) : TensorView{};
                    TensorView cache = r.input("cache", Ty::kAct, {S, w});
                    r.watch(cache);
                    TensorView c_ = r.input("cos", Ty::kF32, {S, rd / 2});
                    TensorView sn = r.input("sin", Ty::kF32, {S, rd / 2});
                    Rng rng(hash_str(name));
                    std::vector<int32_t> rows = selection(rng, S - 1, T);
                    r.be.cache_rows({.x = x, .norm_w = nw, .norm_bias = nb, .cache = cache, .positions = r.ints(rows, {T}),
                                     .cos = c_, .sin = sn, .norm_dim = norm_dim, .eps = 1e-6f, .layer_norm = layer,
                                     .rope_offset = rope_offset, .rope_dim = rd, .layout = layout});
                    return std::vector<Out>{r.read("cache", cache)};
                  }});
  };
  const ModelShapes& m = kMini;
  const ModelShapes& g = kGlm;
  add("dsa-mini latent rows T=7", 7, 40, m.kvlr + m.rd, m.kvlr, false, m.kvlr, m.rd, RopeLayout::kInterleaved);
  add("dsa-mini indexer keys T=7 (half-split)", 7, 40, m.Di, m.Di, true, 0, m.rd, RopeLayout::kHalfSplit);
  add("glm47flash latent row, decode T=1", 1, 300, g.kvlr + g.rd, g.kvlr, false, g.kvlr, g.rd, RopeLayout::kInterleaved);
  add("glm47flash latent rows T=16", 16, 300, g.kvlr + g.rd, g.kvlr, false, g.kvlr, g.rd, RopeLayout::kInterleaved);
  add("glm47flash indexer key, decode T=1", 1, 300, g.Di, g.Di, true, 0, g.rd, RopeLayout::kInterleaved);
  add("glm47flash indexer keys T=16", 16, 300, g.Di, g.Di, true, 0, g.rd, RopeLayout::kInterleaved);
  add("odd: RMSNorm of 24 of 40, rope 8..24 (the composed path)", 5, 20, 40, 24, false, 8, 16, RopeLayout::kHalfSplit);
}

// Positions of T queries against S keys: the last T positions (prefill tail / decode), or 0..T-1.
std::vector<int32_t> tail_positions(int T, int S, bool early) {
  std::vector<int32_t> p(T);
  for (int t = 0; t < T; ++t) p[t] = early ? t : std::max(0, S - T + t);
  return p;
}

void indexer_cases(std::vector<Case>& cs) {
  auto add = [&](std::string name, int T, int H, int D, int S, bool early, bool required = true) {
    cs.push_back({"indexer_scores", name, required, [=](OpRun& r) {
                    TensorView q = r.input("q", Ty::kAct, {T, H, D});
                    TensorView w = r.input("w", Ty::kF32, {T, H});
                    TensorView k = r.input("k", Ty::kAct, {S, D});
                    TensorView pos = r.ints(tail_positions(T, S, early), {T});
                    TensorView sc = r.output(Ty::kF32, {T, S + 3}).cols(0, S);
                    r.be.indexer_scores({q, w, k, pos, sc, 1.0f / std::sqrt(float(D))});
                    return std::vector<Out>{r.read("scores", sc)};
                  }});
  };
  add("1 token, odd 3 heads x 20", 1, 3, 20, 17, false);
  add("early positions (mostly -inf), T=5", 5, 2, 16, 40, true);
  add("dsa-mini T=7 S=300", 7, kMini.Hi, kMini.Di, 300, false);
  add("dsa-mini decode T=1 S=300", 1, kMini.Hi, kMini.Di, 300, false);
  add("glm47flash T=64 S=3000 (tensor cores, wgmma)", 64, kGlm.Hi, kGlm.Di, 3000, false);
  add("glm47flash T=8 S=3000 (tensor cores, mma.sync)", 8, kGlm.Hi, kGlm.Di, 3000, false);
  add("glm47flash decode T=1 S=3000", 1, kGlm.Hi, kGlm.Di, 3000, false);
  add("head_dim 320 (beyond the f32 CUDA kernel)", 2, 2, 320, 50, false, false);
}

void topk_cases(std::vector<Case>& cs) {
  enum Mode { kRandom, kTies, kSpecial };
  auto add = [&](std::string name, int T, int S, int k, std::vector<int32_t> valid, Mode mode) {
    cs.push_back({"topk", name, true, [=](OpRun& r) {
                    Gen gen = OpRun::uniform(-4.0f, 4.0f);
                    if (mode == kTies) gen = [](size_t, Rng& g) { return 0.5f * static_cast<float>(g.below(3)); };
                    if (mode == kSpecial)
                      gen = [](size_t, Rng& g) {
                        const int c = g.below(10);
                        return c == 0 ? -INFINITY : c == 1 ? NAN : c == 2 ? 1.0f : g.uniform(-1.0f, 1.0f);
                      };
                    TensorView sc = r.input_gen("s", Ty::kF32, {T, S + 5}, gen).cols(0, S);
                    TensorView v = r.ints(valid, {T});
                    TensorView idx = r.output(Ty::kI32, {T, k});
                    r.be.topk({sc, v, idx});
                    return std::vector<Out>{r.read_idx("indices", idx, true)};
                  }});
  };
  add("rows with fewer valid than k, one empty row", 5, 50, 8, {50, 20, 8, 3, 0}, kRandom);
  add("ties (3 distinct values), k=16", 3, 64, 16, {64, 64, 40}, kTies);
  add("NaN, -inf and repeated values", 4, 100, 10, {100, 100, 57, 12}, kSpecial);
  add("1 token k=1", 1, 33, 1, {33}, kRandom);
  auto tail = [](int T, int S) {
    std::vector<int32_t> v = tail_positions(T, S, false);
    for (int32_t& x : v) x += 1;
    return v;
  };
  add("dsa-mini T=7 S=300 k=256", 7, 300, kMini.topk, tail(7, 300), kRandom);
  add("glm47flash T=64 S=3000 k=2048", 64, 3000, kGlm.topk, tail(64, 3000), kRandom);
  add("glm47flash decode T=1 S=3000 k=2048", 1, 3000, kGlm.topk, {3000}, kRandom);
  add("glm47flash decode T=1 S=40000 k=2048 (multi-block)", 1, 40000, kGlm.topk, {40000}, kRandom);
  add("glm47flash ties T=2 S=5000 k=2048", 2, 5000, kGlm.topk, {5000, 4000}, kTies);
}

void pipeline_cases(std::vector<Case>& cs) {
  // Indexer scores, then top-k of them, on one backend: selections may differ from the CPU's only
  // by swaps between keys whose CPU scores lie within the measured score error of the k-th.
  auto add = [&](std::string name, int T, int H, int D, int S, int k) {
    cs.push_back({"indexer+topk", name, true, [=](OpRun& r) {
                    TensorView q = r.input("q", Ty::kAct, {T, H, D});
                    TensorView w = r.input("w", Ty::kF32, {T, H});
                    TensorView kk = r.input("k", Ty::kAct, {S, D});
                    const std::vector<int32_t> p = tail_positions(T, S, false);
                    std::vector<int32_t> valid(p);
                    for (int32_t& v : valid) v += 1;
                    TensorView pos = r.ints(p, {T});
                    TensorView val = r.ints(valid, {T});
                    TensorView sc = r.output(Ty::kF32, {T, S});
                    TensorView idx = r.output(Ty::kI32, {T, k});
                    r.be.indexer_scores({q, w, kk, pos, sc, 1.0f / std::sqrt(float(D))});
                    r.be.topk({sc, val, idx});
                    return std::vector<Out>{r.read("scores", sc), r.read_idx("indices", idx, true, "scores")};
                  }});
  };
  add("dsa-mini T=7 S=600 k=256", 7, kMini.Hi, kMini.Di, 600, kMini.topk);
  add("glm47flash T=64 S=3000 k=2048", 64, kGlm.Hi, kGlm.Di, 3000, kGlm.topk);
}

void attention_cases(std::vector<Case>& cs) {
  // q [T, H, Dk] (rows Dk + q_pad per head), the latent cache kv [S, kv_w], K selected keys per
  // query among its visible ones (the last T positions of S), -1 past the visible count;
  // all_masked: the last query selects nothing.
  auto add = [&](std::string name, int T, int H, int Dk, int Dv, int S, int K, int kv_w, int q_pad, bool all_masked,
                 float scale, bool required = true) {
    cs.push_back({"sparse_attention", name, required, [=](OpRun& r) {
                    TensorView q = r.input("q", Ty::kAct, {T, H, Dk + q_pad}).cols(0, Dk);
                    TensorView kv = r.input("kv", Ty::kAct, {S, kv_w});
                    Rng rng(hash_str("sel" + std::to_string(T * 131 + S)));
                    std::vector<int32_t> sel;
                    const std::vector<int32_t> p = tail_positions(T, S, false);
                    for (int t = 0; t < T; ++t) {
                      std::vector<int32_t> row = selection(rng, p[t], K);
                      if (all_masked && t == T - 1) std::fill(row.begin(), row.end(), -1);
                      sel.insert(sel.end(), row.begin(), row.end());
                    }
                    TensorView idx = r.ints(sel, {T, K});
                    TensorView out = r.output(Ty::kAct, {T, H, Dv});
                    r.be.sparse_attention({q, kv, idx, out, scale});
                    return std::vector<Out>{r.read("out", out)};
                  }});
  };
  add("1 token, odd dims 40/24, few keys", 1, 3, 40, 24, 5, 8, 40, 0, false, 0.2f);
  add("strided q, selection past visible keys, a query with none", 6, 4, 48, 32, 20, 16, 56, 8, true, 0.15f);
  const ModelShapes& m = kMini;
  const float mini_scale = 1.0f / std::sqrt(float(m.nope + m.rd));
  add("dsa-mini T=7 S=300 K=256", 7, m.heads, m.kvlr + m.rd, m.kvlr, 300, m.topk, m.kvlr + m.rd, 0, false, mini_scale);
  add("dsa-mini decode T=1 S=300", 1, m.heads, m.kvlr + m.rd, m.kvlr, 300, m.topk, m.kvlr + m.rd, 0, false, mini_scale);
  const ModelShapes& g = kGlm;
  const float glm_scale = 1.0f / std::sqrt(float(g.nope + g.rd));
  const int lat = g.kvlr + g.rd;
  add("glm47flash T=64 S=4096 K=2048 (wgmma)", 64, g.heads, lat, g.kvlr, 4096, g.topk, lat, 0, false, glm_scale);
  add("glm47flash T=4 S=4096 K=2048 (split)", 4, g.heads, lat, g.kvlr, 4096, g.topk, lat, 0, false, glm_scale);
  add("glm47flash decode T=1 S=3000", 1, g.heads, lat, g.kvlr, 3000, g.topk, lat, 0, false, glm_scale);
  add("glm47flash T=3 short context (masked tails)", 3, g.heads, lat, g.kvlr, 700, g.topk, lat, 0, true, glm_scale);
  add("Dk 640 + K 6000 (beyond the generic bf16 kernel)", 2, 2, 640, 64, 6000, 6000, 640, 0, false, 0.05f, false);
}

void mlp_cases(std::vector<Case>& cs) {
  // gap: a placement between gate and up (their rows are not adjacent: two GEMMs on CUDA).
  auto add = [&](std::string name, int T, int H, int I, Ty y_ty, bool gap = false) {
    cs.push_back({"mlp", name, true, [=](OpRun& r) {
                    TensorView x = r.input("x", Ty::kAct, {T, H});
                    MlpWeightsView w;
                    w.gate = r.weight("gate", {I, H}, 1.0f / std::sqrt(float(H)));
                    if (gap) r.weight("gap", {64}, 1.0f);
                    w.up = r.weight("up", {I, H}, 1.0f / std::sqrt(float(H)));
                    w.down = r.weight("down", {H, I}, 1.0f / std::sqrt(float(I)));
                    TensorView y = r.output(y_ty, {T, H});
                    r.be.mlp({x, y, w});
                    return std::vector<Out>{r.read("y", y)};
                  }});
  };
  add("1 token, odd 37 / 19 (y act)", 1, 37, 19, Ty::kAct);
  add("odd 37 / 19, T=3 (y f32)", 3, 37, 19, Ty::kF32);
  add("gate and up not adjacent, T=4 (y f32)", 4, 64, 48, Ty::kF32, true);
  add("dsa-mini dense T=7 (y f32)", 7, kMini.H, kMini.I, Ty::kF32);
  add("dsa-mini dense T=1 (y act)", 1, kMini.H, kMini.I, Ty::kAct);
  add("glm47flash dense T=16 (y f32)", 16, kGlm.H, kGlm.I, Ty::kF32);
  add("glm47flash shared expert T=1 (y f32)", 1, kGlm.H, kGlm.moe_I, Ty::kF32);

  auto acc = [&](std::string name, int T, int H, int I) {
    cs.push_back({"mlp", name, true, [=](OpRun& r) {
                    TensorView x = r.input("x", Ty::kAct, {T, H});
                    MlpWeightsView w;
                    w.gate = r.weight("gate", {I, H}, 1.0f / std::sqrt(float(H)));
                    w.up = r.weight("up", {I, H}, 1.0f / std::sqrt(float(H)));
                    w.down = r.weight("down", {H, I}, 1.0f / std::sqrt(float(I)));
                    TensorView y = r.input("y", Ty::kF32, {T, H}, -4.0f, 4.0f);
                    r.watch(y);
                    r.be.mlp({.x = x, .y = y, .w = w, .accumulate = true});
                    return std::vector<Out>{r.read("y", y)};
                  }});
  };
  acc("dsa-mini dense T=7 into the residual", 7, kMini.H, kMini.I);
  acc("glm47flash dense T=1 into the residual", 1, kGlm.H, kGlm.I);
}

struct MoeCfg {
  int T, H, E, K, I, Is, G, topk_group;
  bool norm;
  float scaling;
  bool irregular;  // a placement between two experts: their weights are not evenly spaced
  bool accumulate = false;  // into y (random before the op)
};

void moe_cases(std::vector<Case>& cs) {
  auto add = [&](std::string name, MoeCfg c) {
    cs.push_back({"moe", name, true, [=](OpRun& r) {
                    TensorView x = r.input("x", Ty::kAct, {c.T, c.H});
                    TensorView router = r.weight("router", {c.E, c.H}, 3.0f / std::sqrt(float(c.H)));
                    TensorView bias = r.weight("bias", {c.E}, 0.05f, true);
                    std::vector<MlpWeightsView> ex(c.E);
                    const float sg = 1.0f / std::sqrt(float(c.H)), sd = 1.0f / std::sqrt(float(c.I));
                    for (int e = 0; e < c.E; ++e) {
                      if (c.irregular && e == c.E / 2) r.weight("gap", {64}, 1.0f);
                      ex[e].gate = r.weight("gate" + std::to_string(e), {c.I, c.H}, sg);
                      ex[e].up = r.weight("up" + std::to_string(e), {c.I, c.H}, sg);
                      ex[e].down = r.weight("down" + std::to_string(e), {c.H, c.I}, sd);
                    }
                    MlpWeightsView sh;
                    if (c.Is > 0) {
                      sh.gate = r.weight("sgate", {c.Is, c.H}, sg);
                      sh.up = r.weight("sup", {c.Is, c.H}, sg);
                      sh.down = r.weight("sdown", {c.H, c.Is}, 1.0f / std::sqrt(float(c.Is)));
                    }
                    TensorView y = c.accumulate ? r.input("y", Ty::kF32, {c.T, c.H}, -4.0f, 4.0f)
                                                : r.output(Ty::kF32, {c.T, c.H});
                    if (c.accumulate) r.watch(y);
                    MoeOp op;
                    op.x = x;
                    op.y = y;
                    op.router = router;
                    op.router_bias = bias;
                    op.experts = ex;
                    op.shared = c.Is > 0 ? &sh : nullptr;
                    op.groups = c.G;
                    op.topk_group = c.topk_group;
                    op.experts_per_token = c.K;
                    op.norm_topk_prob = c.norm;
                    op.routed_scaling = c.scaling;
                    op.accumulate = c.accumulate;
                    r.be.moe(op);
                    return std::vector<Out>{r.read("y", y)};
                  }});
  };
  const ModelShapes& m = kMini;
  add("dsa-mini T=7 (+ shared)", {7, m.H, m.E, m.K, m.moe_I, m.moe_I, 1, 1, true, 2.0f, false});
  add("dsa-mini decode T=1 (+ shared)", {1, m.H, m.E, m.K, m.moe_I, m.moe_I, 1, 1, true, 2.0f, false});
  add("dsa-mini T=5, experts not evenly placed (packed copy)", {5, m.H, m.E, m.K, m.moe_I, 0, 1, 1, true, 2.0f, true});
  add("decode T=1, experts not evenly placed", {1, m.H, m.E, m.K, m.moe_I, m.moe_I, 1, 1, true, 2.0f, true});
  add("odd widths 36 / 20 (per-expert GEMMs), T=5", {5, 36, 6, 2, 20, 12, 1, 1, true, 1.5f, false});
  // 40 x 24 bf16 rows are not a multiple of the placement alignment: gate and up are evenly spaced
  // but not adjacent (separate gate and up grouped GEMMs / GEMVs).
  add("40 / 24: gate and up not adjacent, T=6", {6, 40, 4, 2, 24, 16, 1, 1, true, 1.0f, false});
  add("40 / 24: gate and up not adjacent, decode T=1", {1, 40, 4, 2, 24, 16, 1, 1, true, 1.0f, false});
  add("group-limited routing 16 experts, 4 groups, top-2 groups, k=4, no norm",
      {9, 64, 16, 4, 32, 0, 4, 2, false, 2.5f, false});
  add("deepseek-v3.2 routing (256 experts, 8 groups, top-4, k=8), small dims",
      {4, 64, 256, 8, 32, 32, 8, 4, true, 2.5f, false});
  const ModelShapes& g = kGlm;
  add("glm47flash dims (8 experts of 64) k=4 T=16 (+ shared)", {16, g.H, 8, g.K, g.moe_I, g.moe_I, 1, 1, true, 1.8f, false});
  add("glm47flash dims (8 experts of 64) decode T=1", {1, g.H, 8, g.K, g.moe_I, g.moe_I, 1, 1, true, 1.8f, false});
  add("glm47flash routing (64 experts, k=4), trimmed dims, T=12", {12, 128, g.E, g.K, 64, 64, 1, 1, true, 1.8f, false});
  add("dsa-mini T=7 into the residual", {7, m.H, m.E, m.K, m.moe_I, m.moe_I, 1, 1, true, 2.0f, false, true});
  add("glm47flash dims decode T=1 into the residual", {1, g.H, 8, g.K, g.moe_I, g.moe_I, 1, 1, true, 1.8f, false, true});
  add("odd widths 36 / 20, T=5, into the residual", {5, 36, 6, 2, 20, 12, 1, 1, true, 1.5f, false, true});
}

void elementwise_cases(std::vector<Case>& cs) {
  auto embed = [&](std::string name, int T, int V, int H, Ty out_ty, int off) {
    cs.push_back({"embed", name, true, [=](OpRun& r) {
                    TensorView table = r.weight("table", {V, H}, 1.0f);
                    Rng rng(hash_str(name));
                    std::vector<int32_t> ids(T);
                    for (int& i : ids) i = rng.below(V);
                    if (T > 2) ids[T - 1] = ids[0];  // a repeated id
                    TensorView iv = r.ints(ids, {T});
                    TensorView out = r.output(out_ty, {T, off + H + 2}).cols(off, H);
                    r.be.embed({table, iv, out});
                    return std::vector<Out>{r.read("out", out)};
                  }});
  };
  embed("1 token, odd width 37", 1, 11, 37, Ty::kF32, 0);
  embed("dsa-mini T=7 (out f32 slice)", 7, 1000, kMini.H, Ty::kF32, 3);
  embed("glm47flash (vocab trimmed) T=5", 5, 2048, kGlm.H, Ty::kF32, 0);

  auto add = [&](std::string name, int T, int W, Ty y_ty, int pad) {
    cs.push_back({"add", name, true, [=](OpRun& r) {
                    TensorView x = r.input("x", Ty::kF32, {T, W + pad}).cols(pad / 2, W);
                    r.watch(x);
                    TensorView y = r.input("y", y_ty, {T, W + pad}).cols(pad, W);
                    r.be.add({x, y});
                    return std::vector<Out>{r.read("x", x)};
                  }});
  };
  add("residual f32 += act", 7, 256, Ty::kAct, 0);
  add("f32 += f32, strided, odd width", 3, 37, Ty::kF32, 4);
  add("1 token f32 += act, strided", 1, 2048, Ty::kAct, 8);

  auto scale = [&](std::string name, int T, int W, Ty ty, int pad, float f) {
    cs.push_back({"scale", name, true, [=](OpRun& r) {
                    TensorView x = r.input("x", ty, {T, W + pad}).cols(pad, W);
                    r.watch(x);
                    r.be.scale({x, f});
                    return std::vector<Out>{r.read("x", x)};
                  }});
  };
  scale("f32 x 1/sqrt(32)", 7, 32, Ty::kF32, 0, 0.17677669f);
  scale("act, strided odd width", 3, 37, Ty::kAct, 3, -1.75f);

  // dst (a slice of a wider buffer) = src (a slice of its own wider buffer), 2-D or 3-D.
  auto copy = [&](std::string name, Shape src_full, int src_off, Shape dst_full, int dst_off, int width, Ty src_ty,
                  Ty dst_ty) {
    cs.push_back({"copy", name, true, [=](OpRun& r) {
                    TensorView src;
                    if (src_ty == Ty::kI32) {
                      int64_t n = 1;
                      for (int64_t s : src_full) n *= s;
                      std::vector<int32_t> v(n);
                      Rng rng(hash_str(name));
                      for (int32_t& e : v) e = rng.below(1 << 20) - 7;
                      src = r.ints(v, src_full).cols(src_off, width);
                    } else {
                      src = r.input("src", src_ty, src_full).cols(src_off, width);
                    }
                    TensorView dst = r.output(dst_ty, dst_full).cols(dst_off, width);
                    r.be.copy({src, dst});
                    return std::vector<Out>{src_ty == Ty::kI32 ? r.read_idx("dst", dst, true) : r.read("dst", dst)};
                  }});
  };
  copy("act -> act column slices (2-D)", {5, 40}, 8, {5, 30}, 2, 24, Ty::kAct, Ty::kAct);
  copy("int32 selections [T, k]", {4, 16}, 0, {4, 16}, 0, 16, Ty::kI32, Ty::kI32);
  copy("f32 -> act", {3, 37}, 0, {3, 37}, 0, 37, Ty::kF32, Ty::kAct);
  copy("act -> f32 slice", {3, 40}, 3, {3, 45}, 5, 37, Ty::kAct, Ty::kF32);
  copy("3-D: q rope part into qabs (dsa-mini)", {7, kMini.heads, kMini.nope + kMini.rd}, kMini.nope,
       {7, kMini.heads, kMini.kvlr + kMini.rd}, kMini.kvlr, kMini.rd, Ty::kAct, Ty::kAct);
  copy("3-D f32 -> act, glm47flash qabs rope part", {4, kGlm.heads, kGlm.nope + kGlm.rd}, kGlm.nope,
       {4, kGlm.heads, kGlm.kvlr + kGlm.rd}, kGlm.kvlr, kGlm.rd, Ty::kF32, Ty::kAct);

  // A chunk's rows into cache rows at positions read in backend memory (rows outside skipped; the
  // other cache rows keep their poison).
  auto copy_rows = [&](std::string name, int n, int cache_rows, int width, std::vector<int32_t> rows) {
    cs.push_back({"copy", name, true, [=](OpRun& r) {
                    const TensorView src = r.input("src", Ty::kAct, {n, width});
                    const TensorView dst = r.output(Ty::kAct, {cache_rows, width});
                    r.be.copy({.src = src, .dst = dst, .dst_rows = r.ints(rows, {n})});
                    return std::vector<Out>{r.read("dst", dst)};
                  }});
  };
  copy_rows("chunk rows into latent cache rows (glm47flash width)", 3, 10, kGlm.kvlr + kGlm.rd, {7, 2, 9});
  copy_rows("rows outside the cache skipped", 4, 6, 128, {5, -1, 6, 0});
}

const std::vector<Case>& all_cases() {
  static const std::vector<Case> cases = [] {
    std::vector<Case> cs;
    linear_cases(cs);
    linear_heads_cases(cs);
    norm_cases(cs);
    rope_cases(cs);
    cache_rows_cases(cs);
    indexer_cases(cs);
    topk_cases(cs);
    pipeline_cases(cs);
    attention_cases(cs);
    mlp_cases(cs);
    moe_cases(cs);
    elementwise_cases(cs);
    return cs;
  }();
  return cases;
}


// ---------------------------------------------------------------- running a backend

struct Target {
  std::string label;
  Backend* be;
  DType act;
  double tol;
};

Backend& reference_backend() {
  static std::unique_ptr<Backend> be = make_cpu_backend();
  return *be;
}

// The CPU reference outputs of case i with inputs rounded (or not) to bf16, computed once.
const std::vector<Out>& reference(size_t i, bool round, std::string* error) {
  static std::map<std::pair<size_t, bool>, std::vector<Out>> cache;
  const auto key = std::make_pair(i, round);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  const Case& c = all_cases()[i];
  try {
    OpRun r(reference_backend(), DType::kF32, round, c.op + "/" + c.name);
    return cache[key] = c.body(r);
  } catch (const std::exception& e) {
    *error = e.what();
    static const std::vector<Out> none;
    return none;
  }
}

void run_target(const Target& tg) {
  const bool round = tg.act == DType::kBF16;
  const bool exact = tg.act == DType::kF32;
  int ok = 0, unsupported = 0, failed = 0;
  std::vector<std::string> failures;
  for (size_t i = 0; i < all_cases().size(); ++i) {
    const Case& c = all_cases()[i];
    const std::string head = str("[backend-ops] %-16s %-13s %-58s", c.op.c_str(), tg.label.c_str(), c.name.c_str());
    std::string error;
    const std::vector<Out>& ref = reference(i, round, &error);
    if (!error.empty()) {
      std::printf("%s REFERENCE FAILED: %s\n", head.c_str(), error.c_str());
      failures.push_back(head + " reference failed: " + error);
      ++failed;
      continue;
    }
    std::vector<Out> got;
    try {
      OpRun r(*tg.be, tg.act, round, c.op + "/" + c.name);
      got = c.body(r);
    } catch (const std::exception& e) {
      // A refusal names the op ("backend op <op>: ..."); anything else (a CUDA error, a kernel's
      // own argument check) is a failure.
      const std::string what = e.what();
      const bool refusal = what.rfind("backend op ", 0) == 0;
      if (refusal && !c.required) {
        std::printf("%s not supported: %s\n", head.c_str(), what.c_str());
        ++unsupported;
      } else {
        std::printf("%s %s: %s FAIL\n", head.c_str(), refusal ? "not supported (required)" : "ERROR", what.c_str());
        failures.push_back(head + " " + what);
        ++failed;
      }
      std::fflush(stdout);
      continue;
    }
    bool all_ok = got.size() == ref.size();
    std::string text;
    std::map<std::string, double> float_err;
    for (size_t o = 0; o < got.size() && o < ref.size(); ++o) {
      Verdict v;
      if (ref[o].is_index) {
        const Out* scores = nullptr;
        for (const Out& s : ref)
          if (!ref[o].tie_window_from.empty() && s.name == ref[o].tie_window_from) scores = &s;
        const double window = scores ? 2.0 * float_err[ref[o].tie_window_from] + 1e-6 : 0.0;
        v = compare_index(ref[o], got[o], exact, scores, window);
      } else {
        v = compare_float(ref[o], got[o], tg.tol);
        float_err[ref[o].name] = v.float_err;
      }
      all_ok = all_ok && v.ok;
      text += (text.empty() ? "" : "; ") + (got.size() > 1 ? got[o].name + ": " : std::string()) + v.text;
    }
    std::printf("%s %s %s\n", head.c_str(), text.c_str(), all_ok ? "ok" : "FAIL");
    std::fflush(stdout);
    if (all_ok) {
      ++ok;
    } else {
      failures.push_back(head + " " + text);
      ++failed;
    }
  }
  std::printf("[backend-ops] %s: %zu cases, %d ok, %d not supported, %d failed; %.1f MiB in use\n", tg.label.c_str(),
              all_cases().size(), ok, unsupported, failed, tg.be->bytes_in_use() / 1048576.0);
  for (const std::string& f : failures) ADD_FAILURE() << f;
}

// The CUDA backend of `precision` on GPU 0, or null with the reason there is none.
std::unique_ptr<Backend> cuda_backend(Precision precision, std::string* why) {
#ifdef INDEXCACHE_HAVE_CUDA
  if (!cuda::cuda_available()) {
    *why = "no usable CUDA device";
    return nullptr;
  }
  return make_cuda_backend(0, precision);
#else
  (void)precision;
  *why = "built without CUDA";
  return nullptr;
#endif
}

// The CPU's row-indexed copy by hand: rows land at dst_rows, rows outside are skipped, the others
// are untouched (the device backends are checked against this op above).
TEST(BackendOps, CpuCopyToIndexedRows) {
  std::unique_ptr<Backend> be = make_cpu_backend();
  // dst: the first 4 rows of a 6-row buffer, so a write past dst would show in rows 4 and 5.
  Tensor src = be->tensor(DType::kF32, 3, 2), buf = be->tensor(DType::kF32, 6, 2), rows = be->tensor(DType::kI32, 3, 1);
  const TensorView dst = buf.view.rows(0, 4);
  const std::vector<float> s{1, 2, 3, 4, 5, 6};
  const std::vector<int32_t> at{3, 4, 0};  // row 1 -> 4: outside a 4-row dst, skipped
  std::vector<float> d(12, -1.0f);
  be->upload(src.view, s.data());
  be->upload(buf.view, d.data());
  be->upload(rows.view, at.data());
  be->copy({.src = src.view, .dst = dst, .dst_rows = view1d(rows.view.data, DType::kI32, 3)});
  be->download(buf.view, d.data());
  EXPECT_EQ(d, (std::vector<float>{5, 6, -1, -1, -1, -1, 1, 2, -1, -1, -1, -1}));
}

// The CPU's fused forms against the separate ops they stand for, bit for bit (the device backends
// are checked against the fused CPU ops above): linear with alpha (then scale) and accumulate (into
// a temporary, then add), rope from src (copy, then in place), cache_rows (norm, copy, rope, copy to
// the rows at positions; the other rows untouched).
TEST(BackendOps, CpuFusedOpsEqualTheirSteps) {
  std::unique_ptr<Backend> be = make_cpu_backend();
  Rng rng(11);
  auto filled = [&](int64_t rows, int64_t cols) {
    Tensor t = be->tensor(DType::kF32, rows, cols);
    float* p = t.view.as<float>();
    for (int64_t i = 0; i < rows * cols; ++i) p[i] = static_cast<float>(rng.below(20001) - 10000) / 5000.0f;
    return t;
  };
  auto values = [](const Tensor& t) {
    const float* p = t.view.as<const float>();
    return std::vector<float>(p, p + t.view.numel());
  };
  const int T = 5, in = 37, out = 29;
  Tensor x = filled(T, in), w = filled(out, in), y0 = filled(T, out);
  // accumulate
  Tensor fused = filled(T, out), steps = filled(T, out), tmp = be->tensor(DType::kF32, T, out);
  std::copy_n(y0.view.as<float>(), T * out, fused.view.as<float>());
  std::copy_n(y0.view.as<float>(), T * out, steps.view.as<float>());
  be->linear({.x = x.view, .w = w.view, .y = fused.view, .alpha = 0.25f, .accumulate = true});
  be->linear({.x = x.view, .w = w.view, .y = tmp.view});
  be->scale({.x = tmp.view, .factor = 0.25f});
  be->add({.x = steps.view, .y = tmp.view});
  EXPECT_EQ(values(fused), values(steps));
  EXPECT_NE(values(fused), values(y0));

  // rope from src, and cache_rows
  const int P = 16, rd = 8, wdt = 24, nd = 16;
  Tensor cosv = filled(P, rd / 2), sinv = filled(P, rd / 2), pos = be->tensor(DType::kI32, T, 1);
  const std::vector<int32_t> at{9, 2, 14, 0, 5};
  std::copy(at.begin(), at.end(), pos.view.as<int32_t>());
  const TensorView positions = view1d(pos.view.data, DType::kI32, T);
  Tensor src = filled(T, rd), xa = filled(T, wdt), xb = be->tensor(DType::kF32, T, wdt);
  std::copy_n(xa.view.as<float>(), T * wdt, xb.view.as<float>());
  be->rope({.x = xa.view, .offset = 4, .rope_dim = rd, .cos = cosv.view, .sin = sinv.view, .positions = positions,
            .src = src.view});
  be->copy({.src = src.view, .dst = xb.view.cols(4, rd)});
  be->rope({.x = xb.view, .offset = 4, .rope_dim = rd, .cos = cosv.view, .sin = sinv.view, .positions = positions});
  EXPECT_EQ(values(xa), values(xb));

  Tensor raw = filled(T, wdt), nw = filled(1, nd), c1 = filled(P, wdt), c2 = be->tensor(DType::kF32, P, wdt);
  std::copy_n(c1.view.as<float>(), P * wdt, c2.view.as<float>());
  const std::vector<float> before = values(c1);
  be->cache_rows({.x = raw.view, .norm_w = view1d(nw.view.data, DType::kF32, nd), .cache = c1.view,
                  .positions = positions, .cos = cosv.view, .sin = sinv.view, .norm_dim = nd, .eps = 1e-6f,
                  .rope_offset = nd, .rope_dim = rd});
  Tensor r = be->tensor(DType::kF32, T, wdt);
  be->norm({.x = raw.view.cols(0, nd), .w = view1d(nw.view.data, DType::kF32, nd), .y = r.view.cols(0, nd), .eps = 1e-6f});
  be->copy({.src = raw.view.cols(nd, wdt - nd), .dst = r.view.cols(nd, wdt - nd)});
  be->rope({.x = r.view, .offset = nd, .rope_dim = rd, .cos = cosv.view, .sin = sinv.view, .positions = positions});
  be->copy({.src = r.view, .dst = c2.view, .dst_rows = positions});
  EXPECT_EQ(values(c1), values(c2));
  for (int row = 0; row < P; ++row) {
    const bool written = std::find(at.begin(), at.end(), row) != at.end();
    const bool same = std::equal(before.begin() + row * wdt, before.begin() + (row + 1) * wdt,
                                 c1.view.as<const float>() + row * wdt);
    EXPECT_EQ(same, !written) << "cache row " << row;
  }
}

TEST(BackendOps, Cpu) {
  std::unique_ptr<Backend> be = make_cpu_backend();
  run_target({be->name(), be.get(), be->activation_dtype(), 1e-5});
}

TEST(BackendOps, CudaF32) {
  std::string why;
  std::unique_ptr<Backend> be = cuda_backend(Precision::kF32, &why);
  if (!be) GTEST_SKIP() << "skipped: " << why;
  ASSERT_EQ(be->activation_dtype(), DType::kF32);
  run_target({be->name(), be.get(), DType::kF32, 1e-4});
}

TEST(BackendOps, CudaBf16) {
  std::string why;
  std::unique_ptr<Backend> be = cuda_backend(Precision::kBf16, &why);
  if (!be) GTEST_SKIP() << "skipped: " << why;
  ASSERT_EQ(be->activation_dtype(), DType::kBF16);
  run_target({be->name(), be.get(), DType::kBF16, 2e-2});
}

// Memory, placement and the one-line errors of the CUDA backend.
TEST(BackendOps, CudaMemoryAndErrors) {
#ifdef INDEXCACHE_HAVE_CUDA
  if (!cuda::cuda_available()) {
    // A CUDA build on a machine without a GPU: the backend says so in one line.
    try {
      make_cuda_backend(0, Precision::kBf16);
      FAIL() << "make_cuda_backend succeeded without a CUDA device";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kRuntime);
      EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos) << e.what();
      std::printf("[backend-ops] no device: %s\n", e.what());
    }
    GTEST_SKIP() << "skipped (no usable CUDA device): the rest needs a GPU";
  }
  try {
    make_cuda_backend(999, Precision::kBf16);
    FAIL() << "--gpu 999 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kRuntime);
    EXPECT_NE(std::string(e.what()).find("--gpu 999: only "), std::string::npos) << e.what();
    std::printf("[backend-ops] bad ordinal: %s\n", e.what());
  }
  for (Precision p : {Precision::kBf16, Precision::kF32}) {
    std::unique_ptr<Backend> be = make_cuda_backend(0, p);
    const size_t base = be->bytes_in_use();
    try {
      [[maybe_unused]] Buffer b = be->alloc(size_t{1} << 50);
      FAIL() << "a 1 PiB allocation succeeded";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("out of device memory: needs"), std::string::npos) << e.what();
      std::printf("[backend-ops] %s huge alloc: %s\n", be->name().c_str(), e.what());
    }
    {
      Buffer b = be->alloc(1 << 20);
      EXPECT_GE(be->bytes_in_use(), base + (1 << 20));
    }
    EXPECT_EQ(be->bytes_in_use(), base);
    // Placement: once per host pointer, shape and dtype; the weight dtype follows the precision.
    std::vector<float> w(6 * 10, 0.25f);
    const int64_t shape[2] = {6, 10};
    const TensorView a = be->place(w.data(), shape);
    const TensorView b = be->place(w.data(), shape);
    const TensorView f = be->place(w.data(), shape, true);
    EXPECT_EQ(a.data, b.data);
    EXPECT_EQ(a.dtype, p == Precision::kF32 ? DType::kF32 : DType::kBF16);
    EXPECT_EQ(f.dtype, DType::kF32);
    EXPECT_EQ(a.rank, 2);
    EXPECT_EQ(a.shape[0], 6);
    EXPECT_EQ(a.stride[0], 10);
    EXPECT_GT(be->bytes_in_use(), base);
    std::vector<float> back(60);
    be->download(f, back.data());
    EXPECT_EQ(back, w);
    // Shapes that disagree are refused in one line, naming the op.
    Tensor x = be->tensor(be->activation_dtype(), 2, 7), y = be->tensor(be->activation_dtype(), 2, 6);
    try {
      be->linear({x.view, a, {}, y.view});
      FAIL() << "linear with in 7 against w [6, 10] accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("linear"), std::string::npos) << e.what();
    }
  }
#else
  GTEST_SKIP() << "skipped: built without CUDA";
#endif
}

}  // namespace
}  // namespace indexcache
