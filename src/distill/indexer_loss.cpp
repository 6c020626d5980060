#include "distill/indexer_loss.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "backend/cpu/kernels.h"
#include "indexcache/error.h"

namespace indexcache::distill {

namespace {

constexpr float kKeyNormEps = 1e-6f;  // the indexer's key LayerNorm (as the engine's)

std::vector<float> to_f32(WeightRef w, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  convert_to_f32(w.dtype, w.data, out.size(), out.data());
  return out;
}

// y[M, N] = a[M, K] . b[N, K]^T (+ y when accumulate); row-major, contiguous.
void gemm_nt(const float* a, const float* b, float* y, int M, int N, int K, bool accumulate = false) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, b, K, accumulate ? 1.0f : 0.0f, y, N);
}
// y[M, N] = a[M, K] . b[K, N]
void gemm_nn(const float* a, const float* b, float* y, int M, int N, int K) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, K, b, N, 0.0f, y, N);
}
// y[M, N] (+)= a[K, M]^T . b[K, N]
void gemm_tn(const float* a, const float* b, float* y, int M, int N, int K, bool accumulate = false) {
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, N, K, 1.0f, a, M, b, N, accumulate ? 1.0f : 0.0f, y, N);
}

// RoPE over the first rope_dim dims of each of `heads` heads of x [tokens, heads, dim] at positions
// 0..tokens-1; `inverse` applies the transpose (the rotation by -theta), which backpropagates it.
void rope_heads(const ModelSpec& spec, const RopeTable& rope, float* x, int tokens, int heads, int dim,
                bool inverse) {
  std::vector<int32_t> positions(tokens);
  std::iota(positions.begin(), positions.end(), 0);
  std::vector<float> neg_sin;
  const float* sin = rope.sin.data();
  if (inverse) {
    neg_sin.assign(rope.sin.begin(), rope.sin.begin() + static_cast<int64_t>(tokens) * rope.half);
    for (float& v : neg_sin) v = -v;
    sin = neg_sin.data();
  }
  cpu::rope({.x = x, .token_stride = int64_t{heads} * dim, .head_stride = dim, .tokens = tokens, .heads = heads,
             .offset = 0, .rope_dim = spec.qk_rope_head_dim, .cos = rope.cos.data(), .sin = sin,
             .positions = positions.data(), .layout = spec.indexer_rope_layout()});
}

// The student's forward on the whole sequence, with what the backward needs.
struct Forward {
  std::vector<float> q;      // [T, Hi, Di] roped
  std::vector<float> k;      // [T, Di] normed, roped
  std::vector<float> khat;   // [T, Di] normalised key before the affine part
  std::vector<float> rstd;   // [T]
  std::vector<float> w;      // [T, Hi] head weights (times Hi^-0.5)
};

Forward student_forward(const ModelSpec& s, const RopeTable& rope, const IndexerParams& p, const TeacherLayer& f,
                        int T) {
  const int hi = s.index_n_heads, di = s.index_head_dim, H = s.hidden_size, qlr = s.q_lora_rank;
  Forward fw;
  fw.q.resize(static_cast<size_t>(T) * hi * di);
  gemm_nt(f.query_latent.data(), p.wq_b.data(), fw.q.data(), T, hi * di, qlr);
  rope_heads(s, rope, fw.q.data(), T, hi, di, false);
  fw.k.resize(static_cast<size_t>(T) * di);
  gemm_nt(f.input.data(), p.wk.data(), fw.k.data(), T, di, H);
  fw.khat.resize(fw.k.size());
  fw.rstd.resize(T);
  for (int t = 0; t < T; ++t) {
    float* k = fw.k.data() + static_cast<size_t>(t) * di;
    float* xh = fw.khat.data() + static_cast<size_t>(t) * di;
    double mean = 0, var = 0;
    for (int i = 0; i < di; ++i) mean += k[i];
    mean /= di;
    for (int i = 0; i < di; ++i) var += (k[i] - mean) * (k[i] - mean);
    var /= di;
    const float rstd = static_cast<float>(1.0 / std::sqrt(var + kKeyNormEps));
    fw.rstd[t] = rstd;
    for (int i = 0; i < di; ++i) {
      xh[i] = (k[i] - static_cast<float>(mean)) * rstd;
      k[i] = xh[i] * p.k_norm_w[i] + p.k_norm_b[i];
    }
  }
  rope_heads(s, rope, fw.k.data(), T, 1, di, false);
  fw.w.resize(static_cast<size_t>(T) * hi);
  gemm_nt(f.input.data(), p.weights_proj.data(), fw.w.data(), T, hi, H);
  const float a = 1.0f / std::sqrt(static_cast<float>(hi));
  for (float& v : fw.w) v *= a;
  return fw;
}

// dots[b, h, s] = q[t0 + b, h] . k[s] for s < S; then scores[b, s] = c * sum_h w relu(dots).
void block_scores(const ModelSpec& s, const Forward& fw, int t0, int B, int S, std::vector<float>& dots,
                  std::vector<float>& scores) {
  const int hi = s.index_n_heads, di = s.index_head_dim;
  const float c = 1.0f / std::sqrt(static_cast<float>(di));
  dots.resize(static_cast<size_t>(B) * hi * S);
  gemm_nt(fw.q.data() + static_cast<size_t>(t0) * hi * di, fw.k.data(), dots.data(), B * hi, S, di);
  scores.assign(static_cast<size_t>(B) * S, 0.0f);
#pragma omp parallel for schedule(static)
  for (int b = 0; b < B; ++b) {
    float* row = scores.data() + static_cast<size_t>(b) * S;
    for (int h = 0; h < hi; ++h) {
      const float wt = fw.w[static_cast<size_t>(t0 + b) * hi + h] * c;
      const float* d = dots.data() + (static_cast<size_t>(b) * hi + h) * S;
      for (int j = 0; j < S; ++j) row[j] += wt * std::max(d[j], 0.0f);
    }
  }
}

// The keys query t is scored over: 0..t (dense) or the top min(k, t+1) of its scores (sparse).
void query_keys(const float* scores, int t, int topk, Stage stage, std::vector<int>& keys) {
  keys.resize(t + 1);
  std::iota(keys.begin(), keys.end(), 0);
  if (stage == Stage::kDense || t + 1 <= topk) return;
  std::partial_sort(keys.begin(), keys.begin() + topk, keys.end(), [scores](int a, int b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  });
  keys.resize(topk);
  std::sort(keys.begin(), keys.end());
}

}  // namespace

IndexerParams IndexerParams::zeros(const ModelSpec& s) {
  const size_t hi = s.index_n_heads, di = s.index_head_dim, H = s.hidden_size, qlr = s.q_lora_rank;
  IndexerParams t;
  t.wq_b.assign(hi * di * qlr, 0.0f);
  t.wk.assign(di * H, 0.0f);
  t.k_norm_w.assign(di, 0.0f);
  t.k_norm_b.assign(di, 0.0f);
  t.weights_proj.assign(hi * H, 0.0f);
  return t;
}

IndexerParams IndexerParams::from(const IndexerWeights& w, const ModelSpec& s) {
  const int64_t hi = s.index_n_heads, di = s.index_head_dim, H = s.hidden_size, qlr = s.q_lora_rank;
  if (!w.wq_b || !w.wk || !w.k_norm_w || !w.k_norm_b || !w.weights_proj)
    throw_bad_input("distill", "the layer has no indexer weights to train");
  IndexerParams t;
  t.wq_b = to_f32(w.wq_b, hi * di * qlr);
  t.wk = to_f32(w.wk, di * H);
  t.k_norm_w = to_f32(w.k_norm_w, di);
  t.k_norm_b = to_f32(w.k_norm_b, di);
  t.weights_proj = to_f32(w.weights_proj, hi * H);
  return t;
}

std::vector<std::vector<float>*> IndexerParams::all() { return {&wq_b, &wk, &k_norm_w, &k_norm_b, &weights_proj}; }
std::vector<const std::vector<float>*> IndexerParams::all() const {
  return {&wq_b, &wk, &k_norm_w, &k_norm_b, &weights_proj};
}

void TeacherCapture::on_attention(int layer, const AttentionInputs& in) {
  TeacherLayer& t = layers.at(layer);
  t.input.assign(in.input.begin(), in.input.end());
  t.query_latent.assign(in.query_latent.begin(), in.query_latent.end());
  t.queries.assign(in.queries.begin(), in.queries.end());
  t.keys.assign(in.keys.begin(), in.keys.end());
}

std::vector<float> indexer_scores(const ModelSpec& s, const RopeTable& rope, const IndexerParams& student,
                                  const TeacherLayer& f, int T) {
  const Forward fw = student_forward(s, rope, student, f, T);
  std::vector<float> dots, block, out(static_cast<size_t>(T) * T, -std::numeric_limits<float>::infinity());
  constexpr int kBlock = 64;
  for (int t0 = 0; t0 < T; t0 += kBlock) {
    const int B = std::min(kBlock, T - t0), S = t0 + B;
    block_scores(s, fw, t0, B, S, dots, block);
    for (int b = 0; b < B; ++b)
      std::copy_n(block.data() + static_cast<size_t>(b) * S, t0 + b + 1, out.data() + static_cast<size_t>(t0 + b) * T);
  }
  return out;
}

GroupLoss indexer_group_loss(const ModelSpec& s, const RopeTable& rope, const IndexerParams& student,
                             const TeacherLayer& f, std::span<const TeacherLayer* const> served, int T, Stage stage,
                             int query_block) {
  const int hi = s.index_n_heads, di = s.index_head_dim, H = s.hidden_size, qlr = s.q_lora_rank;
  const int nh = s.num_heads, lat = s.kv_lora_rank + s.qk_rope_head_dim;
  const int m = static_cast<int>(served.size());
  if (m == 0) throw_bad_input("distill", "an F layer serves at least itself");
  if (T <= 0 || static_cast<int64_t>(f.input.size()) != int64_t{T} * H)
    throw_bad_input("distill", "teacher capture does not match the token count");
  const float c = 1.0f / std::sqrt(static_cast<float>(di));
  const float scale = static_cast<float>(s.attention_scale());
  const Forward fw = student_forward(s, rope, student, f, T);

  GroupLoss out;
  out.grad = IndexerParams::zeros(s);
  std::vector<float> dq(static_cast<size_t>(T) * hi * di, 0.0f), dk(static_cast<size_t>(T) * di, 0.0f);
  std::vector<float> dw(static_cast<size_t>(T) * hi, 0.0f);
  std::vector<float> dots, scores, logits, pbar, dI;
  const int block = std::max(1, query_block);
  double loss = 0;
  for (int t0 = 0; t0 < T; t0 += block) {
    const int B = std::min(block, T - t0), S = t0 + B;
    block_scores(s, fw, t0, B, S, dots, scores);
    // Each query's keys (from the student's scores: the selection is not differentiated).
    std::vector<std::vector<int>> keys(B);
    for (int b = 0; b < B; ++b)
      query_keys(scores.data() + static_cast<size_t>(b) * S, t0 + b, s.index_topk, stage, keys[b]);
    // pbar[b, s]: the served layers' head-averaged attention over each query's keys.
    pbar.assign(static_cast<size_t>(B) * S, 0.0f);
    for (const TeacherLayer* j : served) {
      logits.resize(static_cast<size_t>(B) * nh * S);
      gemm_nt(j->queries.data() + static_cast<size_t>(t0) * nh * lat, j->keys.data(), logits.data(), B * nh, S, lat);
#pragma omp parallel for schedule(static)
      for (int b = 0; b < B; ++b) {
        const std::vector<int>& ks = keys[b];
        float* pr = pbar.data() + static_cast<size_t>(b) * S;
        std::vector<float> e(ks.size());
        for (int h = 0; h < nh; ++h) {
          const float* lg = logits.data() + (static_cast<size_t>(b) * nh + h) * S;
          float mx = -std::numeric_limits<float>::infinity();
          for (int key : ks) mx = std::max(mx, lg[key] * scale);
          double sum = 0;
          for (size_t i = 0; i < ks.size(); ++i) sum += (e[i] = std::exp(lg[ks[i]] * scale - mx));
          const float norm = static_cast<float>(1.0 / (sum * nh * m));
          for (size_t i = 0; i < ks.size(); ++i) pr[ks[i]] += e[i] * norm;
        }
      }
    }
    // q = softmax of the scores over the keys; the loss and dL/dI = (q - pbar) / T there.
    dI.assign(static_cast<size_t>(B) * S, 0.0f);
    double block_loss = 0;
#pragma omp parallel for schedule(static) reduction(+ : block_loss)
    for (int b = 0; b < B; ++b) {
      const std::vector<int>& ks = keys[b];
      const float* sc = scores.data() + static_cast<size_t>(b) * S;
      const float* pr = pbar.data() + static_cast<size_t>(b) * S;
      float* g = dI.data() + static_cast<size_t>(b) * S;
      float mx = -std::numeric_limits<float>::infinity();
      for (int key : ks) mx = std::max(mx, sc[key]);
      double sum = 0;
      for (int key : ks) sum += std::exp(static_cast<double>(sc[key]) - mx);
      const double log_sum = std::log(sum);
      for (int key : ks) {
        const double log_q = sc[key] - mx - log_sum;
        if (pr[key] > 0) block_loss += pr[key] * (std::log(static_cast<double>(pr[key])) - log_q);
        g[key] = static_cast<float>((std::exp(log_q) - pr[key]) / T);
      }
    }
    loss += block_loss;
    // Back through I[b, s] = c sum_h w[t, h] relu(dots[b, h, s]): dw, then dots becomes dL/d(dots).
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; ++b) {
      const float* g = dI.data() + static_cast<size_t>(b) * S;
      for (int h = 0; h < hi; ++h) {
        float* d = dots.data() + (static_cast<size_t>(b) * hi + h) * S;
        const float wt = fw.w[static_cast<size_t>(t0 + b) * hi + h];
        double acc = 0;
        for (int j = 0; j < S; ++j) {
          if (d[j] > 0) {
            acc += static_cast<double>(g[j]) * d[j];
            d[j] = c * wt * g[j];
          } else {
            d[j] = 0;
          }
        }
        dw[static_cast<size_t>(t0 + b) * hi + h] = static_cast<float>(c * acc);
      }
    }
    // dq[t0 + b, h] = sum_s G[b, h, s] k[s];  dk[s] += sum_{b, h} G[b, h, s] q[t0 + b, h].
    gemm_nn(dots.data(), fw.k.data(), dq.data() + static_cast<size_t>(t0) * hi * di, B * hi, di, S);
    gemm_tn(dots.data(), fw.q.data() + static_cast<size_t>(t0) * hi * di, dk.data(), S, di, B * hi, true);
  }
  out.loss = loss / T;

  // Through RoPE (its transpose), then the projections and the key LayerNorm.
  rope_heads(s, rope, dq.data(), T, hi, di, true);
  rope_heads(s, rope, dk.data(), T, 1, di, true);
  IndexerParams& g = out.grad;
  gemm_tn(dq.data(), f.query_latent.data(), g.wq_b.data(), hi * di, qlr, T);
  std::vector<float> dkraw(dk.size());
  for (int t = 0; t < T; ++t) {
    const float* dkn = dk.data() + static_cast<size_t>(t) * di;
    const float* xh = fw.khat.data() + static_cast<size_t>(t) * di;
    float* dx = dkraw.data() + static_cast<size_t>(t) * di;
    double mean_d = 0, mean_dx = 0;
    for (int i = 0; i < di; ++i) {
      g.k_norm_w[i] += dkn[i] * xh[i];
      g.k_norm_b[i] += dkn[i];
      const double dxh = static_cast<double>(dkn[i]) * student.k_norm_w[i];
      mean_d += dxh;
      mean_dx += dxh * xh[i];
    }
    mean_d /= di;
    mean_dx /= di;
    for (int i = 0; i < di; ++i) {
      const double dxh = static_cast<double>(dkn[i]) * student.k_norm_w[i];
      dx[i] = static_cast<float>(fw.rstd[t] * (dxh - mean_d - xh[i] * mean_dx));
    }
  }
  gemm_tn(dkraw.data(), f.input.data(), g.wk.data(), di, H, T);
  gemm_tn(dw.data(), f.input.data(), g.weights_proj.data(), hi, H, T);
  const float a = 1.0f / std::sqrt(static_cast<float>(hi));
  for (float& v : g.weights_proj) v *= a;
  return out;
}

}  // namespace indexcache::distill
