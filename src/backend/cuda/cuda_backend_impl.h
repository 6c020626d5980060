// Internal to src/backend/cuda: the CudaBackend class (see cuda_backend.h). Its members are
// defined in cuda_backend.cpp (memory, placement, norms, RoPE, DSA ops, elementwise ops) and
// cuda_backend_ffn.cpp (linear, linear_heads, MLP, MoE). No CUDA types: the stream is a void*.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/weight_arena.h"
#include "gpu/gemm.h"
#include "indexcache/device.h"

namespace indexcache::cuda {

// Hands out 256-byte aligned pieces of one block of memory; with base == nullptr it only measures.
class Carver {
 public:
  explicit Carver(void* base = nullptr) : base_(static_cast<char*>(base)) {}
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

// How the grouped kernels address the E experts of one MoE layer (bf16): expert e's gate rows at
// gate + e * gate_stride (elements, rows gate_ld apart), likewise up and down. `fused`: up follows
// gate in one [2I, H] block per expert (one GEMM for both). `packed` owns a copy when the placed
// views were not regularly laid out.
struct ExpertSet {
  int experts = 0;
  int64_t inter = 0, hidden = 0;
  const void* gate = nullptr;
  int64_t gate_ld = 0, gate_stride = 0;
  const void* up = nullptr;
  int64_t up_ld = 0, up_stride = 0;
  bool fused = false;
  const void* down = nullptr;
  int64_t down_ld = 0, down_stride = 0;
  const void* last_down = nullptr;  // the placed view of the last expert's down (cache identity)
  void* packed = nullptr;
  size_t packed_bytes = 0;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(int gpu, Precision precision);
  ~CudaBackend() override;
  std::string name() const override;
  DType activation_dtype() const override { return act_; }

  void upload(const TensorView& dst, const void* host) override;
  void download(const TensorView& src, void* host) override;
  TensorView do_place(const void* w, DType src, std::span<const int64_t> shape, bool keep_f32) override;
  void sync() override;
  size_t bytes_in_use() const override;
  int indexer_query_block() const override { return 4096; }
  bool records_graphs() const override { return !exact(); }
  std::unique_ptr<OpGraph> record(const std::function<void()>& ops) override;
  uint64_t memory_epoch() const override { return memory_epoch_; }

 protected:
  void* allocate(size_t bytes) override;
  void deallocate(void* p, size_t bytes) override;

  void do_linear(const LinearOp& p) override;
  void do_linear_heads(const LinearHeadsOp& p) override;
  void do_norm(const NormOp& p) override;
  void do_rope(const RopeOp& p) override;
  void do_cache_rows(const CacheRowsOp& p) override;
  void do_indexer_scores(const IndexerScoresOp& p) override;
  void do_topk(const TopkOp& p) override;
  void do_sparse_attention(const SparseAttentionOp& p) override;
  void do_mlp(const MlpOp& p) override;
  void do_moe(const MoeOp& p) override;
  void do_embed(const EmbedOp& p) override;
  void do_add(const AddOp& p) override;
  void do_scale(const ScaleOp& p) override;
  void do_copy(const CopyOp& p) override;

 private:
  bool exact() const { return precision_ == Precision::kF32; }
  // f32 or the activation dtype.
  bool f32_or_act(DType t) const { return t == DType::kF32 || t == act_; }
  void activate() const;
  void* stream() const { return stream_; }
  // cudaMalloc that throws "out of device memory: ..." (not counted; callers count).
  void* device_malloc(size_t bytes);
  void device_free(void* p);
  // A device block of at least `bytes` for the temporaries of ONE op (grow-only; growing waits for
  // the stream, so earlier ops' use of the old block is finished). Carve it with a Carver.
  void* scratch(size_t bytes);
  // Host <-> device copy of a view's elements from / to contiguous host memory, on the stream.
  void copy_host(const TensorView& v, void* host, bool to_device);

  // ---- GEMMs (cuda_backend_ffn.cpp)
  // bf16: the decode GEMV for single rows, else cuBLASLt where the alignment allows, else the
  // generic GEMM (odd widths).
  void gemm_bf16(const gpu::GemmArgs& a);
  // y[T, H] (f32 or bf16, rows ldy apart) = beta * y + down(silu(gate(x)) * up(x)), bf16 weights;
  // gu [T, 2I] and act [T, I] bf16 temporaries.
  void mlp_bf16(const MlpWeightsView& w, const void* x, int64_t ldx, int tokens, void* y, bool y_f32, int64_t ldy,
                float beta, void* gu, void* act);
  // y[T, H] f32 = down(silu(gate(x)) * up(x)), f32 weights; g, u [T, I] f32 temporaries.
  void mlp_f32(const MlpWeightsView& w, const float* x, int64_t ldx, int tokens, float* y, int64_t ldy, float* g,
               float* u);
  void moe_bf16(const MoeOp& p);
  void moe_f32(const MoeOp& p);
  // The grouped-GEMM addressing of p.experts (cached by the experts' first pointer; packs a copy
  // once when the placed views are not regular).
  const ExpertSet& expert_set(const MoeOp& p);

  int gpu_ = 0;
  Precision precision_ = Precision::kBf16;
  DType act_ = DType::kBF16;
  std::string device_label_;
  void* stream_ = nullptr;  // cudaStream_t
  std::unique_ptr<gpu::Gemm> gemm_;  // cuBLASLt (bf16 path)
  std::unique_ptr<WeightArena> arena_;

  // Placement: (host pointer, shape, dtype) -> the device view.
  using PlaceKey = std::tuple<const void*, std::array<int64_t, 3>, int, DType>;
  std::map<PlaceKey, TensorView> placed_;
  std::vector<void*> placed_allocs_;  // weights outside the arena (their own cudaMalloc)
  size_t placed_bytes_ = 0;            // bytes of placed weights outside the arena
  void* staging_ = nullptr;            // f32 staging of bf16 placement
  size_t staging_bytes_ = 0;

  size_t buffer_bytes_ = 0;  // alloc()ed buffers
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  uint64_t memory_epoch_ = 0;  // counts scratch moves
  bool recording_ = false;     // inside record(): nothing may allocate
  std::map<const void*, ExpertSet> expert_sets_;
  size_t packed_bytes_ = 0;
};

}  // namespace indexcache::cuda
