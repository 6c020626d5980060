// The op interface the model calls, over memory the backend owns. The model never knows which
// backend runs it (CPU: f32 reference kernels; CUDA: bf16 tensor-core kernels, or f32 for the
// exact path); a backend never knows which model calls it.
//
// Memory: alloc() returns a Buffer (RAII) in the backend's memory; tensors are TensorViews on it.
// upload()/download() copy between host memory and a view; place() puts a host weight (f32, bf16
// or f16) into the backend's weight dtype once and returns its view (the same view on every later
// call for the same host pointer, shape and dtype: the host tensor must not change, nor another be
// mapped at its address, while the backend lives). On the CPU, buffers are host memory and an f32
// weight is placed as a view of the host tensor itself (no copy); others are converted to f32.
//
// Ops take one parameter struct each, of views. Every op checks its views (rank, dtype, shapes)
// and throws Error(kRuntime) naming the op for a combination it does not support. Ops are
// stream-ordered on backends that have streams: results are visible to later ops at once and to
// the host after download() (which synchronises) or sync().
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "backend/kernel_params.h"
#include "core/tensor_view.h"
#include "indexcache/model_spec.h"

namespace indexcache {

class Backend;

// One allocation in a backend's memory; frees itself.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Backend* owner, void* data, size_t bytes) : owner_(owner), data_(data), bytes_(bytes) {}
  ~Buffer() { release(); }
  Buffer(Buffer&& o) noexcept { *this = std::move(o); }
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  void release();

 private:
  Backend* owner_ = nullptr;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// A Buffer with the view of its whole extent.
struct Tensor {
  Buffer buffer;
  TensorView view{};
};

// ---- op parameters (shapes in comments; T tokens, H heads, S cached keys)

// y[T, out] = alpha * x[T, in] . w[out, in]^T (+ bias[out]), or y += that with accumulate (the
// residual stream). Rows of x and y may be strided. alpha != 1 takes no bias.
struct LinearOp {
  TensorView x{}, w{}, bias{}, y{};  // bias optional (empty)
  float alpha = 1.0f;
  bool accumulate = false;
};

// Per head h: y[:, h, :] = x[:, h, :] . w[h]^T. x [T, Hd, in]; w [Hd, out, in]; y [T, Hd, out].
struct LinearHeadsOp {
  TensorView x{}, w{}, y{};
};

// Each row of x [T, d] normalised into y [T, d] (y may be x): RMSNorm (x * rsqrt(mean(x^2) + eps)
// * w) or, with layer_norm, LayerNorm ((x - mean) * rsqrt(var + eps) * w + bias).
struct NormOp {
  TensorView x{}, w{}, bias{}, y{};
  float eps = 1e-6f;
  bool layer_norm = false;
};

// Rotates dims offset..offset+rope_dim of each head of x ([T, d] = one head, or [T, heads, d]) at
// position positions[t]; cos/sin f32 [positions, rope_dim / 2]. In place, or with src ([T,
// rope_dim] / [T, heads, rope_dim], x's dtype) those dims of x become src's rotated (src unchanged,
// x's other dims untouched).
struct RopeOp {
  TensorView x{};
  int offset = 0, rope_dim = 0;
  TensorView cos{}, sin{}, positions{};  // positions int32 [T]
  RopeLayout layout = RopeLayout::kInterleaved;
  TensorView src{};  // optional
};

// A cache kept in pages (the paged KV cache of a batch): a sequence's row s lives at row
// pages[s / page_rows] * page_rows + s % page_rows of the cache view, the page pool shared by every
// sequence. pages int32 [ceil(rows / page_rows)] in backend memory. Empty: row s is row s.
struct PageTable {
  TensorView pages{};
  int page_rows = 0;
  bool empty() const { return pages.empty(); }
};

// A chunk's new cache rows, written at their positions (through `pages` when set): for each t, r = x[t] (f32 [T, w]);
// r[0, norm_dim) normalised (RMSNorm with norm_w, or LayerNorm with norm_w and norm_bias), then
// r[rope_offset, rope_offset + rope_dim) rotated at positions[t] (as RopeOp); cache[positions[t]]
// = r in the cache's dtype. cache [S, w]; positions int32 [T] in backend memory, each a row of the
// cache. The MLA latent (norm_dim = kv_lora_rank, the rope part after it) and the indexer key
// (LayerNorm of all of it, the rope part first).
struct CacheRowsOp {
  TensorView x{}, norm_w{}, norm_bias{}, cache{}, positions{}, cos{}, sin{};
  int norm_dim = 0;
  float eps = 1e-6f;
  bool layer_norm = false;
  int rope_offset = 0, rope_dim = 0;
  RopeLayout layout = RopeLayout::kInterleaved;
  PageTable pages{};  // optional
};

// Lightning-indexer scores: scores[t, s] = scale * sum_h w[t, h] * relu(q[t, h] . k[s]) for
// s <= positions[t], -inf for later keys. q [T, H, D]; w f32 [T, H]; k [S, D]; scores f32 [T, S].
// With pages, k is the page pool ([rows, D], any row count) and key s its row through the table.
struct IndexerScoresOp {
  TensorView q{}, w{}, k{}, positions{}, scores{};
  float scale = 1.0f;
  PageTable pages{};  // optional
};

// Row-wise top-k of scores[t, 0..valid[t]) into indices int32 [T, k] (k = indices' width), the
// CPU backend's order and tie rule (see kernel_params.h); rows with valid[t] < k end in -1.
struct TopkOp {
  TensorView scores{}, valid{}, indices{};
};

// Sparse MLA in absorbed (MQA) form: out[t, h] = sum_j softmax_j(scale * q[t, h] . kv[j, :Dk])
// * kv[j, :Dv] over j = indices[t, :] (entries < 0 skipped). q [T, H, Dk]; kv [S, >= Dk] (the
// latent cache); indices int32 [T, K]; out [T, H, Dv]. With pages, kv is the page pool and index j
// its row through the table.
struct SparseAttentionOp {
  TensorView q{}, kv{}, indices{}, out{};
  float scale = 1.0f;
  PageTable pages{};  // optional
};

// SwiGLU MLP weights: gate, up [I, hidden]; down [hidden, I].
struct MlpWeightsView {
  TensorView gate{}, up{}, down{};
};

// y[T, hidden] = down(silu(gate(x)) * up(x)), or y += that with accumulate.
struct MlpOp {
  TensorView x{}, y{};
  MlpWeightsView w{};
  bool accumulate = false;
};

// Mixture of experts: group-limited sigmoid routing with a score-correction bias (transformers'
// glm_moe_dsa / deepseek_v3 router), the routed experts weighted, plus the shared expert.
// x [T, hidden]; router [E, hidden]; router_bias f32 [E]; y [T, hidden] (written, or added to
// with accumulate).
struct MoeOp {
  TensorView x{}, y{}, router{}, router_bias{};
  std::span<const MlpWeightsView> experts{};  // E of them
  const MlpWeightsView* shared = nullptr;   // optional
  int groups = 1, topk_group = 1, experts_per_token = 1;
  bool norm_topk_prob = true;
  float routed_scaling = 1.0f;
  bool accumulate = false;
};

// out[t] = table[ids[t]]. table [V, hidden]; ids int32 [T]; out [T, hidden].
struct EmbedOp {
  TensorView table{}, ids{}, out{};
};

// x += y (same shape).
struct AddOp {
  TensorView x{}, y{};
};

// x *= factor.
struct ScaleOp {
  TensorView x{};
  float factor = 1.0f;
};

// dst = src (same shape; dtypes may differ where the backend converts). With dst_rows (int32
// [src rows], 2-D views, read in backend memory): src row i goes to dst row dst_rows[i], dst of any
// row count (a value outside it skips the row), so a chunk's cache rows are written at positions
// the ops read on the device.
struct CopyOp {
  TensorView src{}, dst{};
  TensorView dst_rows{};  // optional
};

// A recorded sequence of ops (Backend::record), replayed by launch() on the same views: what they
// read (uploaded inputs, caches) may change between launches, their addresses and shapes may not.
// launch() is stream-ordered with the backend's other ops.
class OpGraph {
 public:
  virtual ~OpGraph() = default;
  virtual void launch() = 0;
};

// ---- profiler: wall seconds and calls per op kind (ops synchronise when one is attached)
enum class OpKind : int {
  kLinear, kLinearHeads, kNorm, kRope, kCacheRows, kIndexerScores, kTopk, kSparseAttention, kMlp, kMoe,
  kEmbed, kElementwise, kCount
};
const char* op_kind_name(OpKind k);
struct OpProfile {
  std::array<double, static_cast<int>(OpKind::kCount)> seconds{};
  std::array<int64_t, static_cast<int>(OpKind::kCount)> calls{};
  double of(OpKind k) const { return seconds[static_cast<int>(k)]; }
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // The dtype of activations, caches and placed weights on this backend (f32 on the CPU).
  virtual DType activation_dtype() const = 0;

  // ---- memory
  Buffer alloc(size_t bytes);
  Tensor tensor(DType t, int64_t rows, int64_t cols);
  // Host <-> backend copies; `host` is contiguous ([rows][cols] of the view, same dtype).
  virtual void upload(const TensorView& dst, const void* host) = 0;
  virtual void download(const TensorView& src, void* host) = 0;
  // The weight at host memory `w` of dtype `t` (f32, bf16 or f16, as the checkpoint stores it),
  // shape [d0] / [d0, d1] / [d0, d1, d2] (contiguous), in the backend's weight dtype
  // (activation_dtype(), or f32 with keep_f32: the router bias); placed once per host pointer,
  // shape and dtype, then the same view (the host tensor must stay unchanged while the backend
  // lives). bf16 goes to a bf16 backend as it is; anything else is converted (to f32 exactly as
  // convert_to_f32 does, then rounded to nearest even for bf16).
  TensorView place(const void* w, DType t, std::span<const int64_t> shape, bool keep_f32 = false) {
    return do_place(w, t, shape, keep_f32);
  }
  TensorView place(const float* w, std::span<const int64_t> shape, bool keep_f32 = false) {
    return do_place(w, DType::kF32, shape, keep_f32);
  }
  virtual void sync() = 0;
  // Indexer queries scored per block when the caller does not say (the score buffer holds
  // block x keys f32): small on the CPU (cache-sized), large on a GPU (fewer, fuller launches).
  virtual int indexer_query_block() const { return 256; }
  // Bytes of backend memory in use now (buffers and placed weights).
  virtual size_t bytes_in_use() const = 0;
  // The profile every later op adds to (nullptr: none).
  void set_profile(OpProfile* p) { profile_ = p; }
  bool profiling() const { return profile_ != nullptr; }

  // ---- graphs
  // Whether record() can return a graph (CUDA bf16; not the CPU, nor the CUDA f32 path, whose MoE
  // routes on the host).
  virtual bool records_graphs() const { return false; }
  // Records the ops `ops` issues without running them. nullptr where the backend does not record
  // or an op could not be recorded (it would allocate, synchronise or download); the backend is
  // then as before. Not while profiling.
  virtual std::unique_ptr<OpGraph> record(const std::function<void()>& ops) { return nullptr; }
  // Changes whenever the backend moves memory its ops use beyond their views (its scratch): a graph
  // recorded at another epoch must not be launched.
  virtual uint64_t memory_epoch() const { return 0; }

  // ---- ops (each timed into the profile when one is set)
  void linear(const LinearOp& p) { run(OpKind::kLinear, [&] { do_linear(p); }); }
  void linear_heads(const LinearHeadsOp& p) { run(OpKind::kLinearHeads, [&] { do_linear_heads(p); }); }
  void norm(const NormOp& p) { run(OpKind::kNorm, [&] { do_norm(p); }); }
  void rope(const RopeOp& p) { run(OpKind::kRope, [&] { do_rope(p); }); }
  void cache_rows(const CacheRowsOp& p) { run(OpKind::kCacheRows, [&] { do_cache_rows(p); }); }
  void indexer_scores(const IndexerScoresOp& p) { run(OpKind::kIndexerScores, [&] { do_indexer_scores(p); }); }
  void topk(const TopkOp& p) { run(OpKind::kTopk, [&] { do_topk(p); }); }
  void sparse_attention(const SparseAttentionOp& p) {
    run(OpKind::kSparseAttention, [&] { do_sparse_attention(p); });
  }
  void mlp(const MlpOp& p) { run(OpKind::kMlp, [&] { do_mlp(p); }); }
  void moe(const MoeOp& p) { run(OpKind::kMoe, [&] { do_moe(p); }); }
  void embed(const EmbedOp& p) { run(OpKind::kEmbed, [&] { do_embed(p); }); }
  void add(const AddOp& p) { run(OpKind::kElementwise, [&] { do_add(p); }); }
  void scale(const ScaleOp& p) { run(OpKind::kElementwise, [&] { do_scale(p); }); }
  void copy(const CopyOp& p) { run(OpKind::kElementwise, [&] { do_copy(p); }); }

 protected:
  friend class Buffer;
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* p, size_t bytes) = 0;
  virtual TensorView do_place(const void* w, DType t, std::span<const int64_t> shape, bool keep_f32) = 0;

  virtual void do_linear(const LinearOp& p) = 0;
  virtual void do_linear_heads(const LinearHeadsOp& p) = 0;
  virtual void do_norm(const NormOp& p) = 0;
  virtual void do_rope(const RopeOp& p) = 0;
  virtual void do_cache_rows(const CacheRowsOp& p) = 0;
  virtual void do_indexer_scores(const IndexerScoresOp& p) = 0;
  virtual void do_topk(const TopkOp& p) = 0;
  virtual void do_sparse_attention(const SparseAttentionOp& p) = 0;
  virtual void do_mlp(const MlpOp& p) = 0;
  virtual void do_moe(const MoeOp& p) = 0;
  virtual void do_embed(const EmbedOp& p) = 0;
  virtual void do_add(const AddOp& p) = 0;
  virtual void do_scale(const ScaleOp& p) = 0;
  virtual void do_copy(const CopyOp& p) = 0;

 private:
  template <class F>
  void run(OpKind k, F&& f);
  OpProfile* profile_ = nullptr;
};

// Throws Error(kRuntime) "<op>: <what>" (for the ops' view checks).
[[noreturn]] void throw_op_error(const char* op, const std::string& what);

double backend_clock_seconds();

template <class F>
void Backend::run(OpKind k, F&& f) {
  if (!profile_) {
    f();
    return;
  }
  sync();
  const double t0 = backend_clock_seconds();
  f();
  sync();
  profile_->seconds[static_cast<int>(k)] += backend_clock_seconds() - t0;
  ++profile_->calls[static_cast<int>(k)];
}

std::unique_ptr<Backend> make_cpu_backend(int threads = 0);  // threads <= 0: OpenMP's default

}  // namespace indexcache
