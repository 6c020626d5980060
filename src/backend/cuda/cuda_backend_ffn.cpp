// The CUDA backend's projections, SwiGLU MLP and mixture of experts (see cuda_backend.h).
//   bf16: projections through gemm_bf16 (GEMV for one row, cuBLASLt, or the generic GEMM for odd
//     widths); the MoE as the GPU runner does it: router GEMM, route_experts on the device,
//     dispatch, gather, two grouped GEMMs (all experts in one launch each), combine; one-token
//     decode uses GEMVs over the chosen experts' weights instead. No host synchronisation unless a
//     width rules out the grouped GEMM (then one GEMM per expert, sized on the host).
//   f32: the f32 GEMM; the MoE routes on the host with the CPU backend's route_tokens (one stream
//     synchronisation per call) and runs each expert over its gathered tokens, as the CPU does.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <vector>

#include "backend/cpu/moe.h"
#include "backend/cuda/backend_kernels.h"
#include "backend/cuda/cuda_backend_impl.h"
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/dsa_generic.h"
#include "gpu/grouped_gemm.h"
#include "gpu/layer_kernels.h"
#include "backend/op_checks.h"
#include "indexcache/error.h"

namespace indexcache::cuda {

namespace {

cudaStream_t cs(void* s) { return static_cast<cudaStream_t>(s); }

using op_checks::dt;
using op_checks::need;
using op_checks::need_dtype;
using op_checks::need_view;
bool packed2(const TensorView& v) { return v.rank == 2 && (v.stride[0] == v.shape[1] || v.shape[0] <= 1); }
const char* bytes_at(const void* p) { return static_cast<const char*>(p); }

// Whether cuBLASLt may take `a`: bf16 rows and batch strides 16-byte aligned (else gemm_generic).
bool lt_ok(const gpu::GemmArgs& a) {
  auto al = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool strides = a.batch == 1 || (a.x_batch_stride % 8 == 0 && a.w_batch_stride % 8 == 0 &&
                                        a.y_batch_stride % 8 == 0);
  return a.ldx % 8 == 0 && a.ldw % 8 == 0 && a.ldy % 8 == 0 && strides && al(a.x) && al(a.w) && al(a.y);
}

gpu::GemmArgs lin(const void* x, int64_t ldx, const void* w, int64_t ldw, void* y, int64_t ldy, bool y_f32, int64_t m,
                  int64_t n, int64_t k) {
  gpu::GemmArgs a;
  a.x = x;
  a.ldx = ldx;
  a.w = w;
  a.ldw = ldw;
  a.y = y;
  a.ldy = ldy;
  a.y_f32 = y_f32;
  a.m = static_cast<int>(m);
  a.n = static_cast<int>(n);
  a.k = static_cast<int>(k);
  return a;
}

bk::GemmF32Args lin32(const void* x, int64_t ldx, const void* w, int64_t ldw, void* y, int64_t ldy, int64_t m,
                      int64_t n, int64_t k) {
  bk::GemmF32Args a;
  a.x = static_cast<const float*>(x);
  a.ldx = ldx;
  a.w = static_cast<const float*>(w);
  a.ldw = ldw;
  a.y = static_cast<float*>(y);
  a.ldy = ldy;
  a.m = static_cast<int>(m);
  a.n = static_cast<int>(n);
  a.k = static_cast<int>(k);
  return a;
}

// Checks gate / up [I, hidden] and down [hidden, I] of one MLP; returns I.
int64_t check_mlp(const MlpWeightsView& w, int64_t hidden, DType t, const char* op) {
  need_view(w.gate, 2, op, "gate");
  need_view(w.up, 2, op, "up");
  need_view(w.down, 2, op, "down");
  for (const TensorView* v : {&w.gate, &w.up, &w.down}) need_dtype(*v, t, op, "an MLP weight");
  const int64_t I = w.gate.shape[0];
  need(I > 0 && w.gate.shape[1] == hidden && w.up.shape[0] == I && w.up.shape[1] == hidden &&
           w.down.shape[0] == hidden && w.down.shape[1] == I,
       op, "MLP weights must be gate, up [I, hidden] and down [hidden, I]");
  return I;
}

// Whether the views (ex[e].*m) are evenly spaced with one row stride; *stride: the spacing in
// elements (bf16).
bool evenly_spaced(std::span<const MlpWeightsView> ex, TensorView MlpWeightsView::*m, int64_t* stride) {
  const TensorView& v0 = ex[0].*m;
  if (ex.size() == 1) {
    *stride = v0.shape[0] * v0.stride[0];
    return true;
  }
  const ptrdiff_t d = bytes_at((ex[1].*m).data) - bytes_at(v0.data);
  if (d <= 0 || d % 2 != 0) return false;
  for (size_t e = 0; e < ex.size(); ++e) {
    const TensorView& v = ex[e].*m;
    if (v.stride[0] != v0.stride[0] || bytes_at(v.data) - bytes_at(v0.data) != static_cast<ptrdiff_t>(e) * d)
      return false;
  }
  *stride = d / 2;
  return true;
}

}  // namespace

// ---------------------------------------------------------------- GEMM dispatch (bf16)

void CudaBackend::gemm_bf16(const gpu::GemmArgs& a) {
  if (a.m == 1) {
    gpu::GemvArgs g;
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
    if (gpu::gemv_supported(g)) {
      gpu::gemv(g, stream_);
      return;
    }
  }
  if (lt_ok(a)) {
    gemm_->run(a, stream_);
    return;
  }
  GenericGemmParams g;
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
  cuda::gemm_generic(g, stream_);
}

// ---------------------------------------------------------------- linear, linear_heads

void CudaBackend::do_linear(const LinearOp& p) {
  activate();
  const char* op = "linear";
  need_view(p.x, 2, op, "x");
  need_view(p.w, 2, op, "w");
  need_view(p.y, 2, op, "y");
  need_dtype(p.x, act_, op, "x");
  need_dtype(p.w, act_, op, "w");
  need(f32_or_act(p.y.dtype), op, "y must be f32 or " + dt(act_));
  const int64_t T = p.x.shape[0], in = p.x.shape[1], out = p.w.shape[0];
  need(p.w.shape[1] == in && p.y.shape[0] == T && p.y.shape[1] == out, op, "shapes disagree");
  const bool bias = !p.bias.empty();
  if (bias) {
    need(p.bias.numel() == out && p.bias.stride[p.bias.rank - 1] == 1, op, "bias must have out elements");
    need(f32_or_act(p.bias.dtype), op, "bias must be f32 or " + dt(act_));
  }
  need(p.alpha == 1.0f || !bias, op, "alpha != 1 takes no bias");
  if (T == 0 || out == 0) return;
  if (in == 0 && !p.accumulate) {
    bk::fill_rows(p.y.data, p.y.dtype, p.y.stride[0], bias ? p.bias.data : nullptr, bias ? p.bias.dtype : act_,
                  static_cast<int>(T), static_cast<int>(out), stream_);
    return;
  }
  need(in > 0, op, "accumulate needs in > 0");
  if (exact()) {  // y = alpha x W^T + bias + beta y in one kernel
    bk::GemmF32Args a = lin32(p.x.data, p.x.stride[0], p.w.data, p.w.stride[0], p.y.data, p.y.stride[0], T, out, in);
    a.bias = bias ? p.bias.as<const float>() : nullptr;
    a.alpha = p.alpha;
    a.beta = p.accumulate ? 1.0f : 0.0f;
    bk::gemm_f32(a, stream_);
    return;
  }
  gpu::GemmArgs a = lin(p.x.data, p.x.stride[0], p.w.data, p.w.stride[0], p.y.data, p.y.stride[0],
                        p.y.dtype == DType::kF32, T, out, in);
  a.alpha = p.alpha;
  if (p.accumulate && !bias) {  // y = x W^T + 1 * y: the residual joins the f32 accumulator
    a.beta = 1.0f;
  } else if (bias && !p.accumulate) {  // y = bias, then y = x W^T + 1 * y: the bias in one rounding
    bk::fill_rows(p.y.data, p.y.dtype, p.y.stride[0], p.bias.data, p.bias.dtype, static_cast<int>(T),
                  static_cast<int>(out), stream_);
    a.beta = 1.0f;
  } else if (bias) {  // both: bias + x W^T in an f32 temporary, then added to y
    float* t = static_cast<float*>(scratch(static_cast<size_t>(T * out) * sizeof(float)));
    bk::fill_rows(t, DType::kF32, out, p.bias.data, p.bias.dtype, static_cast<int>(T), static_cast<int>(out), stream_);
    a.y = t;
    a.ldy = out;
    a.y_f32 = true;
    a.beta = 1.0f;
    gemm_bf16(a);
    do_add({.x = p.y, .y = view2d(t, DType::kF32, T, out)});
    return;
  }
  gemm_bf16(a);
}

void CudaBackend::do_linear_heads(const LinearHeadsOp& p) {
  activate();
  const char* op = "linear_heads";
  need_view(p.x, 3, op, "x");
  need_view(p.w, 3, op, "w");
  need_view(p.y, 3, op, "y");
  need_dtype(p.x, act_, op, "x");
  need_dtype(p.w, act_, op, "w");
  need(f32_or_act(p.y.dtype), op, "y must be f32 or " + dt(act_));
  const int64_t T = p.x.shape[0], heads = p.x.shape[1], in = p.x.shape[2], out = p.w.shape[1];
  need(p.w.shape[0] == heads && p.w.shape[2] == in && p.y.shape[0] == T && p.y.shape[1] == heads &&
           p.y.shape[2] == out,
       op, "shapes disagree");
  if (T == 0 || heads == 0 || out == 0) return;
  need(in > 0, op, "in must be positive");
  need(heads <= 65535, op, "at most 65535 heads");
  if (exact()) {
    bk::GemmF32Args a = lin32(p.x.data, p.x.stride[0], p.w.data, p.w.stride[1], p.y.data, p.y.stride[0], T, out, in);
    a.batch = static_cast<int>(heads);
    a.x_batch_stride = p.x.stride[1];
    a.w_batch_stride = p.w.stride[0];
    a.y_batch_stride = p.y.stride[1];
    bk::gemm_f32(a, stream_);
    return;
  }
  gpu::GemmArgs a = lin(p.x.data, p.x.stride[0], p.w.data, p.w.stride[1], p.y.data, p.y.stride[0],
                        p.y.dtype == DType::kF32, T, out, in);
  a.batch = static_cast<int>(heads);
  a.x_batch_stride = p.x.stride[1];
  a.w_batch_stride = p.w.stride[0];
  a.y_batch_stride = p.y.stride[1];
  gemm_bf16(a);
}

// ---------------------------------------------------------------- MLP

void CudaBackend::mlp_bf16(const MlpWeightsView& w, const void* x, int64_t ldx, int tokens, void* y, bool y_f32,
                           int64_t ldy, float beta, void* gu, void* act) {
  const int64_t I = w.gate.shape[0], H = w.gate.shape[1];
  const int64_t ldg = w.gate.stride[0];
  // gate and up rows adjacent (placed one after the other): one GEMM of 2I outputs.
  const bool fused = w.up.stride[0] == ldg && bytes_at(w.up.data) == bytes_at(w.gate.data) + I * ldg * 2;
  if (fused) {
    gemm_bf16(lin(x, ldx, w.gate.data, ldg, gu, 2 * I, false, tokens, 2 * I, H));
  } else {
    gemm_bf16(lin(x, ldx, w.gate.data, ldg, gu, 2 * I, false, tokens, I, H));
    gemm_bf16(lin(x, ldx, w.up.data, w.up.stride[0], static_cast<uint16_t*>(gu) + I, 2 * I, false, tokens, I, H));
  }
  gpu::silu_mul_bf16(gu, 2 * I, act, I, tokens, static_cast<int>(I), stream_);
  gpu::GemmArgs d = lin(act, I, w.down.data, w.down.stride[0], y, ldy, y_f32, tokens, H, I);
  d.beta = beta;
  gemm_bf16(d);
}

void CudaBackend::mlp_f32(const MlpWeightsView& w, const float* x, int64_t ldx, int tokens, float* y, int64_t ldy,
                          float* g, float* u) {
  const int64_t I = w.gate.shape[0], H = w.gate.shape[1];
  bk::gemm_f32(lin32(x, ldx, w.gate.data, w.gate.stride[0], g, I, tokens, I, H), stream_);
  bk::gemm_f32(lin32(x, ldx, w.up.data, w.up.stride[0], u, I, tokens, I, H), stream_);
  bk::silu_mul_f32(g, I, u, I, g, I, tokens, static_cast<int>(I), stream_);
  bk::gemm_f32(lin32(g, I, w.down.data, w.down.stride[0], y, ldy, tokens, H, I), stream_);
}

void CudaBackend::do_mlp(const MlpOp& p) {
  activate();
  const char* op = "mlp";
  need_view(p.x, 2, op, "x");
  need_view(p.y, 2, op, "y");
  need_dtype(p.x, act_, op, "x");
  need(f32_or_act(p.y.dtype), op, "y must be f32 or " + dt(act_));
  const int64_t T = p.x.shape[0], H = p.x.shape[1];
  need(p.y.shape[0] == T && p.y.shape[1] == H, op, "x and y must be [T, hidden]");
  need(p.x.data != p.y.data, op, "y must not alias x");
  const int64_t I = check_mlp(p.w, H, act_, op);
  if (T == 0) return;
  if (exact()) {
    Carver m;
    m.take<float>(T * I);
    m.take<float>(T * I);
    m.take<float>(p.accumulate ? T * H : 0);
    Carver c(scratch(m.size()));
    float* g = c.take<float>(T * I);
    float* u = c.take<float>(T * I);
    float* t = c.take<float>(p.accumulate ? T * H : 0);
    if (!p.accumulate) {
      mlp_f32(p.w, p.x.as<const float>(), p.x.stride[0], static_cast<int>(T), p.y.as<float>(), p.y.stride[0], g, u);
      return;
    }
    mlp_f32(p.w, p.x.as<const float>(), p.x.stride[0], static_cast<int>(T), t, H, g, u);
    do_add({.x = p.y, .y = view2d(t, DType::kF32, T, H)});
    return;
  }
  Carver m;
  m.take<uint16_t>(T * 2 * I);
  m.take<uint16_t>(T * I);
  Carver c(scratch(m.size()));
  void* gu = c.take<uint16_t>(T * 2 * I);
  void* act = c.take<uint16_t>(T * I);
  mlp_bf16(p.w, p.x.data, p.x.stride[0], static_cast<int>(T), p.y.data, p.y.dtype == DType::kF32, p.y.stride[0],
           p.accumulate ? 1.0f : 0.0f, gu, act);
}

// ---------------------------------------------------------------- MoE

void CudaBackend::do_moe(const MoeOp& p) {
  activate();
  const char* op = "moe";
  need_view(p.x, 2, op, "x");
  need_view(p.y, 2, op, "y");
  need_view(p.router, 2, op, "router");
  need(!p.router_bias.empty(), op, "router_bias is empty");
  need_dtype(p.x, act_, op, "x");
  need_dtype(p.y, DType::kF32, op, "y");
  need_dtype(p.router, act_, op, "router");
  need_dtype(p.router_bias, DType::kF32, op, "router_bias");
  const int64_t T = p.x.shape[0], H = p.x.shape[1], E = static_cast<int64_t>(p.experts.size());
  need(packed2(p.x) && packed2(p.y) && p.y.shape[0] == T && p.y.shape[1] == H, op,
       "x and y must be contiguous [T, hidden]");
  need(E >= 1 && p.router.shape[0] == E && p.router.shape[1] == H, op, "router must be [experts, hidden]");
  need(p.router_bias.numel() == E && p.router_bias.stride[p.router_bias.rank - 1] == 1, op,
       "router_bias must have one value per expert");
  const int64_t I = check_mlp(p.experts[0], H, act_, op);
  for (const MlpWeightsView& e : p.experts) {
    need(check_mlp(e, H, act_, op) == I, op, "experts differ in intermediate size");
    need(e.gate.stride[0] == p.experts[0].gate.stride[0] && e.down.stride[0] == p.experts[0].down.stride[0], op,
         "experts differ in row strides");
  }
  if (p.shared) check_mlp(*p.shared, H, act_, op);
  const int G = p.groups, K = p.experts_per_token;
  need(G >= 1 && E % G == 0 && p.topk_group >= 1 && p.topk_group <= G && K >= 1 && K <= p.topk_group * (E / G), op,
       "routing needs experts % groups == 0, 1 <= topk_group <= groups, 1 <= k <= topk_group x experts per group");
  if (!exact())
    need(E <= 512 && K <= 16 && G <= 64, op, "the device router takes <= 512 experts, <= 16 per token, <= 64 groups");
  if (T == 0) return;
  if (exact())
    moe_f32(p);
  else
    moe_bf16(p);
}

const ExpertSet& CudaBackend::expert_set(const MoeOp& p) {
  const int E = static_cast<int>(p.experts.size());
  const MlpWeightsView& first = p.experts[0];
  const int64_t I = first.gate.shape[0], H = first.gate.shape[1];
  if (auto it = expert_sets_.find(first.gate.data); it != expert_sets_.end()) {
    const ExpertSet& s = it->second;
    if (s.experts == E && s.inter == I && s.hidden == H && s.last_down == p.experts[E - 1].down.data) return s;
    if (s.packed) {
      device_free(s.packed);
      packed_bytes_ -= s.packed_bytes;
    }
    expert_sets_.erase(it);
  }
  ExpertSet s;
  s.experts = E;
  s.inter = I;
  s.hidden = H;
  s.last_down = p.experts[E - 1].down.data;
  int64_t gs = 0, us = 0, ds = 0;
  if (evenly_spaced(p.experts, &MlpWeightsView::gate, &gs) && evenly_spaced(p.experts, &MlpWeightsView::up, &us) &&
      evenly_spaced(p.experts, &MlpWeightsView::down, &ds)) {
    // Placed one after another (the weight arena): the grouped GEMM reads the placed weights.
    s.gate = first.gate.data;
    s.gate_ld = first.gate.stride[0];
    s.gate_stride = gs;
    s.up = first.up.data;
    s.up_ld = first.up.stride[0];
    s.up_stride = us;
    s.fused = us == gs && first.up.stride[0] == s.gate_ld &&
              bytes_at(first.up.data) == bytes_at(first.gate.data) + I * s.gate_ld * 2;
    s.down = first.down.data;
    s.down_ld = first.down.stride[0];
    s.down_stride = ds;
  } else {
    // Pack once: gate_up [E, 2I, H] (gate rows then up rows per expert), down [E, H, I].
    const size_t gu_elems = static_cast<size_t>(E) * 2 * I * H, dn_elems = static_cast<size_t>(E) * H * I;
    s.packed_bytes = (gu_elems + dn_elems) * 2;
    s.packed = device_malloc(s.packed_bytes);
    packed_bytes_ += s.packed_bytes;
    char* base = static_cast<char*>(s.packed);
    for (int e = 0; e < E; ++e) {
      const MlpWeightsView& x = p.experts[e];
      char* gu = base + static_cast<size_t>(e) * 2 * I * H * 2;
      IC_CUDA_CHECK(cudaMemcpy2DAsync(gu, H * 2, x.gate.data, x.gate.stride[0] * 2, H * 2, I, cudaMemcpyDeviceToDevice,
                                      cs(stream_)));
      IC_CUDA_CHECK(cudaMemcpy2DAsync(gu + I * H * 2, H * 2, x.up.data, x.up.stride[0] * 2, H * 2, I,
                                      cudaMemcpyDeviceToDevice, cs(stream_)));
      char* dn = base + (gu_elems + static_cast<size_t>(e) * H * I) * 2;
      IC_CUDA_CHECK(cudaMemcpy2DAsync(dn, I * 2, x.down.data, x.down.stride[0] * 2, I * 2, H,
                                      cudaMemcpyDeviceToDevice, cs(stream_)));
    }
    s.gate = base;
    s.gate_ld = H;
    s.gate_stride = 2 * I * H;
    s.up = base + I * H * 2;
    s.up_ld = H;
    s.up_stride = 2 * I * H;
    s.fused = true;
    s.down = base + gu_elems * 2;
    s.down_ld = I;
    s.down_stride = H * I;
  }
  return expert_sets_.emplace(first.gate.data, s).first->second;
}

void CudaBackend::moe_bf16(const MoeOp& p) {
  const int T = static_cast<int>(p.x.shape[0]), H = static_cast<int>(p.x.shape[1]);
  const int E = static_cast<int>(p.experts.size()), K = p.experts_per_token;
  const int I = static_cast<int>(p.experts[0].gate.shape[0]);
  const int Is = p.shared ? static_cast<int>(p.shared->gate.shape[0]) : 0;
  const int P = T * K;  // (token, expert) pairs
  const ExpertSet& X = expert_set(p);

  // Scratch: routing, dispatch, expert rows, decode GEMV outputs, shared-expert temporaries.
  struct Work {
    float *logits, *route_w, *dgu, *dy;
    int32_t *chosen, *counts, *offsets, *cursor, *slot, *slot_token;
    void *xe, *egu, *eact, *ye, *sgu, *sact;
  } w{};
  auto layout = [&](Carver& c) {
    w.logits = c.take<float>(size_t(T) * E);
    w.chosen = c.take<int32_t>(P);
    w.route_w = c.take<float>(P);
    w.counts = c.take<int32_t>(E);
    w.offsets = c.take<int32_t>(E + 1);
    w.cursor = c.take<int32_t>(E);
    w.slot = c.take<int32_t>(P);
    w.slot_token = c.take<int32_t>(P);
    w.xe = c.take<uint16_t>(size_t(P) * H);
    w.egu = c.take<uint16_t>(size_t(P) * 2 * I);
    w.eact = c.take<uint16_t>(size_t(P) * I);
    w.ye = c.take<uint16_t>(size_t(P) * H);
    w.dgu = c.take<float>(size_t(K) * 2 * I);
    w.dy = c.take<float>(size_t(K) * H);
    w.sgu = c.take<uint16_t>(size_t(T) * 2 * Is);
    w.sact = c.take<uint16_t>(size_t(T) * Is);
  };
  Carver measure;
  layout(measure);
  Carver carve(scratch(measure.size()));
  layout(carve);

  float* y = p.y.as<float>();
  gemm_bf16(lin(p.x.data, H, p.router.data, p.router.stride[0], w.logits, E, true, T, E, H));
  gpu::RouteArgs ra;
  ra.logits = w.logits;
  ra.bias = p.router_bias.as<const float>();
  ra.n = T;
  ra.experts = E;
  ra.groups = p.groups;
  ra.topk_group = p.topk_group;
  ra.k = K;
  ra.norm_topk_prob = p.norm_topk_prob;
  ra.scaling = p.routed_scaling;
  ra.chosen = w.chosen;
  ra.weights = w.route_w;
  gpu::route_experts(ra, stream_);
  // The experts' outputs are added into y (moe_combine, the shared expert with beta 1).
  if (!p.accumulate) IC_CUDA_CHECK(cudaMemsetAsync(y, 0, size_t(T) * H * sizeof(float), cs(stream_)));

  // Decode: GEMVs over the chosen experts' weights (expert ids read on the device).
  auto gemv_of = [&](const void* wt, int64_t ld, int64_t stride, const void* x, int64_t x_stride, float* out,
                     int64_t out_stride, int64_t rows, int cols) {
    gpu::GemvArgs g;
    g.w = wt;
    g.ldw = ld;
    g.w_batch_stride = stride;
    g.ids = w.chosen;
    g.x = x;
    g.x_batch_stride = x_stride;
    g.y = out;
    g.y_f32 = true;
    g.y_batch_stride = out_stride;
    g.batch = K;
    g.rows = rows;
    g.cols = cols;
    return g;
  };
  std::vector<gpu::GemvArgs> up_gemvs;
  if (X.fused) {
    up_gemvs.push_back(gemv_of(X.gate, X.gate_ld, X.gate_stride, p.x.data, 0, w.dgu, 2 * I, 2 * I, H));
  } else {
    up_gemvs.push_back(gemv_of(X.gate, X.gate_ld, X.gate_stride, p.x.data, 0, w.dgu, 2 * I, I, H));
    up_gemvs.push_back(gemv_of(X.up, X.up_ld, X.up_stride, p.x.data, 0, w.dgu + I, 2 * I, I, H));
  }
  const gpu::GemvArgs down_gemv = gemv_of(X.down, X.down_ld, X.down_stride, w.eact, I, w.dy, H, H, I);
  bool decode = T == 1 && gpu::gemv_supported(down_gemv);
  for (const gpu::GemvArgs& g : up_gemvs) decode = decode && gpu::gemv_supported(g);
  if (decode) {
    for (const gpu::GemvArgs& g : up_gemvs) gpu::gemv(g, stream_);
    gpu::silu_mul_f32(w.dgu, 2 * int64_t(I), w.eact, I, K, I, stream_);
    gpu::gemv(down_gemv, stream_);
    gpu::moe_combine(w.dy, true, nullptr, w.route_w, 1, K, H, y, stream_);
  } else {
    gpu::moe_dispatch(w.chosen, P, K, E, w.counts, w.offsets, w.cursor, w.slot, w.slot_token, stream_);
    gpu::moe_gather(p.x.data, w.slot_token, P, H, w.xe, stream_);
    // Expert GEMMs over the expert-sorted rows, row ranges read from w.offsets on the device.
    auto grouped = [&](const void* x, int64_t ldx, const void* wt, int64_t ldw, int64_t stride, void* out,
                       int64_t ldy, int n, int k) {
      gpu::GroupedGemmArgs g;
      g.x = x;
      g.ldx = ldx;
      g.w = wt;
      g.ldw = ldw;
      g.w_expert_stride = stride;
      g.y = out;
      g.ldy = ldy;
      g.offsets = w.offsets;
      g.experts = E;
      g.max_rows = P;
      g.n = n;
      g.k = k;
      return g;
    };
    std::vector<gpu::GroupedGemmArgs> ups;
    if (X.fused) {
      ups.push_back(grouped(w.xe, H, X.gate, X.gate_ld, X.gate_stride, w.egu, 2 * I, 2 * I, H));
    } else {
      ups.push_back(grouped(w.xe, H, X.gate, X.gate_ld, X.gate_stride, w.egu, 2 * I, I, H));
      ups.push_back(grouped(w.xe, H, X.up, X.up_ld, X.up_stride, static_cast<uint16_t*>(w.egu) + I, 2 * I, I, H));
    }
    const gpu::GroupedGemmArgs dn = grouped(w.eact, I, X.down, X.down_ld, X.down_stride, w.ye, H, H, I);
    bool all_grouped = gpu::grouped_gemm_supported(dn);
    for (const auto& g : ups) all_grouped = all_grouped && gpu::grouped_gemm_supported(g);
    if (all_grouped) {
      for (const auto& g : ups) gpu::grouped_gemm_bf16(g, stream_);
      gpu::silu_mul_bf16(w.egu, 2 * int64_t(I), w.eact, I, P, I, stream_);
      gpu::grouped_gemm_bf16(dn, stream_);
    } else {
      // Widths the grouped kernel rejects: one GEMM per expert, sized on the host (a stream sync).
      std::vector<int32_t> off(E + 1);
      IC_CUDA_CHECK(cudaMemcpyAsync(off.data(), w.offsets, sizeof(int32_t) * (E + 1), cudaMemcpyDeviceToHost,
                                    cs(stream_)));
      IC_CUDA_CHECK(cudaStreamSynchronize(cs(stream_)));
      auto expert_w = [](const void* base, int64_t stride, int e) {
        return static_cast<const void*>(static_cast<const uint16_t*>(base) + stride * e);
      };
      for (int e = 0; e < E; ++e) {
        const int r0 = off[e], cnt = off[e + 1] - r0;
        if (cnt <= 0) continue;
        const uint16_t* xe = static_cast<const uint16_t*>(w.xe) + size_t(r0) * H;
        uint16_t* egu = static_cast<uint16_t*>(w.egu) + size_t(r0) * 2 * I;
        if (X.fused) {
          gemm_bf16(lin(xe, H, expert_w(X.gate, X.gate_stride, e), X.gate_ld, egu, 2 * I, false, cnt, 2 * I, H));
        } else {
          gemm_bf16(lin(xe, H, expert_w(X.gate, X.gate_stride, e), X.gate_ld, egu, 2 * I, false, cnt, I, H));
          gemm_bf16(lin(xe, H, expert_w(X.up, X.up_stride, e), X.up_ld, egu + I, 2 * I, false, cnt, I, H));
        }
      }
      gpu::silu_mul_bf16(w.egu, 2 * int64_t(I), w.eact, I, P, I, stream_);
      for (int e = 0; e < E; ++e) {
        const int r0 = off[e], cnt = off[e + 1] - r0;
        if (cnt <= 0) continue;
        gemm_bf16(lin(static_cast<const uint16_t*>(w.eact) + size_t(r0) * I, I, expert_w(X.down, X.down_stride, e),
                      X.down_ld, static_cast<uint16_t*>(w.ye) + size_t(r0) * H, H, false, cnt, H, I));
      }
    }
    gpu::moe_combine(w.ye, false, w.slot, w.route_w, T, K, H, y, stream_);
  }
  if (p.shared) mlp_bf16(*p.shared, p.x.data, H, T, y, true, H, 1.0f, w.sgu, w.sact);
}

void CudaBackend::moe_f32(const MoeOp& p) {
  const int T = static_cast<int>(p.x.shape[0]), H = static_cast<int>(p.x.shape[1]);
  const int E = static_cast<int>(p.experts.size()), K = p.experts_per_token;
  const int I = static_cast<int>(p.experts[0].gate.shape[0]);
  const int Is = p.shared ? static_cast<int>(p.shared->gate.shape[0]) : 0;
  const int P = T * K;
  const int Im = std::max(I, Is);
  struct Work {
    float *logits, *wts, *xe, *g, *u, *ye, *sh;
    int32_t* rows;
  } w{};
  auto layout = [&](Carver& c) {
    w.logits = c.take<float>(size_t(T) * E);
    w.rows = c.take<int32_t>(P);
    w.wts = c.take<float>(P);
    w.xe = c.take<float>(size_t(T) * H);
    w.g = c.take<float>(size_t(T) * Im);
    w.u = c.take<float>(size_t(T) * Im);
    w.ye = c.take<float>(size_t(T) * H);
    w.sh = c.take<float>(size_t(T) * H);
  };
  Carver measure;
  layout(measure);
  Carver carve(scratch(measure.size()));
  layout(carve);

  const float* x = p.x.as<const float>();
  float* y = p.y.as<float>();
  bk::gemm_f32(lin32(x, H, p.router.data, p.router.stride[0], w.logits, E, T, E, H), stream_);
  // Routing on the host: the CPU backend's own code, on this backend's logits.
  std::vector<float> logits(size_t(T) * E), bias(E);
  IC_CUDA_CHECK(cudaMemcpyAsync(logits.data(), w.logits, logits.size() * sizeof(float), cudaMemcpyDeviceToHost,
                                cs(stream_)));
  IC_CUDA_CHECK(cudaMemcpyAsync(bias.data(), p.router_bias.data, bias.size() * sizeof(float), cudaMemcpyDeviceToHost,
                                cs(stream_)));
  IC_CUDA_CHECK(cudaStreamSynchronize(cs(stream_)));
  cpu::Routing routing;
  routing.experts = E;
  routing.groups = p.groups;
  routing.topk_group = p.topk_group;
  routing.experts_per_token = K;
  routing.norm_topk_prob = p.norm_topk_prob;
  routing.routed_scaling = p.routed_scaling;
  const cpu::RoutingResult r = cpu::route_tokens(routing, logits.data(), bias.data(), T);
  // Tokens of each expert in token order (the CPU's), as one list with per-expert offsets.
  std::vector<int> off(E + 1, 0);
  for (int32_t e : r.experts) ++off[e + 1];
  for (int e = 0; e < E; ++e) off[e + 1] += off[e];
  std::vector<int32_t> rows(P);
  std::vector<float> wts(P);
  std::vector<int> fill(off.begin(), off.end() - 1);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < K; ++i) {
      const int e = r.experts[size_t(t) * K + i];
      rows[fill[e]] = t;
      wts[fill[e]++] = r.weights[size_t(t) * K + i];
    }
  IC_CUDA_CHECK(cudaMemcpyAsync(w.rows, rows.data(), rows.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                                cs(stream_)));
  IC_CUDA_CHECK(cudaMemcpyAsync(w.wts, wts.data(), wts.size() * sizeof(float), cudaMemcpyHostToDevice, cs(stream_)));
  if (!p.accumulate) IC_CUDA_CHECK(cudaMemsetAsync(y, 0, size_t(T) * H * sizeof(float), cs(stream_)));
  for (int e = 0; e < E; ++e) {
    const int n = off[e + 1] - off[e];
    if (n == 0) continue;
    bk::gather_rows_f32(x, H, w.rows + off[e], n, H, w.xe, H, stream_);
    mlp_f32(p.experts[e], w.xe, H, n, w.ye, H, w.g, w.u);
    bk::scatter_add_rows_f32(w.ye, H, w.rows + off[e], w.wts + off[e], n, H, y, H, stream_);
  }
  if (p.shared) {
    mlp_f32(*p.shared, x, H, T, w.sh, H, w.g, w.u);
    bk::Strided ys, ss;
    ys.data = y;
    ss.data = w.sh;
    ys.d1 = ss.d1 = T;
    ys.d2 = ss.d2 = H;
    ys.s1 = ss.s1 = H;
    bk::add(ys, ss, stream_);
  }
  // The host vectors above are read by copies already staged (pageable memory); wait anyway so the
  // routing vectors' lifetime never matters.
  IC_CUDA_CHECK(cudaStreamSynchronize(cs(stream_)));
}

}  // namespace indexcache::cuda
