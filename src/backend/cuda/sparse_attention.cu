// Sparse attention on the GPU (f32, CUDA cores): for each query t and head h,
//   out[t, h] = softmax_j(scale * q[t, h] . K[j]) @ V[j]   over j in indices[t, :] (j < 0 skipped).
// One block per (query, kv head, sub-group of up to kHeadsPerBlock heads of that kv head's group):
// in the absorbed MQA form (kv_heads == 1) all heads share every selected row, so each row is read
// once per block for the scores and once for the values, whatever the number of heads. The selected
// rows are walked in chunks of kRows with an online (running max / running sum) softmax per head;
// q, the current K or V chunk, and the output accumulators live in shared memory.
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/cuda_ops.h"

namespace indexcache::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kHeadsPerBlock = 16;
constexpr int kRows = 16;  // selected rows per chunk (<= 32: one lane each in the softmax step)
constexpr int kMaxDim = 1024;

// Odd row pitch: kRows consecutive rows start in different banks.
__host__ __device__ inline int pitch(int d) { return (d % 2 == 0) ? d + 1 : d; }

struct Layout {
  int ldq, ldkv, hg;
  size_t q_off, kv_off, acc_off, p_off, stat_off, bytes;
};

__host__ __device__ inline Layout make_layout(int hg, int dk, int dv) {
  Layout L;
  L.hg = hg;
  L.ldq = pitch(dk);
  L.ldkv = pitch(dk > dv ? dk : dv);
  L.q_off = 0;
  L.kv_off = L.q_off + static_cast<size_t>(hg) * L.ldq;
  L.acc_off = L.kv_off + static_cast<size_t>(kRows) * L.ldkv;
  L.p_off = L.acc_off + static_cast<size_t>(hg) * dv;
  L.stat_off = L.p_off + static_cast<size_t>(hg) * kRows;  // m, l, alpha: hg each
  L.bytes = (L.stat_off + 3 * static_cast<size_t>(hg)) * sizeof(float) + kRows * sizeof(int);
  return L;
}

__global__ void __launch_bounds__(kThreads)
sparse_attention_kernel(SparseAttentionParams p) {
  extern __shared__ float smem[];
  const int t = blockIdx.x, g = blockIdx.y;
  const int group = p.heads / p.kv_heads;
  const int hsub = blockIdx.z * kHeadsPerBlock;
  const int hg = min(kHeadsPerBlock, group - hsub);
  const int h0 = g * group + hsub;  // first head of this block
  const int dk = p.head_dim_k, dv = p.head_dim_v;
  const Layout L = make_layout(hg, dk, dv);
  float* qs = smem + L.q_off;
  float* kv = smem + L.kv_off;
  float* acc = smem + L.acc_off;
  float* ps = smem + L.p_off;
  float* m_s = smem + L.stat_off;
  float* l_s = m_s + hg;
  float* alpha_s = l_s + hg;
  int* rows = reinterpret_cast<int*>(alpha_s + hg);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  for (int i = tid; i < hg * dk; i += kThreads) {
    const int h = i / dk, d = i % dk;
    qs[h * L.ldq + d] = p.q[t * p.q_token_stride + (h0 + h) * p.q_head_stride + d];
  }
  for (int i = tid; i < hg * dv; i += kThreads) acc[i] = 0.0f;
  if (tid < hg) {
    m_s[tid] = -INFINITY;
    l_s[tid] = 0.0f;
  }
  const int32_t* sel = p.indices + static_cast<int64_t>(t) * p.num_selected;

  for (int c0 = 0; c0 < p.num_selected; c0 += kRows) {
    const int nr = min(kRows, p.num_selected - c0);
    if (tid < kRows) rows[tid] = tid < nr ? sel[c0 + tid] : -1;
    __syncthreads();  // rows visible (and, on the first chunk, q and the zeroed statistics)
    for (int i = tid; i < kRows * dk; i += kThreads) {
      const int r = i / dk, d = i % dk;
      const int j = rows[r];
      if (j >= 0) kv[r * L.ldkv + d] = p.k[j * p.k_token_stride + g * p.k_head_stride + d];
    }
    __syncthreads();
    // Scores: one (head, row) pair per thread; skipped rows score -inf.
    for (int i = tid; i < hg * kRows; i += kThreads) {
      const int h = i / kRows, r = i % kRows;
      float s = -INFINITY;
      if (rows[r] >= 0) {
        const float* qh = qs + h * L.ldq;
        const float* kr = kv + r * L.ldkv;
        float a0 = 0.0f, a1 = 0.0f;
        int d = 0;
        for (; d + 1 < dk; d += 2) {
          a0 = fmaf(qh[d], kr[d], a0);
          a1 = fmaf(qh[d + 1], kr[d + 1], a1);
        }
        if (d < dk) a0 = fmaf(qh[d], kr[d], a0);
        s = (a0 + a1) * p.scale;
      }
      ps[h * kRows + r] = s;
    }
    __syncthreads();
    // Online softmax update, one warp per head.
    for (int h = warp; h < hg; h += kWarps) {
      const float s = lane < kRows ? ps[h * kRows + lane] : -INFINITY;
      float mx = s;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, o));
      const float m_old = m_s[h];
      const float m_new = fmaxf(m_old, mx);
      float e = 0.0f, alpha = 1.0f;
      if (m_new != -INFINITY) {
        e = s == -INFINITY ? 0.0f : expf(s - m_new);
        alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
      }
      float sum = e;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, o);
      if (lane < kRows) ps[h * kRows + lane] = e;
      if (lane == 0) {
        l_s[h] = l_s[h] * alpha + sum;
        m_s[h] = m_new;
        alpha_s[h] = alpha;
      }
    }
    // V chunk (overwrites K: every score read of kv finished before the previous barrier).
    for (int i = tid; i < kRows * dv; i += kThreads) {
      const int r = i / dv, d = i % dv;
      const int j = rows[r];
      if (j >= 0) kv[r * L.ldkv + d] = p.v[j * p.v_token_stride + g * p.v_head_stride + d];
    }
    __syncthreads();
    for (int i = tid; i < hg * dv; i += kThreads) {
      const int h = i / dv, d = i % dv;
      const float* ph = ps + h * kRows;
      float a = acc[i] * alpha_s[h];
      for (int r = 0; r < nr; ++r)
        if (rows[r] >= 0) a = fmaf(ph[r], kv[r * L.ldkv + d], a);
      acc[i] = a;
    }
    __syncthreads();  // rows, ps and kv are rewritten by the next chunk
  }
  __syncthreads();  // with nothing selected, the loop above never synchronised the initialisation
  for (int i = tid; i < hg * dv; i += kThreads) {
    const int h = i / dv, d = i % dv;
    const float l = l_s[h];
    p.out[t * p.out_token_stride + (h0 + h) * p.out_head_stride + d] = l > 0.0f ? acc[i] / l : 0.0f;
  }
}

}  // namespace

void sparse_attention(const SparseAttentionParams& p, void* stream) {
  if (p.tokens <= 0 || p.heads <= 0) return;
  if (p.kv_heads <= 0 || p.heads % p.kv_heads != 0)
    throw_runtime("cuda sparse_attention", "heads (" + std::to_string(p.heads) +
                                               ") must be a multiple of kv_heads (" +
                                               std::to_string(p.kv_heads) + ")");
  if (p.head_dim_k <= 0 || p.head_dim_k > kMaxDim || p.head_dim_v <= 0 || p.head_dim_v > kMaxDim)
    throw_runtime("cuda sparse_attention",
                  "head dims must be in 1.." + std::to_string(kMaxDim) + " (got " +
                      std::to_string(p.head_dim_k) + "/" + std::to_string(p.head_dim_v) + ")");
  const int group = p.heads / p.kv_heads;
  const int hg = group < kHeadsPerBlock ? group : kHeadsPerBlock;
  const size_t smem = make_layout(hg, p.head_dim_k, p.head_dim_v).bytes;
  int dev = 0, optin = 0;
  IC_CUDA_CHECK(cudaGetDevice(&dev));
  IC_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (smem > static_cast<size_t>(optin))
    throw_runtime("cuda sparse_attention", "needs " + std::to_string(smem) +
                                               " bytes of shared memory per block; the device allows " +
                                               std::to_string(optin));
  IC_CUDA_CHECK(cudaFuncSetAttribute(sparse_attention_kernel,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(smem)));
  const dim3 grid(p.tokens, p.kv_heads, (group + kHeadsPerBlock - 1) / kHeadsPerBlock);
  sparse_attention_kernel<<<grid, kThreads, smem, static_cast<cudaStream_t>(stream)>>>(p);
  IC_CUDA_CHECK_LAUNCH("sparse_attention launch");
}

}  // namespace indexcache::cuda
