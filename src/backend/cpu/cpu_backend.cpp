// The CPU backend: host memory, f32 only, the reference kernels of kernels.h. Placement is a view
// of the host tensor itself; every op checks that its views are f32 (int32 for indices).
#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/moe.h"
#include "backend/op_checks.h"

namespace indexcache {

namespace {

using op_checks::need;
using op_checks::need_dtype;
const float* f32(const TensorView& v) { return v.empty() ? nullptr : v.as<const float>(); }
float* f32m(const TensorView& v) { return v.as<float>(); }

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) {
    if (threads > 0) omp_set_num_threads(threads);
  }
  std::string name() const override { return "cpu"; }
  DType activation_dtype() const override { return DType::kF32; }

  void upload(const TensorView& dst, const void* host) override { copy_host(host, dst, true); }
  void download(const TensorView& src, void* host) override { copy_host(host, src, false); }
  void sync() override {}
  size_t bytes_in_use() const override { return in_use_ + converted_bytes_ + temp_.size() * sizeof(float); }

 protected:
  // f32 in place (a view of the host tensor); bf16 / f16 converted once into an owned f32 copy.
  TensorView do_place(const void* w, DType t, std::span<const int64_t> shape, bool) override {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const float* data = static_cast<const float*>(w);
    if (t != DType::kF32) {
      if (t != DType::kBF16 && t != DType::kF16)
        throw_op_error("place", std::string("weights of dtype ") + std::string(dtype_name(t)) + " (F32, BF16 or F16)");
      auto [it, fresh] = converted_.try_emplace(w);
      if (fresh) {
        it->second.resize(static_cast<size_t>(n));
        convert_to_f32(t, w, static_cast<size_t>(n), it->second.data());
        converted_bytes_ += static_cast<size_t>(n) * sizeof(float);
      }
      data = it->second.data();
    }
    TensorView v;
    v.data = const_cast<float*>(data);
    v.dtype = DType::kF32;
    v.rank = static_cast<int>(shape.size());
    int64_t s = 1;
    for (int i = v.rank - 1; i >= 0; --i) {
      v.shape[i] = shape[i];
      v.stride[i] = s;
      s *= shape[i];
    }
    return v;
  }

  void* allocate(size_t bytes) override {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p) throw std::bad_alloc();
    in_use_ += bytes;
    return p;
  }
  void deallocate(void* p, size_t bytes) override {
    std::free(p);
    in_use_ -= bytes;
  }

  void do_linear(const LinearOp& p) override {
    for (const TensorView* v : {&p.x, &p.w, &p.y}) need_dtype(*v, DType::kF32, "linear", "a tensor");
    need(p.x.rank == 2 && p.w.rank == 2 && p.y.rank == 2, "linear", "x, w and y must be 2-D");
    need(p.w.stride[0] == p.w.shape[1], "linear", "w rows must be contiguous");
    need(p.x.shape[1] == p.w.shape[1] && p.y.shape[1] == p.w.shape[0] && p.x.shape[0] == p.y.shape[0], "linear",
         "shapes disagree");
    need(p.alpha == 1.0f || p.bias.empty(), "linear", "alpha != 1 takes no bias");
    const int64_t T = p.x.shape[0], out = p.w.shape[0];
    // accumulate: the product into a temporary, then added (as a separate add op would).
    float* y = p.accumulate ? temporary(T * out) : f32m(p.y);
    const int64_t ldy = p.accumulate ? out : p.y.stride[0];
    cpu::linear({.x = f32(p.x), .x_stride = p.x.stride[0], .w = f32(p.w), .bias = f32(p.bias), .y = y,
                 .y_stride = ldy, .tokens = static_cast<int>(T), .in = static_cast<int>(p.x.shape[1]),
                 .out = static_cast<int>(out)});
    if (p.alpha != 1.0f)
      for (int64_t r = 0; r < T; ++r)
        for (int64_t i = 0; i < out; ++i) y[r * ldy + i] *= p.alpha;
    if (p.accumulate) add_rows(p.y, y, out);
  }
  void do_linear_heads(const LinearHeadsOp& p) override {
    for (const TensorView* v : {&p.x, &p.w, &p.y}) need_dtype(*v, DType::kF32, "linear_heads", "a tensor");
    need(p.x.rank == 3 && p.w.rank == 3 && p.y.rank == 3, "linear_heads", "x, w and y must be 3-D");
    need(p.w.stride[1] == p.w.shape[2], "linear_heads", "w rows must be contiguous");
    const int64_t heads = p.x.shape[1];
    need(p.w.shape[0] == heads && p.y.shape[1] == heads && p.x.shape[2] == p.w.shape[2] &&
             p.y.shape[2] == p.w.shape[1] && p.x.shape[0] == p.y.shape[0],
         "linear_heads", "shapes disagree");
    for (int64_t h = 0; h < heads; ++h)
      cpu::linear({.x = static_cast<const float*>(p.x.at(0, h)), .x_stride = p.x.stride[0],
                   .w = static_cast<const float*>(p.w.at(h)), .y = static_cast<float*>(p.y.at(0, h)),
                   .y_stride = p.y.stride[0], .tokens = static_cast<int>(p.x.shape[0]),
                   .in = static_cast<int>(p.x.shape[2]), .out = static_cast<int>(p.w.shape[1])});
  }
  void do_norm(const NormOp& p) override {
    for (const TensorView* v : {&p.x, &p.w, &p.y}) need_dtype(*v, DType::kF32, "norm", "a tensor");
    need(p.x.rank == 2 && p.y.rank == 2 && p.x.shape == p.y.shape, "norm", "x and y must be 2-D of one shape");
    cpu::norm({.x = f32(p.x), .x_stride = p.x.stride[0], .w = f32(p.w), .bias = f32(p.bias), .y = f32m(p.y),
               .y_stride = p.y.stride[0], .tokens = static_cast<int>(p.x.shape[0]),
               .dim = static_cast<int>(p.x.shape[1]), .eps = p.eps, .layer_norm = p.layer_norm});
  }
  void do_rope(const RopeOp& p) override {
    need_dtype(p.x, DType::kF32, "rope", "x");
    need_dtype(p.positions, DType::kI32, "rope", "positions");
    need(p.x.rank == 2 || p.x.rank == 3, "rope", "x must be 2-D or 3-D");
    if (!p.src.empty()) {  // src's dims into x's, then rotated there
      need(p.src.rank == p.x.rank && p.src.shape[0] == p.x.shape[0] && (p.x.rank == 2 || p.src.shape[1] == p.x.shape[1]) &&
               p.src.shape[p.src.rank - 1] == p.rope_dim && p.offset + p.rope_dim <= p.x.shape[p.x.rank - 1],
           "rope", "src must be [T, rope_dim] or [T, heads, rope_dim] beside x");
      do_copy({.src = p.src, .dst = p.x.cols(p.offset, p.rope_dim)});
    }
    const bool heads3 = p.x.rank == 3;
    cpu::rope({.x = f32m(p.x), .token_stride = p.x.stride[0], .head_stride = heads3 ? p.x.stride[1] : 0,
               .tokens = static_cast<int>(p.x.shape[0]), .heads = heads3 ? static_cast<int>(p.x.shape[1]) : 1,
               .offset = p.offset, .rope_dim = p.rope_dim, .cos = f32(p.cos), .sin = f32(p.sin),
               .positions = p.positions.as<const int32_t>(), .layout = p.layout});
  }
  void do_indexer_scores(const IndexerScoresOp& p) override {
    for (const TensorView* v : {&p.q, &p.w, &p.k, &p.scores}) need_dtype(*v, DType::kF32, "indexer_scores", "a tensor");
    need(p.q.rank == 3 && p.q.stride[1] == p.q.shape[2] && p.q.stride[0] == p.q.shape[1] * p.q.shape[2],
         "indexer_scores", "q must be contiguous [T, H, D]");
    need(p.k.stride[0] == p.k.shape[1] && p.w.stride[0] == p.w.shape[1], "indexer_scores",
         "k and w must be contiguous");
    const float* keys = f32(p.k);
    int64_t S = p.k.shape[0];
    std::vector<float> gathered;
    if (!p.pages.empty()) {  // the sequence's keys gathered from their pages (the kernel repacks them anyway)
      S = p.scores.shape[1];
      const int64_t D = p.k.shape[1];
      gathered.resize(static_cast<size_t>(S * D));
      for (int64_t s = 0; s < S; ++s)
        std::memcpy(gathered.data() + s * D, p.k.at(paged_row(p.pages, s, p.k.shape[0], "indexer_scores")),
                    static_cast<size_t>(D) * sizeof(float));
      keys = gathered.data();
    }
    cpu::indexer_scores({.q = f32(p.q), .w = f32(p.w), .k = keys, .positions = p.positions.as<const int32_t>(),
                         .scores = f32m(p.scores), .scores_stride = p.scores.stride[0],
                         .tokens = static_cast<int>(p.q.shape[0]), .keys = static_cast<int>(S),
                         .heads = static_cast<int>(p.q.shape[1]), .head_dim = static_cast<int>(p.q.shape[2]),
                         .scale = p.scale});
  }
  void do_topk(const TopkOp& p) override {
    need_dtype(p.scores, DType::kF32, "topk", "scores");
    need(p.indices.stride[0] == p.indices.shape[1], "topk", "indices must be contiguous [T, k]");
    cpu::topk({.scores = f32(p.scores), .scores_stride = p.scores.stride[0], .valid = p.valid.as<const int32_t>(),
               .indices = p.indices.as<int32_t>(), .tokens = static_cast<int>(p.indices.shape[0]),
               .k = static_cast<int>(p.indices.shape[1])});
  }
  void do_sparse_attention(const SparseAttentionOp& p) override {
    for (const TensorView* v : {&p.q, &p.kv, &p.out}) need_dtype(*v, DType::kF32, "sparse_attention", "a tensor");
    need(p.q.rank == 3 && p.out.rank == 3, "sparse_attention", "q and out must be 3-D");
    need(p.indices.stride[0] == p.indices.shape[1], "sparse_attention", "indices must be contiguous [T, K]");
    const int32_t* indices = p.indices.as<const int32_t>();
    std::vector<int32_t> rows;
    if (!p.pages.empty()) {  // each selected index to its row of the page pool (-1 stays -1)
      rows.assign(indices, indices + p.indices.numel());
      for (int32_t& r : rows)
        if (r >= 0) r = static_cast<int32_t>(paged_row(p.pages, r, p.kv.shape[0], "sparse_attention"));
      indices = rows.data();
    }
    cpu::sparse_attention({.q = f32(p.q), .q_token_stride = p.q.stride[0], .q_head_stride = p.q.stride[1],
                           .k = f32(p.kv), .k_token_stride = p.kv.stride[0], .k_head_stride = 0, .v = f32(p.kv),
                           .v_token_stride = p.kv.stride[0], .v_head_stride = 0,
                           .indices = indices, .num_selected = static_cast<int>(p.indices.shape[1]),
                           .out = f32m(p.out), .out_token_stride = p.out.stride[0], .out_head_stride = p.out.stride[1],
                           .tokens = static_cast<int>(p.q.shape[0]), .heads = static_cast<int>(p.q.shape[1]),
                           .kv_heads = 1, .head_dim_k = static_cast<int>(p.q.shape[2]),
                           .head_dim_v = static_cast<int>(p.out.shape[2]), .scale = p.scale});
  }
  void do_mlp(const MlpOp& p) override {
    for (const TensorView* v : {&p.x, &p.y}) need_dtype(*v, DType::kF32, "mlp", "a tensor");
    need(p.x.stride[0] == p.x.shape[1] && p.y.stride[0] == p.y.shape[1], "mlp", "x and y must be contiguous");
    const int64_t T = p.x.shape[0], H = p.x.shape[1];
    float* y = p.accumulate ? temporary(T * H) : f32m(p.y);
    cpu::mlp(cpu_mlp(p.w), f32(p.x), static_cast<int>(T), static_cast<int>(H), static_cast<int>(p.w.gate.shape[0]), y);
    if (p.accumulate) add_rows(p.y, y, H);
  }
  void do_moe(const MoeOp& p) override {
    for (const TensorView* v : {&p.x, &p.y, &p.router, &p.router_bias}) need_dtype(*v, DType::kF32, "moe", "a tensor");
    need(p.x.stride[0] == p.x.shape[1] && p.y.stride[0] == p.y.shape[1], "moe", "x and y must be contiguous");
    cpu::MoeArgs a;
    a.x = f32(p.x);
    a.y = p.accumulate ? temporary(p.x.shape[0] * p.x.shape[1]) : f32m(p.y);
    a.tokens = static_cast<int>(p.x.shape[0]);
    a.hidden = static_cast<int>(p.x.shape[1]);
    a.router = f32(p.router);
    a.router_bias = f32(p.router_bias);
    a.experts.reserve(p.experts.size());
    for (const MlpWeightsView& e : p.experts) a.experts.push_back(cpu_mlp(e));
    a.inter = p.experts.empty() ? 0 : static_cast<int>(p.experts[0].gate.shape[0]);
    if (p.shared) {
      a.has_shared = true;
      a.shared = cpu_mlp(*p.shared);
      a.shared_inter = static_cast<int>(p.shared->gate.shape[0]);
    }
    a.routing = {.experts = static_cast<int>(p.experts.size()), .groups = p.groups, .topk_group = p.topk_group,
                 .experts_per_token = p.experts_per_token, .norm_topk_prob = p.norm_topk_prob,
                 .routed_scaling = p.routed_scaling};
    cpu::moe(a);
    if (p.accumulate) add_rows(p.y, a.y, p.x.shape[1]);
  }
  void do_cache_rows(const CacheRowsOp& p) override {
    const char* op = "cache_rows";
    need_dtype(p.x, DType::kF32, op, "x");
    need_dtype(p.cache, DType::kF32, op, "cache");
    need_dtype(p.positions, DType::kI32, op, "positions");
    need(p.x.rank == 2 && p.cache.rank == 2 && p.x.shape[1] == p.cache.shape[1], op,
         "x and cache must be 2-D of one width");
    const int64_t T = p.x.shape[0], w = p.x.shape[1];
    need(p.positions.rank == 1 && p.positions.shape[0] >= T, op, "positions must be int32 [T]");
    need(p.norm_dim > 0 && p.norm_dim <= w && p.rope_offset >= 0 && p.rope_offset + p.rope_dim <= w, op,
         "norm_dim and the rope dims must lie in the row");
    // The row in a temporary: norm, the rest as it is, rope, then to the cache rows (as the norm,
    // copy, rope and copy ops would).
    float* r = temporary(T * w);
    const TensorView rv = view2d(r, DType::kF32, T, w);
    do_norm({.x = p.x.cols(0, p.norm_dim), .w = p.norm_w, .bias = p.norm_bias, .y = rv.cols(0, p.norm_dim),
             .eps = p.eps, .layer_norm = p.layer_norm});
    if (p.norm_dim < w) do_copy({.src = p.x.cols(p.norm_dim, w - p.norm_dim), .dst = rv.cols(p.norm_dim, w - p.norm_dim)});
    do_rope({.x = rv, .offset = p.rope_offset, .rope_dim = p.rope_dim, .cos = p.cos, .sin = p.sin,
             .positions = p.positions, .layout = p.layout});
    if (p.pages.empty()) {
      do_copy({.src = rv, .dst = p.cache, .dst_rows = view1d(p.positions.data, DType::kI32, T)});
      return;
    }
    const int32_t* pos = p.positions.as<const int32_t>();
    std::vector<int32_t> rows(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) rows[t] = static_cast<int32_t>(paged_row(p.pages, pos[t], p.cache.shape[0], op));
    do_copy({.src = rv, .dst = p.cache, .dst_rows = view1d(rows.data(), DType::kI32, T)});
  }
  void do_embed(const EmbedOp& p) override {
    need_dtype(p.table, DType::kF32, "embed", "table");
    need_dtype(p.out, DType::kF32, "embed", "out");
    const int64_t n = p.out.shape[0], h = p.out.shape[1];
    const int32_t* ids = p.ids.as<const int32_t>();
    for (int64_t t = 0; t < n; ++t)
      std::memcpy(p.out.at(t), p.table.at(ids[t]), static_cast<size_t>(h) * sizeof(float));
  }
  void do_add(const AddOp& p) override {
    need_dtype(p.x, DType::kF32, "add", "x");
    need_dtype(p.y, DType::kF32, "add", "y");
    need(p.x.shape == p.y.shape && p.x.rank == 2, "add", "x and y must be 2-D of one shape");
    for (int64_t r = 0; r < p.x.shape[0]; ++r) {
      float* x = static_cast<float*>(p.x.at(r));
      const float* y = static_cast<const float*>(p.y.at(r));
      for (int64_t i = 0; i < p.x.shape[1]; ++i) x[i] += y[i];
    }
  }
  void do_scale(const ScaleOp& p) override {
    need_dtype(p.x, DType::kF32, "scale", "x");
    for (int64_t r = 0; r < p.x.shape[0]; ++r) {
      float* x = static_cast<float*>(p.x.at(r));
      for (int64_t i = 0; i < (p.x.rank > 1 ? p.x.shape[1] : 1); ++i) x[i] *= p.factor;
    }
  }
  void do_copy(const CopyOp& p) override {
    need(p.src.dtype == p.dst.dtype, "copy", "dtypes differ (the CPU backend does not convert)");
    const size_t es = dtype_size(p.src.dtype);
    if (!p.dst_rows.empty()) {
      need(p.src.rank == 2 && p.dst.rank == 2 && p.src.shape[1] == p.dst.shape[1], "copy",
           "dst_rows needs 2-D src and dst of one width");
      need(p.dst_rows.rank == 1 && p.dst_rows.dtype == DType::kI32 && p.dst_rows.shape[0] == p.src.shape[0], "copy",
           "dst_rows must be int32 [src rows]");
      const int32_t* rows = p.dst_rows.as<const int32_t>();
      for (int64_t i = 0; i < p.src.shape[0]; ++i)
        if (rows[i] >= 0 && rows[i] < p.dst.shape[0])
          std::memmove(p.dst.at(rows[i]), p.src.at(i), static_cast<size_t>(p.src.shape[1]) * es);
      return;
    }
    need(p.src.rank == p.dst.rank && p.src.shape == p.dst.shape, "copy", "shapes differ");
    const int64_t d1 = p.src.rank > 1 ? p.src.shape[1] : 1;
    const int64_t inner = p.src.shape[p.src.rank - 1];
    for (int64_t i = 0; i < p.src.shape[0]; ++i)
      for (int64_t j = 0; j < (p.src.rank == 3 ? d1 : 1); ++j)
        std::memmove(p.dst.at(i, j), p.src.at(i, j), static_cast<size_t>(inner) * es);
  }

 private:
  // The pool row of a sequence's row s through its page table (checked: a bad table is an error,
  // never a stray write).
  static int64_t paged_row(const PageTable& t, int64_t s, int64_t pool_rows, const char* op) {
    need(t.page_rows > 0 && t.pages.dtype == DType::kI32 && t.pages.rank == 1, op, "pages must be int32 [P]");
    const int64_t page = s / t.page_rows;
    need(s >= 0 && page < t.pages.shape[0], op, "row " + std::to_string(s) + " past the page table");
    const int64_t row = int64_t{t.pages.as<const int32_t>()[page]} * t.page_rows + s % t.page_rows;
    need(row >= 0 && row < pool_rows, op, "page table points outside the pool");
    return row;
  }
  // A scratch block of n floats (valid until the next op).
  float* temporary(int64_t n) {
    if (static_cast<int64_t>(temp_.size()) < n) temp_.resize(static_cast<size_t>(n));
    return temp_.data();
  }
  // y[T, w] (strided rows) += t (contiguous [T, w]), row by row as the add op does.
  static void add_rows(const TensorView& y, const float* t, int64_t w) {
    for (int64_t r = 0; r < y.shape[0]; ++r) {
      float* yr = static_cast<float*>(y.at(r));
      const float* tr = t + r * w;
      for (int64_t i = 0; i < w; ++i) yr[i] += tr[i];
    }
  }
  static cpu::Mlp cpu_mlp(const MlpWeightsView& w) {
    for (const TensorView* v : {&w.gate, &w.up, &w.down}) need_dtype(*v, DType::kF32, "mlp", "a weight");
    return {f32(w.gate), f32(w.up), f32(w.down)};
  }
  // Host copies of a view's rows (2-D / 3-D strided or contiguous) to or from contiguous memory.
  static void copy_host(const void* host, const TensorView& v, bool to_view) {
    const size_t es = dtype_size(v.dtype);
    const int64_t inner = v.shape[v.rank - 1];
    const int64_t mid = v.rank == 3 ? v.shape[1] : 1;
    const int64_t outer = v.rank == 1 ? 1 : v.shape[0];
    const char* h = static_cast<const char*>(host);
    for (int64_t i = 0; i < outer; ++i)
      for (int64_t j = 0; j < mid; ++j) {
        char* p = static_cast<char*>(v.rank == 1 ? v.data : v.at(i, j));
        const size_t n = static_cast<size_t>(inner) * es;
        if (to_view)
          std::memcpy(p, h, n);
        else
          std::memcpy(const_cast<char*>(h), p, n);
        h += n;
      }
  }
  size_t in_use_ = 0;
  std::vector<float> temp_;  // temporary()
  std::unordered_map<const void*, std::vector<float>> converted_;  // bf16 / f16 weights as f32
  size_t converted_bytes_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace indexcache
