// The GPU model runner (see synthetic_gpu_model.h). Math mirrors src/model/session.cpp and
// src/model/moe.cpp; storage is bf16 (weights, activations between GEMMs, the caches), the residual
// stream and every GEMM output that feeds a norm is f32.
//
// Per layer and chunk of n tokens (positions p0..p0+n-1, read from device memory):
//   hn = RMSNorm(x)                                   [other]
//   qr = RMSNorm(q_a(hn)); q = q_b(qr)                [gemm, other]
//   latent cache[p] = [RMSNorm(kv_a(hn)[:kvlr]) | RoPE(kv_a(hn)[kvlr:])]      [gemm, other]
//   F layers: indexer q/k/w projections [gemm], key LayerNorm + RoPE into the indexer cache and
//     RoPE of the indexer queries [other], fused scores [indexer], radix top-k [topk]
//   qabs[:, h] = [q_nope[h] @ W_uk[h] | RoPE(q_rope[h])]                       [gemm, other]
//   o_lat = sparse MLA(qabs, latent cache, selection)                          [attention]
//   x += o_proj(o_lat[h] @ W_uv[h]^T over heads)                               [gemm]
//   hn = RMSNorm(x); x += dense MLP(hn) [gemm, other] or MoE(hn) [moe]
// The selection buffer holds the latest F layer's top-k of the chunk, which is what every S layer
// up to the next F layer reuses (IndexPlan::source_layer is the nearest preceding F layer).
#include "gpu/synthetic_gpu_model.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numbers>
#include <string>
#include <utility>
#include <vector>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/dsa_bf16.h"
#include "backend/cuda/dsa_generic.h"
#include "gpu/gemm.h"
#include "gpu/gpu_weights.h"
#include "gpu/grouped_gemm.h"
#include "gpu/layer_kernels.h"
#include "indexcache/error.h"
#include "model/rope_table.h"

namespace indexcache::gpu {

namespace {

using cuda::DeviceBuffer;

constexpr float kLatentNormEps = 1e-6f;   // q_a_layernorm / kv_a_layernorm (transformers default)
constexpr float kIndexerNormEps = 1e-6f;  // indexer k_norm
constexpr uint64_t kTokenSeedSalt = 0x5EED;

double gib(double bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }

std::string fmt_gib(double bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f GiB", gib(bytes));
  return b;
}

// Hands out 256-byte aligned pieces of one allocation; with base == nullptr it only measures.
class Carver {
 public:
  explicit Carver(char* base = nullptr) : base_(base) {}
  template <class T>
  T* take(size_t count) {
    off_ = (off_ + 255) / 256 * 256;
    T* p = base_ ? reinterpret_cast<T*>(base_ + off_) : nullptr;
    off_ += count * sizeof(T);
    return p;
  }
  size_t size() const { return off_; }

 private:
  char* base_;
  size_t off_ = 0;
};

enum Cls { kIndexer, kTopk, kAttention, kGemmCls, kMoe, kOther, kClasses };

// Decode top-k: rows of at most this many keys take the single-block radix select.
constexpr int kMultiBlockTopkKeys = 32768;

// Wall time of one phase on a stream: events at start() and stop(); stop() waits and returns seconds.
class PhaseClock {
 public:
  explicit PhaseClock(cudaStream_t s) : s_(s) {
    IC_CUDA_CHECK(cudaEventCreate(&e0_));
    const cudaError_t err = cudaEventCreate(&e1_);
    if (err != cudaSuccess) {
      cudaEventDestroy(e0_);
      IC_CUDA_CHECK(err);
    }
  }
  ~PhaseClock() {
    cudaEventDestroy(e0_);
    cudaEventDestroy(e1_);
  }
  PhaseClock(const PhaseClock&) = delete;
  PhaseClock& operator=(const PhaseClock&) = delete;
  void start() { IC_CUDA_CHECK(cudaEventRecord(e0_, s_)); }
  double stop() {
    IC_CUDA_CHECK(cudaEventRecord(e1_, s_));
    IC_CUDA_CHECK(cudaEventSynchronize(e1_));
    float ms = 0;
    IC_CUDA_CHECK(cudaEventElapsedTime(&ms, e0_, e1_));
    return ms * 1e-3;
  }

 private:
  cudaStream_t s_;
  cudaEvent_t e0_ = nullptr, e1_ = nullptr;
};

// CUDA events around kernel classes; off = no events at all (graph capture, untimed runs).
class Timer {
 public:
  Timer(cudaStream_t s, bool on) : s_(s), on_(on) {}
  ~Timer() {
    for (cudaEvent_t e : pool_) cudaEventDestroy(e);
  }
  class Scope {
   public:
    Scope(Timer& t, Cls c) : t_(t) {
      if (t_.on_) t_.mark(c);
    }
    ~Scope() {
      if (t_.on_) t_.mark(kClasses);
    }

   private:
    Timer& t_;
  };
  Scope scope(Cls c) { return Scope(*this, c); }
  KernelTimes collect() {
    KernelTimes k;
    if (!on_ || marks_.empty()) return k;
    IC_CUDA_CHECK(cudaEventSynchronize(pool_[used_ - 1]));
    double sec[kClasses] = {};
    for (size_t i = 0; i + 1 < marks_.size(); i += 2) {
      float ms = 0;
      IC_CUDA_CHECK(cudaEventElapsedTime(&ms, pool_[marks_[i].second], pool_[marks_[i + 1].second]));
      sec[marks_[i].first] += ms * 1e-3;
    }
    k.indexer = sec[kIndexer];
    k.topk = sec[kTopk];
    k.attention = sec[kAttention];
    k.gemm = sec[kGemmCls];
    k.moe = sec[kMoe];
    k.other = sec[kOther];
    return k;
  }

 private:
  void mark(int cls) {
    if (used_ == pool_.size()) {
      cudaEvent_t e;
      IC_CUDA_CHECK(cudaEventCreate(&e));
      pool_.push_back(e);
    }
    IC_CUDA_CHECK(cudaEventRecord(pool_[used_], s_));
    marks_.emplace_back(cls, used_++);
  }
  cudaStream_t s_;
  bool on_;
  std::vector<cudaEvent_t> pool_;
  size_t used_ = 0;
  std::vector<std::pair<int, size_t>> marks_;  // (class, event) at starts; (kClasses, event) at ends
};

// Indexer weights are kept on every layer that has them: plans change freely.
using LayerW = GpuLayerWeights;

// Whether cuBLASLt may take `a` (bf16 rows and batch strides 16-byte aligned); else gemm_generic.
bool lt_ok(const GemmArgs& a) {
  auto al = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool strides = a.batch == 1 || (a.x_batch_stride % 8 == 0 && a.w_batch_stride % 8 == 0 &&
                                        a.y_batch_stride % 8 == 0);
  return a.ldx % 8 == 0 && a.ldw % 8 == 0 && a.ldy % 8 == 0 && strides && al(a.x) && al(a.w) && al(a.y);
}

// Activations of one chunk of up to `cap` tokens.
struct Work {
  int cap = 0;
  int32_t *pos, *valid, *sel, *ids;
  float *x, *qa_tmp, *kv_tmp, *idx_k_tmp, *idx_w, *scores;
  void *hn, *qr, *q, *qabs, *o_lat, *heads_out, *idx_q, *gu, *act;
  void* idx_q8;     // e4m3 indexer queries [n * Hi][Di] (RunOptions::indexer_fp8)
  float* idx_qs;    // their per-row scales [n * Hi]
  float *router_logits, *route_w, *dgu, *dy;
  int32_t *chosen, *counts, *offsets, *scratch, *slot, *slot_token;
  void *xe, *egu, *eact, *ye;
  void* mla_ws;  // sparse attention split partials (decode): preallocated so a step can be captured
  size_t mla_ws_bytes;
  void* topk_scratch;  // multi-block top-k of few-row calls (decode): sized for 8 rows of max_ctx
  size_t topk_scratch_bytes;
};

}  // namespace

struct SyntheticGpuModel::Impl {
  ModelSpec s;
  int64_t max_ctx = 0;
  uint64_t seed = 1;
  int H, nh, qlr, kvlr, nope, rd, qkd, vd, lat, Hi, Di, topk, E, K, I, Is, dense_I;
  bool tied = false;        // lm_head shares the embedding (checkpoints with tie_word_embeddings)
  bool tc_indexer = false;  // tensor-core indexer (dsa_bf16.h) or the generic one (dsa_generic.h)
  bool tc_mla = false;      // likewise for the sparse attention
  int64_t cached = 0;       // tokens of the current real-token request (prefill_ids / decode_id)
  std::vector<int32_t> host_sel;      // teacher-forced selections of one chunk
  DeviceBuffer debug_logits;          // [chunk, vocab] f32 for captured rows
  cudaStream_t stream = nullptr;
  std::unique_ptr<Gemm> gemm;
  DeviceBuffer weights_buf;
  size_t weights_bytes = 0;
  void *embed, *final_norm, *lm_head;
  std::vector<LayerW> layers;
  std::vector<DeviceBuffer> latent_cache;  // per layer [max_ctx, lat] bf16
  std::vector<DeviceBuffer> index_cache;   // per layer [max_ctx, Di] bf16, F layers of the current plan only
  // RunOptions::indexer_fp8: the F layers' keys also as e4m3 rows [max_ctx, Di] and their scales.
  bool fp8_indexer = false;
  bool fp8_rotate = false;  // RunOptions::indexer_hadamard
  std::vector<DeviceBuffer> index_cache8, index_kscale;
  DeviceBuffer rope_cos, rope_sin;         // [max_ctx, rd/2] f32
  DeviceBuffer work_buf;
  Work w{};
  DeviceBuffer logits;  // [vocab] f32: the last token's logits of the latest run
  DeviceBuffer pos_dev;  // int32: decode position
  int32_t* host_offsets = nullptr;  // pinned [E + 1]

  ~Impl() {
    if (host_offsets) cudaFreeHost(host_offsets);
    if (stream) cudaStreamDestroy(stream);
  }

  void* sv() const { return stream; }

  // ---- sizes

  size_t layout_weights(Carver& c) {
    embed = c.take<uint16_t>(size_t(s.vocab_size) * H);
    final_norm = c.take<uint16_t>(H);
    lm_head = tied ? embed : c.take<uint16_t>(size_t(s.vocab_size) * H);
    layers.assign(s.num_layers, LayerW{});
    for (int l = 0; l < s.num_layers; ++l) {
      LayerW& L = layers[l];
      L.in_norm = c.take<uint16_t>(H);
      L.post_norm = c.take<uint16_t>(H);
      L.q_a = c.take<uint16_t>(size_t(qlr) * H);
      L.q_a_norm = c.take<uint16_t>(qlr);
      L.q_b = c.take<uint16_t>(size_t(nh) * qkd * qlr);
      L.kv_a = c.take<uint16_t>(size_t(lat) * H);
      L.kv_a_norm = c.take<uint16_t>(kvlr);
      L.w_uk = c.take<uint16_t>(size_t(nh) * kvlr * nope);
      L.w_uv = c.take<uint16_t>(size_t(nh) * vd * kvlr);
      L.o = c.take<uint16_t>(size_t(H) * nh * vd);
      L.wq_b = c.take<uint16_t>(size_t(Hi) * Di * qlr);
      L.wk = c.take<uint16_t>(size_t(Di) * H);
      L.k_norm_w = c.take<uint16_t>(Di);
      L.k_norm_b = c.take<uint16_t>(Di);
      L.wproj = c.take<uint16_t>(size_t(Hi) * H);
      L.has_indexer = true;
      L.moe = l < static_cast<int>(s.layer_is_moe.size()) && s.layer_is_moe[l];
      if (L.moe) {
        L.router = c.take<uint16_t>(size_t(E) * H);
        L.router_bias = c.take<float>(E);
        L.e_gate_up = c.take<uint16_t>(size_t(E) * 2 * I * H);
        L.e_down = c.take<uint16_t>(size_t(E) * H * I);
        if (Is > 0) {
          L.s_gate_up = c.take<uint16_t>(size_t(2) * Is * H);
          L.s_down = c.take<uint16_t>(size_t(H) * Is);
        }
      } else {
        L.gate_up = c.take<uint16_t>(size_t(2) * dense_I * H);
        L.down = c.take<uint16_t>(size_t(H) * dense_I);
      }
    }
    return c.size();
  }

  // The largest split workspace the sparse attention asks for at any token count up to n (it splits
  // only while tokens x head groups leave SMs idle, so small counts decide).
  size_t mla_workspace_bytes(int n) const {
    if (!tc_mla) return 0;
    cuda::SparseMlaParams p;
    p.kv_stride = lat;
    p.num_selected = topk;
    p.heads = nh;
    p.dim_k = lat;
    p.dim_v = kvlr;
    size_t most = 0;
    for (int t = 1; t <= std::min(n, 4096); ++t) {
      p.tokens = t;
      most = std::max(most, cuda::sparse_mla_workspace_bytes(p));
    }
    return most;
  }

  // Scratch of the multi-block top-k: it applies to calls of at most 8 rows (decode), so sizing it
  // for 8 rows of the longest context covers every call.
  size_t topk_scratch_bytes() const {
    cuda::TopkRadixParams p;
    p.scores_stride = max_ctx;
    p.tokens = 8;
    p.k = topk;
    return cuda::topk_radix_scratch_bytes(p);
  }

  size_t layout_work(Carver& c, int n) {
    const size_t mlp_i = std::max(dense_I, Is);
    const size_t pairs = size_t(n) * std::max(K, 1);
    w.cap = n;
    w.pos = c.take<int32_t>(n);
    w.valid = c.take<int32_t>(n);
    w.sel = c.take<int32_t>(size_t(n) * topk);
    w.ids = c.take<int32_t>(n);
    w.x = c.take<float>(size_t(n) * H);
    w.hn = c.take<uint16_t>(size_t(n) * H);
    w.qa_tmp = c.take<float>(size_t(n) * qlr);
    w.qr = c.take<uint16_t>(size_t(n) * qlr);
    w.q = c.take<uint16_t>(size_t(n) * nh * qkd);
    w.kv_tmp = c.take<float>(size_t(n) * lat);
    w.qabs = c.take<uint16_t>(size_t(n) * nh * lat);
    w.o_lat = c.take<uint16_t>(size_t(n) * nh * kvlr);
    w.heads_out = c.take<uint16_t>(size_t(n) * nh * vd);
    w.idx_q = c.take<uint16_t>(size_t(n) * Hi * Di);
    w.idx_k_tmp = c.take<float>(size_t(n) * Di);
    w.idx_q8 = c.take<uint8_t>(size_t(n) * Hi * Di);
    w.idx_qs = c.take<float>(size_t(n) * Hi);
    w.idx_w = c.take<float>(size_t(n) * Hi);
    w.scores = c.take<float>(size_t(n) * max_ctx);
    w.gu = c.take<uint16_t>(size_t(n) * 2 * mlp_i);
    w.act = c.take<uint16_t>(size_t(n) * mlp_i);
    if (E > 0) {
      w.router_logits = c.take<float>(size_t(n) * E);
      w.chosen = c.take<int32_t>(pairs);
      w.route_w = c.take<float>(pairs);
      w.counts = c.take<int32_t>(E);
      w.offsets = c.take<int32_t>(E + 1);
      w.scratch = c.take<int32_t>(E);
      w.slot = c.take<int32_t>(pairs);
      w.slot_token = c.take<int32_t>(pairs);
      w.xe = c.take<uint16_t>(pairs * H);
      w.egu = c.take<uint16_t>(pairs * 2 * I);
      w.eact = c.take<uint16_t>(pairs * I);
      w.ye = c.take<uint16_t>(pairs * H);
      w.dgu = c.take<float>(size_t(K) * 2 * I);
      w.dy = c.take<float>(size_t(K) * H);
    }
    w.mla_ws_bytes = mla_workspace_bytes(n);
    w.mla_ws = c.take<char>(w.mla_ws_bytes);
    w.topk_scratch_bytes = topk_scratch_bytes();
    w.topk_scratch = c.take<char>(w.topk_scratch_bytes);
    return c.size();
  }

  size_t work_bytes(int n) {
    Work keep = w;
    Carver c;
    const size_t b = layout_work(c, n);
    w = keep;
    return b;
  }

  size_t cache_bytes_all_f() const { return size_t(max_ctx) * s.num_layers * (size_t(lat) + Di) * 2; }

  static size_t free_bytes() {
    size_t f = 0, t = 0;
    IC_CUDA_CHECK(cudaMemGetInfo(&f, &t));
    return f;
  }

  void ensure_work(int n) {
    if (w.cap >= n) return;
    const size_t need = work_bytes(n);
    work_buf = DeviceBuffer();
    w = Work{};
    const size_t avail = free_bytes();
    if (need + (size_t{256} << 20) > avail)
      throw_runtime("gpu memory", "chunk of " + std::to_string(n) + " tokens needs " + fmt_gib(need) +
                                      " of activations, " + fmt_gib(avail) + " free");
    work_buf = DeviceBuffer(need);
    Carver c(static_cast<char*>(work_buf.data()));
    layout_work(c, n);
  }

  void ensure_index_cache(const IndexPlan& plan) {
    if (plan.num_layers() != s.num_layers)
      throw_bad_input("plan", "has " + std::to_string(plan.num_layers()) + " layers, the model " +
                                  std::to_string(s.num_layers));
    for (int l = 0; l < s.num_layers; ++l) {
      if (plan.is_full(l) && !layers[l].has_indexer)
        throw_bad_input("plan", "layer " + std::to_string(l) +
                                    " is F (full) but the checkpoint has no indexer weights for it");
      if (!plan.is_full(l)) {
        index_cache[l] = DeviceBuffer();
      } else if (!index_cache[l].data()) {
        index_cache[l] = DeviceBuffer(size_t(max_ctx) * Di * 2);
      }
      if (!plan.is_full(l) || !fp8_indexer) {
        index_cache8[l] = DeviceBuffer();
        index_kscale[l] = DeviceBuffer();
      } else if (!index_cache8[l].data()) {
        index_cache8[l] = DeviceBuffer(size_t(max_ctx) * Di);
        index_kscale[l] = DeviceBuffer(size_t(max_ctx) * sizeof(float));
      }
    }
  }

  // Takes RunOptions::indexer_fp8 for the run that follows (before ensure_index_cache).
  void set_indexer_precision(const RunOptions& opt) {
    if (opt.indexer_fp8 && !tc_indexer)
      throw_bad_input("indexer_fp8", "needs the tensor-core indexer (index_head_dim 128, index_n_heads a multiple "
                                     "of 8 up to 128); this model has " + std::to_string(Hi) + " heads of " +
                                     std::to_string(Di));
    if (opt.indexer_hadamard && !opt.indexer_fp8)
      throw_bad_input("indexer_hadamard", "the Hadamard rotation is part of the fp8 indexer: set indexer_fp8 too");
    fp8_indexer = opt.indexer_fp8;
    fp8_rotate = opt.indexer_hadamard;
  }

  // ---- the forward pass

  // Projections: single-row products (decode) go to the bandwidth-bound GEMV, which reads the
  // weight once; cuBLASLt's M = 1 kernels are several times slower. Everything else to cuBLASLt.
  void mm(Timer& t, Cls cls, const GemmArgs& a) {
    auto sc = t.scope(cls);
    if (a.m == 1) {
      GemvArgs g;
      g.w = a.w;
      g.ldw = a.ldw;
      g.w_batch_stride = a.w_batch_stride;
      g.x = a.x;
      g.x_batch_stride = a.x_batch_stride;
      g.y = a.y;
      g.y_f32 = a.y_f32;
      g.y_batch_stride = a.y_batch_stride;
      g.batch = a.batch;
      g.rows = a.n;
      g.cols = a.k;
      g.alpha = a.alpha;
      g.beta = a.beta;
      if (gemv_supported(g)) {
        gemv(g, sv());
        return;
      }
    }
    gm(a);
  }

  // cuBLASLt where the alignment allows, else the plain generic GEMM (odd widths of small models).
  void gm(const GemmArgs& a) {
    if (lt_ok(a)) {
      gemm->run(a, sv());
      return;
    }
    cuda::GenericGemmParams g;
    g.x = a.x;
    g.ldx = a.ldx;
    g.x_batch_stride = a.x_batch_stride;
    g.w = a.w;
    g.ldw = a.ldw;
    g.w_batch_stride = a.w_batch_stride;
    g.y = a.y;
    g.ldy = a.ldy;
    g.y_batch_stride = a.y_batch_stride;
    g.y_f32 = a.y_f32;
    g.m = a.m;
    g.n = a.n;
    g.k = a.k;
    g.batch = a.batch;
    g.alpha = a.alpha;
    g.beta = a.beta;
    cuda::gemm_generic(g, sv());
  }

  GemmArgs lin(const void* x, int64_t ldx, const void* wt, void* y, int64_t ldy, bool f32, int m, int n, int k) {
    GemmArgs a;
    a.x = x;
    a.ldx = ldx;
    a.w = wt;
    a.ldw = k;
    a.y = y;
    a.ldy = ldy;
    a.y_f32 = f32;
    a.m = m;
    a.n = n;
    a.k = k;
    return a;
  }

  // One chunk of n tokens at positions p0.. (prefill) or one token at the device position (decode).
  // `keys`: indexer key count bound (p0 + n in prefill, the largest position + 1 of the run in decode).
  // real_ids: the token ids are in w.ids (else the synthetic request's); dbg: captures / forcing.
  void run_chunk(int64_t p0, int n, int keys, const IndexPlan& plan, bool decode, bool want_logits, Timer& t,
                 PhaseResult* r, bool real_ids = false, PrefillDebug* dbg = nullptr) {
    const float att_scale = static_cast<float>(s.attention_scale());
    {
      auto sc = t.scope(kOther);
      set_positions(w.pos, w.valid, decode ? pos_dev.as<int32_t>() : nullptr, decode ? 0 : static_cast<int>(p0), n,
                    sv());
      if (real_ids)
        embed_ids(embed, w.x, w.ids, n, H, sv());
      else
        embed_tokens(embed, w.x, w.pos, n, H, s.vocab_size, seed + kTokenSeedSalt, sv());
    }
    const float* cosp = rope_cos.as<float>();
    const float* sinp = rope_sin.as<float>();
    for (int l = 0; l < s.num_layers; ++l) {
      const LayerW& L = layers[l];
      {
        auto sc = t.scope(kOther);
        rms_norm(w.x, H, L.in_norm, w.hn, H, n, H, static_cast<float>(s.rms_norm_eps), sv());
      }
      // Query latent and queries.
      mm(t, kGemmCls, lin(w.hn, H, L.q_a, w.qa_tmp, qlr, true, n, qlr, H));
      {
        auto sc = t.scope(kOther);
        rms_norm(w.qa_tmp, qlr, L.q_a_norm, w.qr, qlr, n, qlr, kLatentNormEps, sv());
      }
      mm(t, kGemmCls, lin(w.qr, qlr, L.q_b, w.q, int64_t(nh) * qkd, false, n, nh * qkd, qlr));
      // The chunk's latent rows into the cache.
      void* cache = latent_cache[l].data();
      mm(t, kGemmCls, lin(w.hn, H, L.kv_a, w.kv_tmp, lat, true, n, lat, H));
      {
        auto sc = t.scope(kOther);
        finalize_latent(w.kv_tmp, L.kv_a_norm, cache, w.pos, cosp, sinp, n, kvlr, rd, kLatentNormEps, sv());
      }
      if (plan.is_full(l)) indexer(l, n, keys, t);
      if (dbg) debug_layer(l, p0, n, keys, plan.is_full(l), *dbg);
      // Absorbed queries: [q_nope[h] @ W_uk[h] | RoPE(q_rope[h])] per head.
      {
        GemmArgs a = lin(w.q, int64_t(nh) * qkd, L.w_uk, w.qabs, int64_t(nh) * lat, false, n, kvlr, nope);
        a.batch = nh;
        a.x_batch_stride = qkd;
        a.w_batch_stride = int64_t(kvlr) * nope;
        a.y_batch_stride = lat;
        mm(t, kGemmCls, a);
      }
      {
        auto sc = t.scope(kOther);
        RopeArgs ra;
        ra.src = static_cast<const uint16_t*>(w.q) + nope;
        ra.src_token_stride = int64_t(nh) * qkd;
        ra.src_head_stride = qkd;
        ra.dst = static_cast<uint16_t*>(w.qabs) + kvlr;
        ra.dst_token_stride = int64_t(nh) * lat;
        ra.dst_head_stride = lat;
        ra.tokens = n;
        ra.heads = nh;
        ra.rope_dim = rd;
        ra.cos = cosp;
        ra.sin = sinp;
        ra.positions = w.pos;
        ra.layout = RopeLayout::kInterleaved;
        rope_bf16(ra, sv());
      }
      {
        auto sc = t.scope(kAttention);
        cuda::SparseMlaParams p;
        p.q = w.qabs;
        p.kv = cache;
        p.kv_stride = lat;
        p.indices = w.sel;
        p.num_selected = topk;
        p.out = w.o_lat;
        p.tokens = n;
        p.heads = nh;
        p.dim_k = lat;
        p.dim_v = kvlr;
        p.scale = att_scale;
        p.workspace = w.mla_ws;
        p.workspace_bytes = w.mla_ws_bytes;
        (tc_mla ? cuda::sparse_mla_bf16 : cuda::sparse_mla_generic)(p, sv());
      }
      {
        GemmArgs a = lin(w.o_lat, int64_t(nh) * kvlr, L.w_uv, w.heads_out, int64_t(nh) * vd, false, n, vd, kvlr);
        a.batch = nh;
        a.x_batch_stride = kvlr;
        a.w_batch_stride = int64_t(vd) * kvlr;
        a.y_batch_stride = vd;
        mm(t, kGemmCls, a);
      }
      {
        GemmArgs a = lin(w.heads_out, int64_t(nh) * vd, L.o, w.x, H, true, n, H, nh * vd);
        a.beta = 1.0f;  // residual
        mm(t, kGemmCls, a);
      }
      // MLP / MoE.
      {
        auto sc = t.scope(kOther);
        rms_norm(w.x, H, L.post_norm, w.hn, H, n, H, static_cast<float>(s.rms_norm_eps), sv());
      }
      if (L.moe)
        moe(L, n, decode, t);
      else
        mlp(L.gate_up, L.down, dense_I, n, t, kGemmCls, kOther);
      if (r) count_flops(p0, n, plan.is_full(l), r);
    }
    if (dbg) debug_logits_rows(p0, n, *dbg);
    if (want_logits) {
      {
        auto sc = t.scope(kOther);
        rms_norm(w.x + size_t(n - 1) * H, H, final_norm, w.hn, H, 1, H, static_cast<float>(s.rms_norm_eps), sv());
      }
      mm(t, kGemmCls, lin(w.hn, H, lm_head, logits.data(), s.vocab_size, true, 1, s.vocab_size, H));
    }
  }

  void count_flops(int64_t p0, int n, bool full, PhaseResult* r) {
    // Sum over the chunk's queries of visible keys (p0 + t + 1) and selected keys min(k, p0 + t + 1).
    const double first = static_cast<double>(p0) + 1, last = static_cast<double>(p0) + n;
    const double visible = (first + last) * n / 2;
    double selected = 0;
    if (last <= topk) {
      selected = visible;
    } else if (first >= topk) {
      selected = double(topk) * n;
    } else {
      const double below = topk - first + 1;  // queries with p0 + t + 1 <= topk
      selected = (first + topk) * below / 2 + double(topk) * (n - below);
    }
    if (full) r->flops.indexer += 2.0 * Hi * Di * visible;
    r->flops.attention += 2.0 * nh * (lat + kvlr) * selected;
  }

  void indexer(int l, int n, int keys, Timer& t) {
    const LayerW& L = layers[l];
    mm(t, kGemmCls, lin(w.qr, qlr, L.wq_b, w.idx_q, int64_t(Hi) * Di, false, n, Hi * Di, qlr));
    mm(t, kGemmCls, lin(w.hn, H, L.wk, w.idx_k_tmp, Di, true, n, Di, H));
    {
      GemmArgs a = lin(w.hn, H, L.wproj, w.idx_w, Hi, true, n, Hi, H);
      a.alpha = 1.0f / std::sqrt(static_cast<float>(Hi));
      mm(t, kGemmCls, a);
    }
    {
      auto sc = t.scope(kOther);
      finalize_index_key(w.idx_k_tmp, L.k_norm_w, L.k_norm_b, index_cache[l].data(), w.pos, rope_cos.as<float>(),
                         rope_sin.as<float>(), n, Di, rd, s.indexer_rope_layout(), kIndexerNormEps, sv());
      RopeArgs ra;
      ra.src = w.idx_q;
      ra.src_token_stride = int64_t(Hi) * Di;
      ra.src_head_stride = Di;
      ra.dst = w.idx_q;
      ra.dst_token_stride = int64_t(Hi) * Di;
      ra.dst_head_stride = Di;
      ra.tokens = n;
      ra.heads = Hi;
      ra.rope_dim = rd;
      ra.cos = rope_cos.as<float>();
      ra.sin = rope_sin.as<float>();
      ra.positions = w.pos;
      ra.layout = s.indexer_rope_layout();
      rope_bf16(ra, sv());
    }
    // The fields both score kernels share: weights, positions, the score rows, the shape.
    auto common = [&](auto& p) {
      p.w = w.idx_w;
      p.positions = w.pos;
      p.scores = w.scores;
      p.scores_stride = max_ctx;
      p.tokens = n;
      p.keys = keys;
      p.heads = Hi;
      p.head_dim = Di;
      p.scale = 1.0f / std::sqrt(static_cast<float>(Di));
    };
    if (fp8_indexer) {
      auto sc = t.scope(kIndexer);  // quantization included: it is part of the fp8 indexer's cost
      // The chunk's new keys: the cache rows at its positions (read on the device: decode graphs).
      cuda::quantize_rows_fp8_at(index_cache[l].data(), index_cache8[l].data(), index_kscale[l].as<float>(), w.pos,
                                 n, sv(), fp8_rotate);
      cuda::quantize_rows_fp8(w.idx_q, w.idx_q8, w.idx_qs, int64_t(n) * Hi, sv(), fp8_rotate);
      cuda::IndexerFp8Params p;
      common(p);
      p.q = w.idx_q8;
      p.q_scale = w.idx_qs;
      p.k = index_cache8[l].data();
      p.k_scale = index_kscale[l].as<float>();
      cuda::indexer_scores_fp8(p, sv());
    } else {
      auto sc = t.scope(kIndexer);
      cuda::IndexerBf16Params p;
      common(p);
      p.q = w.idx_q;
      p.k = index_cache[l].data();
      (tc_indexer ? cuda::indexer_scores_bf16 : cuda::indexer_scores_generic)(p, sv());
    }
    {
      auto sc = t.scope(kTopk);
      cuda::TopkRadixParams p;
      p.scores = w.scores;
      p.scores_stride = max_ctx;
      p.valid = w.valid;
      p.indices = w.sel;
      p.tokens = n;
      p.k = topk;
      // The multi-block path pays several launches: worth it only for long rows (H200 decode: 33 us
      // per layer at 10K keys through it, 30 us at 200K). `keys` bounds every valid length.
      const bool multi_block = w.topk_scratch_bytes > 0 && keys > kMultiBlockTopkKeys;
      p.scratch = multi_block ? w.topk_scratch : nullptr;
      p.scratch_bytes = multi_block ? w.topk_scratch_bytes : 0;
      cuda::topk_radix(p, sv());
    }
  }

  // x += down(silu(gate(hn)) * up(hn)); gate and up rows stacked in one [2*inter, H] weight.
  void mlp(const void* gate_up, const void* down, int inter, int n, Timer& t, Cls gemm_cls, Cls act_cls) {
    mm(t, gemm_cls, lin(w.hn, H, gate_up, w.gu, 2 * int64_t(inter), false, n, 2 * inter, H));
    {
      auto sc = t.scope(act_cls);
      silu_mul_bf16(w.gu, 2 * int64_t(inter), w.act, inter, n, inter, sv());
    }
    GemmArgs a = lin(w.act, inter, down, w.x, H, true, n, H, inter);
    a.beta = 1.0f;
    mm(t, gemm_cls, a);
  }

  void moe(const LayerW& L, int n, bool decode, Timer& t) {
    mm(t, kMoe, lin(w.hn, H, L.router, w.router_logits, E, true, n, E, H));
    auto sc = t.scope(kMoe);
    RouteArgs ra;
    ra.logits = w.router_logits;
    ra.bias = L.router_bias;
    ra.n = n;
    ra.experts = E;
    ra.groups = s.n_group;
    ra.topk_group = s.topk_group;
    ra.k = K;
    ra.norm_topk_prob = s.norm_topk_prob;
    ra.scaling = static_cast<float>(s.routed_scaling_factor);
    ra.chosen = w.chosen;
    ra.weights = w.route_w;
    route_experts(ra, sv());
    Timer off(stream, false);  // the whole MoE block is one class
    if (decode && H % 8 == 0 && I % 8 == 0) {
      // Expert ids stay on the device: GEMVs over the chosen experts' weights.
      gemv_bf16(L.e_gate_up, int64_t(2) * I * H, w.chosen, w.hn, 0, w.dgu, 2 * int64_t(I), K, 2 * I, H, sv());
      silu_mul_f32(w.dgu, 2 * int64_t(I), w.eact, I, K, I, sv());
      gemv_bf16(L.e_down, int64_t(H) * I, w.chosen, w.eact, I, w.dy, H, K, H, I, sv());
      moe_combine(w.dy, true, nullptr, w.route_w, 1, K, H, w.x, sv());
    } else {
      const int pairs = n * K;
      moe_dispatch(w.chosen, pairs, K, E, w.counts, w.offsets, w.scratch, w.slot, w.slot_token, sv());
      // Expert GEMMs over the expert-sorted rows: one grouped launch each, the row ranges read from
      // w.offsets on the device (no host sync, graph-capturable). gate_up: [rows, H] -> [rows, 2I];
      // down: [rows, I] -> [rows, H].
      GroupedGemmArgs gu;
      gu.x = w.xe;
      gu.ldx = H;
      gu.w = L.e_gate_up;
      gu.ldw = H;
      gu.w_expert_stride = int64_t(2) * I * H;
      gu.y = w.egu;
      gu.ldy = 2 * int64_t(I);
      gu.offsets = w.offsets;
      gu.experts = E;
      gu.max_rows = pairs;
      gu.n = 2 * I;
      gu.k = H;
      GroupedGemmArgs dn = gu;
      dn.x = w.eact;
      dn.ldx = I;
      dn.w = L.e_down;
      dn.ldw = I;
      dn.w_expert_stride = int64_t(H) * I;
      dn.y = w.ye;
      dn.ldy = H;
      dn.n = H;
      dn.k = I;
      moe_gather(w.hn, w.slot_token, pairs, H, w.xe, sv());
      if (grouped_gemm_supported(gu) && grouped_gemm_supported(dn)) {  // H % 8 == 0 and I % 8 == 0
        grouped_gemm_bf16(gu, sv());
        silu_mul_bf16(w.egu, 2 * int64_t(I), w.eact, I, pairs, I, sv());
        grouped_gemm_bf16(dn, sv());
      } else {
        // Other widths: one GEMM per expert, sized on the host from the offsets (a stream sync).
        IC_CUDA_CHECK(
            cudaMemcpyAsync(host_offsets, w.offsets, sizeof(int32_t) * (E + 1), cudaMemcpyDeviceToHost, stream));
        IC_CUDA_CHECK(cudaStreamSynchronize(stream));
        for (int e = 0; e < E; ++e) {
          const int r0 = host_offsets[e], cnt = host_offsets[e + 1] - r0;
          if (cnt == 0) continue;
          gm(lin(static_cast<uint16_t*>(w.xe) + size_t(r0) * H, H,
                 static_cast<const uint16_t*>(L.e_gate_up) + size_t(e) * 2 * I * H,
                 static_cast<uint16_t*>(w.egu) + size_t(r0) * 2 * I, 2 * int64_t(I), false, cnt, 2 * I, H));
        }
        silu_mul_bf16(w.egu, 2 * int64_t(I), w.eact, I, pairs, I, sv());
        for (int e = 0; e < E; ++e) {
          const int r0 = host_offsets[e], cnt = host_offsets[e + 1] - r0;
          if (cnt == 0) continue;
          gm(lin(static_cast<uint16_t*>(w.eact) + size_t(r0) * I, I,
                 static_cast<const uint16_t*>(L.e_down) + size_t(e) * H * I,
                 static_cast<uint16_t*>(w.ye) + size_t(r0) * H, H, false, cnt, H, I));
        }
      }
      moe_combine(w.ye, false, w.slot, w.route_w, n, K, H, w.x, sv());
    }
    if (Is > 0) mlp(L.s_gate_up, L.s_down, Is, n, off, kMoe, kMoe);
  }

  void prefill_all(int64_t context, const IndexPlan& plan, int64_t chunk, Timer& t, PhaseResult* r) {
    for (int64_t p0 = 0; p0 < context; p0 += chunk) {
      const int n = static_cast<int>(std::min(chunk, context - p0));
      run_chunk(p0, n, static_cast<int>(p0 + n), plan, false, p0 + n == context, t, r);
    }
  }

  // Dimensions, checks, device memory (weights laid out but not filled, caches, RoPE tables).
  void setup(const ModelSpec& spec, int64_t max_context, bool tie) {
    s = spec;
    max_ctx = max_context;
    tied = tie;
    H = spec.hidden_size;
    nh = spec.num_heads;
    qlr = spec.q_lora_rank;
    kvlr = spec.kv_lora_rank;
    nope = spec.qk_nope_head_dim;
    rd = spec.qk_rope_head_dim;
    qkd = spec.qk_head_dim();
    vd = spec.v_head_dim;
    lat = kvlr + rd;
    Hi = spec.index_n_heads;
    Di = spec.index_head_dim;
    topk = spec.index_topk;
    E = spec.n_routed_experts;
    K = spec.num_experts_per_tok;
    I = spec.moe_intermediate_size;
    Is = spec.moe_intermediate_size * spec.n_shared_experts;
    dense_I = spec.intermediate_size;
    const bool any_moe =
        std::find(spec.layer_is_moe.begin(), spec.layer_is_moe.end(), true) != spec.layer_is_moe.end();
    auto bad = [](const std::string& why) { throw_bad_input("gpu model", why); };
    if (max_context <= 0 || max_context > (int64_t{1} << 30)) bad("max_context must be in 1..2^30");
    if (H <= 0 || nh <= 0 || qlr <= 0 || spec.vocab_size <= 0) bad("hidden size, heads, q_lora_rank or vocab invalid");
    if (kvlr <= 0 || rd <= 0 || rd % 2 || nope <= 0 || vd <= 0)
      bad("kv_lora_rank, qk_nope_head_dim and v_head_dim must be positive, qk_rope_head_dim positive and even");
    if (Hi <= 0 || Di < rd) bad("the indexer needs heads and index_head_dim >= qk_rope_head_dim");
    if (topk <= 0 || topk > 2048) bad("index_topk must be in 1..2048");
    if (static_cast<int>(spec.layer_is_moe.size()) != spec.num_layers) bad("layer_is_moe must have one entry per layer");
    if (any_moe && (E <= 0 || E > 512 || K <= 0 || K > 16 || K > E || I <= 0))
      bad("MoE layers need 1..512 experts, 1..16 experts per token and an intermediate size");
    if (!any_moe) E = 0;
    if (std::find(spec.layer_is_moe.begin(), spec.layer_is_moe.end(), false) != spec.layer_is_moe.end() &&
        dense_I <= 0)
      bad("dense layers need intermediate_size");
    tc_indexer = Di == 128 && Hi % 8 == 0 && Hi <= 128;
    tc_mla = kvlr == 512 && rd == 64 && nh <= 128;
    if (!tc_indexer && size_t(Hi) * (Di + 1) * 4 > 48 * 1024)
      bad("index_n_heads x index_head_dim too large for the generic indexer kernel");
    if (!tc_mla && (size_t(lat) + 2 * size_t(topk)) * 4 > 48 * 1024)
      bad("kv_lora_rank + rope + 2 x index_topk too large for the generic sparse attention kernel");

    // Memory: weights + caches (all-F worst case) + one default chunk of activations, checked up front.
    Carver sizing;
    weights_bytes = layout_weights(sizing);
    const size_t rope_bytes = size_t(max_context) * rd * 4;
    const size_t work = work_bytes(static_cast<int>(std::min<int64_t>(RunOptions{}.chunk, max_context)));
    const size_t need =
        weights_bytes + cache_bytes_all_f() + rope_bytes + work + (size_t{64} << 20) + (size_t{512} << 20);
    const size_t avail = free_bytes();
    if (need > avail)
      throw_runtime("gpu memory", "needs " + fmt_gib(need) + " (weights " + fmt_gib(weights_bytes) + ", caches for " +
                                      std::to_string(max_context) + " tokens " + fmt_gib(cache_bytes_all_f()) +
                                      ", activations " + fmt_gib(work) + "), " + fmt_gib(avail) + " free");

    IC_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    IC_CUDA_CHECK(cudaMallocHost(&host_offsets, sizeof(int32_t) * (std::max(E, 1) + 1)));
    gemm = std::make_unique<Gemm>();
    weights_buf = DeviceBuffer(weights_bytes);
    Carver carve(static_cast<char*>(weights_buf.data()));
    layout_weights(carve);
    for (int l = 0; l < spec.num_layers; ++l) latent_cache.emplace_back(size_t(max_context) * lat * 2);
    index_cache.resize(spec.num_layers);
    index_cache8.resize(spec.num_layers);
    index_kscale.resize(spec.num_layers);

    // RoPE tables [max_context, rd/2]: the CPU model's (f32 angles as torch, YaRN factor folded in).
    const RopeTable rt = make_rope_table(spec, static_cast<int>(max_context));
    rope_cos = DeviceBuffer::from(rt.cos);
    rope_sin = DeviceBuffer::from(rt.sin);
    logits = DeviceBuffer(size_t(spec.vocab_size) * 4);
    logits.fill_bytes(0xFF);
    pos_dev = DeviceBuffer(sizeof(int32_t));
  }

  // ---- debug hooks (PrefillDebug)

  // After layer l's own selection step of the chunk [p0, p0 + n): forcing, then captures.
  void debug_layer(int l, int64_t p0, int n, int keys, bool full, PrefillDebug& d) {
    const int64_t ctx = cached;  // the request's length, set before the chunks run
    if (!d.forced_topk.empty() && !d.forced_topk[l].empty()) {
      const std::vector<int32_t>& f = d.forced_topk[l];
      const int kf = static_cast<int>(f.size() / ctx);
      host_sel.assign(size_t(n) * topk, -1);
      for (int t = 0; t < n; ++t) {
        const int64_t row = p0 + t;
        int slot = 0;
        for (int j = 0; j < kf && slot < topk; ++j) {
          const int32_t v = f[size_t(row) * kf + j];
          if (v >= 0 && v <= row) host_sel[size_t(t) * topk + slot++] = v;
        }
      }
      IC_CUDA_CHECK(cudaMemcpyAsync(w.sel, host_sel.data(), host_sel.size() * 4, cudaMemcpyHostToDevice, stream));
      IC_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    for (size_t i = 0; i < d.rows.size(); ++i) {
      const int64_t row = d.rows[i];
      if (row < p0 || row >= p0 + n) continue;
      const int t = static_cast<int>(row - p0);
      if (full)
        IC_CUDA_CHECK(cudaMemcpyAsync(d.index_scores[l].data() + i * ctx, w.scores + size_t(t) * max_ctx,
                                      size_t(keys) * 4, cudaMemcpyDeviceToHost, stream));
      IC_CUDA_CHECK(cudaMemcpyAsync(d.topk[l].data() + i * topk, w.sel + size_t(t) * topk, size_t(topk) * 4,
                                    cudaMemcpyDeviceToHost, stream));
    }
    IC_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  // After the last layer of the chunk: the logits of the captured rows inside it.
  void debug_logits_rows(int64_t p0, int n, PrefillDebug& d) {
    bool any = false;
    for (int32_t row : d.rows) any = any || (row >= p0 && row < p0 + n);
    if (!any) return;
    const size_t V = s.vocab_size;
    if (debug_logits.bytes() < size_t(n) * V * 4) debug_logits = DeviceBuffer(size_t(n) * V * 4);
    rms_norm(w.x, H, final_norm, w.hn, H, n, H, static_cast<float>(s.rms_norm_eps), sv());
    gm(lin(w.hn, H, lm_head, debug_logits.data(), int64_t(V), true, n, static_cast<int>(V), H));
    for (size_t i = 0; i < d.rows.size(); ++i) {
      const int64_t row = d.rows[i];
      if (row < p0 || row >= p0 + n) continue;
      IC_CUDA_CHECK(cudaMemcpyAsync(d.logits.data() + i * V, debug_logits.as<float>() + size_t(row - p0) * V, V * 4,
                                    cudaMemcpyDeviceToHost, stream));
    }
    IC_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  void check_run(int64_t context, const IndexPlan& plan, int64_t extra) {
    if (context <= 0) throw_bad_input("context", "must be positive");
    if (context + extra > max_ctx)
      throw_bad_input("context", std::to_string(context + extra) + " tokens exceed the model's max_context " +
                                     std::to_string(max_ctx));
    ensure_index_cache(plan);
  }
};

SyntheticGpuModel::SyntheticGpuModel(const ModelSpec& spec, int64_t max_context, uint64_t seed)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.seed = seed;
  m.setup(spec, max_context, false);

  // Random weights, uniform with variance 1/fan_in (scale sqrt(3/fan_in)); norms 1, biases 0.
  uint64_t tensor = 0;
  auto rnd = [&](void* p, size_t count, int fan_in) {
    fill_uniform_bf16(p, count, seed, ++tensor, std::sqrt(3.0f / static_cast<float>(fan_in)), m.sv());
  };
  auto ones = [&](void* p, size_t count) { fill_const_bf16(p, count, 1.0f, m.sv()); };
  fill_uniform_bf16(m.embed, size_t(spec.vocab_size) * m.H, seed, ++tensor, 1.0f, m.sv());
  ones(m.final_norm, m.H);
  rnd(m.lm_head, size_t(spec.vocab_size) * m.H, m.H);
  for (LayerW& L : m.layers) {
    ones(L.in_norm, m.H);
    ones(L.post_norm, m.H);
    rnd(L.q_a, size_t(m.qlr) * m.H, m.H);
    ones(L.q_a_norm, m.qlr);
    rnd(L.q_b, size_t(m.nh) * m.qkd * m.qlr, m.qlr);
    rnd(L.kv_a, size_t(m.lat) * m.H, m.H);
    ones(L.kv_a_norm, m.kvlr);
    rnd(L.w_uk, size_t(m.nh) * m.kvlr * m.nope, m.nope);
    rnd(L.w_uv, size_t(m.nh) * m.vd * m.kvlr, m.kvlr);
    rnd(L.o, size_t(m.H) * m.nh * m.vd, m.nh * m.vd);
    rnd(L.wq_b, size_t(m.Hi) * m.Di * m.qlr, m.qlr);
    rnd(L.wk, size_t(m.Di) * m.H, m.H);
    ones(L.k_norm_w, m.Di);
    fill_const_bf16(L.k_norm_b, m.Di, 0.0f, m.sv());
    rnd(L.wproj, size_t(m.Hi) * m.H, m.H);
    if (L.moe) {
      rnd(L.router, size_t(m.E) * m.H, m.H);
      fill_uniform_f32(L.router_bias, m.E, seed, ++tensor, 0.05f, m.sv());
      rnd(L.e_gate_up, size_t(m.E) * 2 * m.I * m.H, m.H);
      rnd(L.e_down, size_t(m.E) * m.H * m.I, m.I);
      if (m.Is > 0) {
        rnd(L.s_gate_up, size_t(2) * m.Is * m.H, m.H);
        rnd(L.s_down, size_t(m.H) * m.Is, m.Is);
      }
    } else {
      rnd(L.gate_up, size_t(2) * m.dense_I * m.H, m.H);
      rnd(L.down, size_t(m.H) * m.dense_I, m.dense_I);
    }
  }
  IC_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

SyntheticGpuModel::SyntheticGpuModel(CheckpointTag, const std::string& dir, int64_t max_context)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  const ModelSpec spec = load_model_spec(dir);
  if (spec.attention_bias)
    throw_bad_input(dir + "/config.json: attention_bias", "the GPU model does not support attention biases yet");
  m.setup(spec, max_context, spec.tie_word_embeddings);
  GpuWeights gw;
  gw.embed = m.embed;
  gw.final_norm = m.final_norm;
  gw.lm_head = m.lm_head;
  gw.layers = std::move(m.layers);
  try {
    load_checkpoint_weights(dir, spec, gw);
  } catch (...) {
    m.layers = std::move(gw.layers);
    throw;
  }
  m.layers = std::move(gw.layers);
}

std::unique_ptr<SyntheticGpuModel> SyntheticGpuModel::from_checkpoint(const std::string& dir, int64_t max_context) {
  return std::unique_ptr<SyntheticGpuModel>(new SyntheticGpuModel(CheckpointTag{}, dir, max_context));
}

SyntheticGpuModel::~SyntheticGpuModel() = default;

const ModelSpec& SyntheticGpuModel::spec() const { return impl_->s; }
size_t SyntheticGpuModel::weight_bytes() const { return impl_->weights_bytes; }
int64_t SyntheticGpuModel::max_context() const { return impl_->max_ctx; }

size_t SyntheticGpuModel::cache_bytes_per_token(const IndexPlan& plan) const {
  const Impl& m = *impl_;
  return size_t(m.s.num_layers) * m.lat * 2 + size_t(plan.num_full()) * m.Di * 2;
}

std::vector<float> SyntheticGpuModel::last_logits() const {
  IC_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
  return impl_->logits.to_vector<float>(impl_->s.vocab_size);
}

PhaseResult SyntheticGpuModel::prefill(int64_t context, const IndexPlan& plan, const RunOptions& opt) {
  Impl& m = *impl_;
  // Any run overwrites the caches (and may change the indexer precision): the real-token request
  // of an earlier prefill_ids ends here, even if this call fails, so decode_id cannot continue it.
  m.cached = 0;
  m.set_indexer_precision(opt);
  m.check_run(context, plan, 0);
  const int64_t chunk = std::max<int64_t>(1, std::min(opt.chunk > 0 ? opt.chunk : context, context));
  m.ensure_work(static_cast<int>(chunk));
  m.logits.fill_bytes(0xFF);
  PhaseResult r;
  r.tokens = context;
  PhaseClock clock(m.stream);
  Timer t(m.stream, opt.instrument);
  clock.start();
  m.prefill_all(context, plan, chunk, t, &r);
  r.seconds = clock.stop();
  r.kernels = t.collect();
  return r;
}

PhaseResult SyntheticGpuModel::decode(int64_t context, const IndexPlan& plan, const RunOptions& opt) {
  Impl& m = *impl_;
  // Any run overwrites the caches (and may change the indexer precision): the real-token request
  // of an earlier prefill_ids ends here, even if this call fails, so decode_id cannot continue it.
  m.cached = 0;
  const int steps = std::max(1, opt.decode_steps);
  m.set_indexer_precision(opt);
  m.check_run(context, plan, steps);
  const int64_t chunk = std::max<int64_t>(1, std::min(opt.chunk > 0 ? opt.chunk : context, context));
  m.ensure_work(static_cast<int>(chunk));
  m.logits.fill_bytes(0xFF);
  {
    Timer none(m.stream, false);
    m.prefill_all(context, plan, chunk, none, nullptr);
  }
  const int keys = static_cast<int>(context + steps);  // every step's keys lie below this bound
  const int32_t start = static_cast<int32_t>(context);
  auto reset_position = [&] {
    IC_CUDA_CHECK(cudaMemcpyAsync(m.pos_dev.data(), &start, sizeof start, cudaMemcpyHostToDevice, m.stream));
    IC_CUDA_CHECK(cudaStreamSynchronize(m.stream));  // `start` is a host stack value
  };
  auto step = [&](Timer& t) {
    m.run_chunk(0, 1, keys, plan, true, true, t, nullptr);
    auto sc = t.scope(kOther);
    advance_position(m.pos_dev.as<int32_t>(), m.sv());
  };
  PhaseResult r;
  r.tokens = steps;
  for (int l = 0; l < m.s.num_layers; ++l)
    for (int i = 0; i < steps; ++i) m.count_flops(context + i, 1, plan.is_full(l), &r);

  // Instrumented run (events per kernel class), from the same start position. Without it, one
  // untimed eager step, so that every GEMM plan and any lazy set-up of the kernels exists before capture.
  reset_position();
  if (opt.instrument) {
    Timer t(m.stream, true);
    for (int i = 0; i < steps; ++i) step(t);
    r.kernels = t.collect();
  } else {
    Timer none(m.stream, false);
    step(none);
  }
  reset_position();

  PhaseClock clock(m.stream);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  auto cleanup = [&] {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
  };
  try {
    Timer none(m.stream, false);
    if (opt.cuda_graphs) {
      // One whole step (all layers, position read from device memory) captured once, replayed.
      // A kernel that cannot be captured (it allocates or synchronises) ends in eager steps, with a
      // warning, rather than in no result.
      IC_CUDA_CHECK(cudaStreamBeginCapture(m.stream, cudaStreamCaptureModeThreadLocal));
      std::string failure;
      try {
        step(none);
      } catch (const std::exception& e) {
        failure = e.what();
      }
      const cudaError_t end = cudaStreamEndCapture(m.stream, &graph);
      if (failure.empty() && end != cudaSuccess) failure = cudaGetErrorString(end);
      if (failure.empty() && cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) failure = "graph instantiation failed";
      if (!failure.empty()) {
        cudaGetLastError();  // capture errors are not sticky; clear the last one
        if (exec) cudaGraphExecDestroy(exec);
        if (graph) cudaGraphDestroy(graph);
        exec = nullptr;
        graph = nullptr;
        std::fprintf(stderr, "warning: decode step not capturable as a CUDA graph (%s); timing eager steps\n",
                     failure.c_str());
        reset_position();
      } else {
        IC_CUDA_CHECK(cudaGraphUpload(exec, m.stream));
      }
      IC_CUDA_CHECK(cudaStreamSynchronize(m.stream));
    }
    clock.start();
    for (int i = 0; i < steps; ++i) {
      if (exec)
        IC_CUDA_CHECK(cudaGraphLaunch(exec, m.stream));
      else
        step(none);
    }
    r.seconds = clock.stop();
  } catch (...) {
    cleanup();
    throw;
  }
  cleanup();
  return r;
}

PhaseResult SyntheticGpuModel::prefill_ids(const std::vector<int32_t>& ids, const IndexPlan& plan,
                                           const RunOptions& opt, PrefillDebug* debug) {
  Impl& m = *impl_;
  // Any run overwrites the caches (and may change the indexer precision): the real-token request
  // of an earlier prefill_ids ends here, even if this call fails, so decode_id cannot continue it.
  m.cached = 0;
  const int64_t context = static_cast<int64_t>(ids.size());
  m.set_indexer_precision(opt);
  m.check_run(context, plan, 0);
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= m.s.vocab_size)
      throw_bad_input("token id", std::to_string(ids[i]) + " at position " + std::to_string(i) +
                                      " is outside the vocabulary of " + std::to_string(m.s.vocab_size));
  const int L = m.s.num_layers;
  if (debug) {
    PrefillDebug& d = *debug;
    for (int32_t r : d.rows)
      if (r < 0 || r >= context) throw_bad_input("debug rows", "row " + std::to_string(r) + " outside the prompt");
    if (!d.forced_topk.empty()) {
      if (static_cast<int>(d.forced_topk.size()) != L)
        throw_bad_input("forced_topk", "needs one entry per layer (or none)");
      for (const auto& f : d.forced_topk)
        if (!f.empty() && (f.size() % size_t(context) != 0 || f.size() / size_t(context) > size_t(m.topk)))
          throw_bad_input("forced_topk", "an entry is not [context][k] with k <= index_topk");
    }
    d.index_scores.assign(L, {});
    d.topk.assign(L, {});
    for (int l = 0; l < L; ++l) {
      if (plan.is_full(l)) d.index_scores[l].assign(d.rows.size() * size_t(context), -INFINITY);
      d.topk[l].assign(d.rows.size() * size_t(m.topk), -1);
    }
    d.logits.assign(d.rows.size() * size_t(m.s.vocab_size), NAN);
  }
  const int64_t chunk = std::max<int64_t>(1, std::min(opt.chunk > 0 ? opt.chunk : context, context));
  m.ensure_work(static_cast<int>(chunk));
  m.logits.fill_bytes(0xFF);
  m.cached = context;
  PhaseResult r;
  r.tokens = context;
  Timer t(m.stream, opt.instrument && !debug);
  PhaseClock clock(m.stream);
  try {
    clock.start();
    for (int64_t p0 = 0; p0 < context; p0 += chunk) {
      const int n = static_cast<int>(std::min(chunk, context - p0));
      IC_CUDA_CHECK(cudaMemcpyAsync(m.w.ids, ids.data() + p0, size_t(n) * 4, cudaMemcpyHostToDevice, m.stream));
      m.run_chunk(p0, n, static_cast<int>(p0 + n), plan, false, p0 + n == context, t, &r, true, debug);
    }
    r.seconds = clock.stop();
    r.kernels = t.collect();
  } catch (...) {
    m.cached = 0;
    throw;
  }
  return r;
}

void SyntheticGpuModel::decode_id(int32_t id, const IndexPlan& plan) {
  Impl& m = *impl_;
  if (m.cached <= 0) throw_bad_input("decode", "no request: run prefill_ids first");
  if (id < 0 || id >= m.s.vocab_size)
    throw_bad_input("token id", std::to_string(id) + " is outside the vocabulary of " + std::to_string(m.s.vocab_size));
  m.check_run(m.cached, plan, 1);
  m.ensure_work(1);
  const int32_t pos = static_cast<int32_t>(m.cached);
  IC_CUDA_CHECK(cudaMemcpyAsync(m.pos_dev.data(), &pos, sizeof pos, cudaMemcpyHostToDevice, m.stream));
  IC_CUDA_CHECK(cudaMemcpyAsync(m.w.ids, &id, sizeof id, cudaMemcpyHostToDevice, m.stream));
  Timer none(m.stream, false);
  m.run_chunk(0, 1, pos + 1, plan, true, true, none, nullptr, true, nullptr);
  IC_CUDA_CHECK(cudaStreamSynchronize(m.stream));  // `pos` and `id` are host stack values
  m.cached += 1;
}

bool SyntheticGpuModel::uses_tensor_core_indexer() const { return impl_->tc_indexer; }
bool SyntheticGpuModel::uses_tensor_core_attention() const { return impl_->tc_mla; }

GpuInfo gpu_info() {
  GpuInfo g;
  int dev = 0;
  IC_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp p{};
  IC_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
  g.name = p.name;
  g.sm_count = p.multiProcessorCount;
  g.cc_major = p.major;
  g.cc_minor = p.minor;
  g.memory_gib = gib(static_cast<double>(p.totalGlobalMem));
  int v = 0;
  IC_CUDA_CHECK(cudaDriverGetVersion(&v));
  g.driver_version = std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
  IC_CUDA_CHECK(cudaRuntimeGetVersion(&v));
  g.runtime_version = std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
  return g;
}

double measure_bf16_peak_tflops() {
  constexpr int n = 8192;
  const size_t elems = size_t(n) * n;
  DeviceBuffer a(elems * 2), b(elems * 2), c(elems * 2);
  fill_uniform_bf16(a.data(), elems, 7, 1, 1.0f, nullptr);
  fill_uniform_bf16(b.data(), elems, 7, 2, 1.0f, nullptr);
  Gemm gemm;
  GemmArgs g;
  g.x = a.data();
  g.ldx = n;
  g.w = b.data();
  g.ldw = n;
  g.y = c.data();
  g.ldy = n;
  g.m = g.n = g.k = n;
  cuda::device_synchronize();
  const double ms = cuda::median_ms([&] { gemm.run(g, nullptr); }, 10);
  return 2.0 * n * double(n) * n / (ms * 1e-3) / 1e12;
}

}  // namespace indexcache::gpu
