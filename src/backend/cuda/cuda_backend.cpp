// The CUDA backend (see cuda_backend.h): construction, memory, placement, host transfers, and the
// ops other than the projections and MLP / MoE (those are in cuda_backend_ffn.cpp). Every op checks
// its views first and throws throw_op_error(op, why) for a combination it does not run.
#include "backend/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "backend/cuda/backend_kernels.h"
#include "backend/cuda/cuda_backend_impl.h"
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/dsa_bf16.h"
#include "backend/cuda/dsa_generic.h"
#include "gpu/layer_kernels.h"
#include "backend/op_checks.h"
#include "indexcache/error.h"

namespace indexcache {

namespace cuda {

namespace {

constexpr size_t kStagingFloats = size_t{8} << 20;  // 32 MiB of f32 per placement chunk
constexpr int64_t kMultiBlockTopkKeys = 32768;        // longer rows: the multi-block radix top-k

cudaStream_t cs(void* s) { return static_cast<cudaStream_t>(s); }

using op_checks::dt;
using op_checks::need;
using op_checks::need_dtype;
using op_checks::need_view;
bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
// Rows of a 2-D view are contiguous and packed ([rows, cols] with stride cols).
bool packed2(const TensorView& v) { return v.rank == 2 && (v.stride[0] == v.shape[1] || v.shape[0] <= 1); }
// A 3-D view [a, b, c] stored contiguously.
bool packed3(const TensorView& v) {
  return v.rank == 3 && v.stride[2] == 1 && (v.stride[1] == v.shape[2] || v.shape[1] <= 1) &&
         (v.stride[0] == v.shape[1] * v.shape[2] || v.shape[0] <= 1);
}

// The view as the kernels' [d0, d1, d2] strided operand.
bk::Strided strided(const TensorView& v) {
  bk::Strided s;
  s.data = v.data;
  s.dtype = v.dtype;
  if (v.rank == 1) {
    s.d2 = v.shape[0];
  } else if (v.rank == 2) {
    s.d1 = v.shape[0];
    s.d2 = v.shape[1];
    s.s1 = v.stride[0];
  } else {
    s.d0 = v.shape[0];
    s.d1 = v.shape[1];
    s.d2 = v.shape[2];
    s.s0 = v.stride[0];
    s.s1 = v.stride[1];
  }
  return s;
}

bool same_shape(const TensorView& a, const TensorView& b) {
  if (a.rank != b.rank) return false;
  for (int i = 0; i < a.rank; ++i)
    if (a.shape[i] != b.shape[i]) return false;
  return true;
}

// Makes `gpu` current; one-line errors when there is no such device.
void select_gpu(int gpu) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw_runtime("cuda", std::string("no CUDA device (") + cudaGetErrorString(e) + ")");
  }
  if (count == 0) throw_runtime("cuda", "no CUDA device");
  if (gpu < 0 || gpu >= count)
    throw_runtime("--gpu " + std::to_string(gpu),
                  "only " + std::to_string(count) + " CUDA device" + (count == 1 ? "" : "s"));
  IC_CUDA_CHECK(cudaSetDevice(gpu));
}

}  // namespace

// ---------------------------------------------------------------- construction, memory

CudaBackend::CudaBackend(int gpu, Precision precision)
    : gpu_(gpu), precision_(precision), act_(precision == Precision::kF32 ? DType::kF32 : DType::kBF16) {
  select_gpu(gpu);
  device_label_ = "cuda:" + std::to_string(gpu);
  const std::string why = bk::kernels_unavailable_reason();
  if (!why.empty()) {
    cudaDeviceProp prop{};
    IC_CUDA_CHECK(cudaGetDeviceProperties(&prop, gpu));
    throw_runtime(device_label_, std::string("this build's kernels cannot run on ") + prop.name + " (sm_" +
                                     std::to_string(prop.major) + std::to_string(prop.minor) + "): " + why);
  }
  cudaStream_t s = nullptr;
  IC_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream_ = s;
  try {
    if (!exact()) gemm_ = std::make_unique<gpu::Gemm>();
    arena_ = std::make_unique<WeightArena>(gpu);
  } catch (...) {
    gemm_.reset();
    cudaStreamDestroy(s);
    throw;
  }
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(gpu_);
  cudaStreamSynchronize(cs(stream_));
  for (auto& [k, e] : expert_sets_)
    if (e.packed) cudaFree(e.packed);
  for (void* p : placed_allocs_) cudaFree(p);
  if (staging_) cudaFree(staging_);
  if (scratch_) cudaFree(scratch_);
  arena_.reset();
  gemm_.reset();
  cudaStreamDestroy(cs(stream_));
  cudaGetLastError();
}

std::string CudaBackend::name() const { return exact() ? device_label_ + " (f32)" : device_label_; }

void CudaBackend::activate() const { IC_CUDA_CHECK(cudaSetDevice(gpu_)); }

void* CudaBackend::device_malloc(size_t bytes) {
  if (recording_) throw_runtime(device_label_, "an op would allocate while a graph is recorded");
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 1));
  if (e == cudaErrorMemoryAllocation) throw_out_of_device_memory(bytes);
  IC_CUDA_CHECK(e);
  return p;
}

void CudaBackend::device_free(void* p) {
  if (!p) return;
  if (recording_) throw_runtime(device_label_, "an op would free memory while a graph is recorded");
  cudaStreamSynchronize(cs(stream_));  // work still queued may use it
  cudaFree(p);
}

void* CudaBackend::allocate(size_t bytes) {
  activate();
  void* p = device_malloc(bytes);
  buffer_bytes_ += bytes;
  return p;
}

void CudaBackend::deallocate(void* p, size_t bytes) {
  cudaSetDevice(gpu_);
  device_free(p);
  buffer_bytes_ -= bytes;
}

void* CudaBackend::scratch(size_t bytes) {
  if (bytes <= scratch_bytes_) return scratch_;
  ++memory_epoch_;
  const size_t grown = std::max(bytes, scratch_bytes_ + scratch_bytes_ / 2);
  const size_t rounded = (grown + (size_t{1} << 20) - 1) / (size_t{1} << 20) * (size_t{1} << 20);
  device_free(scratch_);
  scratch_ = nullptr;
  scratch_bytes_ = 0;
  scratch_ = device_malloc(rounded);
  scratch_bytes_ = rounded;
  return scratch_;
}

size_t CudaBackend::bytes_in_use() const {
  const size_t arena = arena_ ? arena_->mapped_bytes() : 0;
  return buffer_bytes_ + placed_bytes_ + arena + staging_bytes_ + scratch_bytes_ + packed_bytes_;
}

void CudaBackend::sync() {
  activate();
  IC_CUDA_CHECK(cudaStreamSynchronize(cs(stream_)));
}

// ---------------------------------------------------------------- graphs

namespace {

class CudaGraph final : public OpGraph {
 public:
  CudaGraph(int gpu, cudaStream_t stream, cudaGraphExec_t exec) : gpu_(gpu), stream_(stream), exec_(exec) {}
  ~CudaGraph() override {
    cudaSetDevice(gpu_);
    cudaGraphExecDestroy(exec_);
  }
  void launch() override {
    IC_CUDA_CHECK(cudaSetDevice(gpu_));
    IC_CUDA_CHECK(cudaGraphLaunch(exec_, stream_));
  }

 private:
  int gpu_;
  cudaStream_t stream_;
  cudaGraphExec_t exec_;
};

}  // namespace

std::unique_ptr<OpGraph> CudaBackend::record(const std::function<void()>& ops) {
  if (!records_graphs() || profiling()) return nullptr;
  activate();
  IC_CUDA_CHECK(cudaStreamBeginCapture(cs(stream_), cudaStreamCaptureModeThreadLocal));
  recording_ = true;
  bool ok = true;
  try {
    ops();
  } catch (const std::exception&) {
    ok = false;  // an op that allocates, synchronises or downloads: no graph (the caller runs eagerly)
  }
  recording_ = false;
  cudaGraph_t graph = nullptr;
  ok = cudaStreamEndCapture(cs(stream_), &graph) == cudaSuccess && ok;
  cudaGraphExec_t exec = nullptr;
  ok = ok && graph && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
  if (graph) cudaGraphDestroy(graph);
  if (ok && cudaGraphUpload(exec, cs(stream_)) != cudaSuccess) ok = false;
  if (!ok) {
    if (exec) cudaGraphExecDestroy(exec);
    cudaGetLastError();  // capture errors are not sticky; clear the last one
    return nullptr;
  }
  return std::make_unique<CudaGraph>(gpu_, cs(stream_), exec);
}

// ---------------------------------------------------------------- host transfers

void CudaBackend::copy_host(const TensorView& v, void* host, bool to_device) {
  if (v.rank < 1 || v.rank > 3) throw_op_error(to_device ? "upload" : "download", "views are 1-D to 3-D");
  if (v.stride[v.rank - 1] != 1)
    throw_op_error(to_device ? "upload" : "download", "the innermost dimension must be contiguous");
  if (v.numel() == 0) return;
  const size_t es = dtype_size(v.dtype);
  const cudaMemcpyKind kind = to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
  char* h = static_cast<char*>(host);
  // One 2-D copy: `rows` rows of `width` bytes, device rows `pitch` bytes apart, host rows packed.
  auto copy2d = [&](void* dev, size_t pitch, size_t width, size_t rows, char* hp) {
    pitch = std::max(pitch, width);
    if (to_device)
      IC_CUDA_CHECK(cudaMemcpy2DAsync(dev, pitch, hp, width, width, rows, kind, cs(stream_)));
    else
      IC_CUDA_CHECK(cudaMemcpy2DAsync(hp, width, dev, pitch, width, rows, kind, cs(stream_)));
  };
  if (v.rank == 1) {
    copy2d(v.data, 0, v.shape[0] * es, 1, h);
  } else if (v.rank == 2) {
    copy2d(v.data, v.stride[0] * es, v.shape[1] * es, v.shape[0], h);
  } else if (v.stride[0] == v.shape[1] * v.stride[1] || v.shape[0] == 1) {
    copy2d(v.data, v.stride[1] * es, v.shape[2] * es, v.shape[0] * v.shape[1], h);
  } else if (v.shape[1] == 1) {
    copy2d(v.data, v.stride[0] * es, v.shape[2] * es, v.shape[0], h);
  } else {
    const size_t block = static_cast<size_t>(v.shape[1] * v.shape[2]) * es;
    for (int64_t i = 0; i < v.shape[0]; ++i)
      copy2d(v.at(i), v.stride[1] * es, v.shape[2] * es, v.shape[1], h + i * block);
  }
}

void CudaBackend::upload(const TensorView& dst, const void* host) {
  activate();
  copy_host(dst, const_cast<void*>(host), true);
}

void CudaBackend::download(const TensorView& src, void* host) {
  activate();
  copy_host(src, host, false);
  IC_CUDA_CHECK(cudaStreamSynchronize(cs(stream_)));
}

TensorView CudaBackend::do_place(const void* w, DType src, std::span<const int64_t> shape, bool keep_f32) {
  activate();
  const char* op = "place";
  need(w != nullptr, op, "null host pointer");
  need(!shape.empty() && shape.size() <= 3, op, "weights are 1-D to 3-D");
  std::array<int64_t, 3> dims{0, 0, 0};
  size_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    need(shape[i] > 0, op, "a dimension is not positive");
    dims[i] = shape[i];
    n *= static_cast<size_t>(shape[i]);
  }
  need(src == DType::kF32 || src == DType::kBF16 || src == DType::kF16, op,
       "weights of dtype " + dt(src) + " (F32, BF16 or F16)");
  const DType t = (exact() || keep_f32) ? DType::kF32 : DType::kBF16;
  const PlaceKey key{w, dims, static_cast<int>(shape.size()), t};
  if (auto it = placed_.find(key); it != placed_.end()) return it->second;

  const size_t bytes = n * dtype_size(t);
  void* d = arena_ ? arena_->take(bytes) : nullptr;
  if (!d) {
    d = device_malloc(bytes);
    placed_allocs_.push_back(d);
    placed_bytes_ += bytes;
  }
  if (src == t) {  // f32 -> f32, bf16 -> bf16: as it is
    IC_CUDA_CHECK(cudaMemcpyAsync(d, w, bytes, cudaMemcpyHostToDevice, cs(stream_)));
  } else if (src != DType::kF32) {
    // bf16 / f16 -> f32, or f16 -> bf16: converted to f32 on the host chunk by chunk (a pageable
    // copy returns once the host buffer is read, so the buffer is reused at once), then as f32.
    std::vector<float> host(std::min(kStagingFloats, n));
    const char* in = static_cast<const char*>(w);
    const size_t es = dtype_size(src);
    if (t == DType::kBF16 && !staging_) {
      staging_ = device_malloc(kStagingFloats * sizeof(float));
      staging_bytes_ = kStagingFloats * sizeof(float);
    }
    for (size_t off = 0; off < n; off += kStagingFloats) {
      const size_t cnt = std::min(kStagingFloats, n - off);
      convert_to_f32(src, in + off * es, cnt, host.data());
      if (t == DType::kF32) {
        IC_CUDA_CHECK(cudaMemcpyAsync(static_cast<float*>(d) + off, host.data(), cnt * sizeof(float),
                                      cudaMemcpyHostToDevice, cs(stream_)));
      } else {
        IC_CUDA_CHECK(cudaMemcpyAsync(staging_, host.data(), cnt * sizeof(float), cudaMemcpyHostToDevice, cs(stream_)));
        bk::f32_to_bf16(static_cast<const float*>(staging_), static_cast<uint16_t*>(d) + off, cnt, stream_);
      }
    }
    IC_CUDA_CHECK(cudaStreamSynchronize(cs(stream_)));
  } else {
    const float* wf = static_cast<const float*>(w);
    if (!staging_) {
      staging_ = device_malloc(kStagingFloats * sizeof(float));
      staging_bytes_ = kStagingFloats * sizeof(float);
    }
    // Chunks of f32 through the staging buffer, converted on the device (round to nearest even).
    // Stream order keeps a chunk's upload after the previous chunk's conversion.
    for (size_t off = 0; off < n; off += kStagingFloats) {
      const size_t cnt = std::min(kStagingFloats, n - off);
      IC_CUDA_CHECK(cudaMemcpyAsync(staging_, wf + off, cnt * sizeof(float), cudaMemcpyHostToDevice, cs(stream_)));
      bk::f32_to_bf16(static_cast<const float*>(staging_), static_cast<uint16_t*>(d) + off, cnt, stream_);
    }
  }
  TensorView v;
  v.data = d;
  v.dtype = t;
  v.rank = static_cast<int>(shape.size());
  int64_t s = 1;
  for (int i = v.rank - 1; i >= 0; --i) {
    v.shape[i] = dims[i];
    v.stride[i] = s;
    s *= dims[i];
  }
  placed_.emplace(key, v);
  return v;
}

// ---------------------------------------------------------------- norm, RoPE, embed

void CudaBackend::do_norm(const NormOp& p) {
  activate();
  const char* op = "norm";
  need_view(p.x, 2, op, "x");
  need_view(p.y, 2, op, "y");
  need(same_shape(p.x, p.y), op, "x and y must have one shape");
  need(f32_or_act(p.x.dtype) && f32_or_act(p.y.dtype), op, "x and y must be f32 or " + dt(act_));
  need(!(p.x.data == p.y.data && p.x.dtype != p.y.dtype), op, "y aliases x with another dtype");
  need(!p.w.empty() && p.w.numel() == p.x.shape[1] && p.w.stride[p.w.rank - 1] == 1, op, "w must have dim elements");
  need(f32_or_act(p.w.dtype), op, "w must be f32 or " + dt(act_));
  const bool bias = p.layer_norm && !p.bias.empty();
  if (bias) {
    need(p.bias.dtype == p.w.dtype, op, "bias and w must share a dtype");
    need(p.bias.numel() == p.x.shape[1], op, "bias must have dim elements");
  }
  if (p.x.shape[0] == 0) return;
  need(p.x.shape[1] > 0, op, "dim must be positive");
  bk::NormArgs a;
  a.x = p.x.data;
  a.x_t = p.x.dtype;
  a.ldx = p.x.stride[0];
  a.w = p.w.data;
  a.b = bias ? p.bias.data : nullptr;
  a.w_t = p.w.dtype;
  a.y = p.y.data;
  a.y_t = p.y.dtype;
  a.ldy = p.y.stride[0];
  a.rows = static_cast<int>(p.x.shape[0]);
  a.dim = static_cast<int>(p.x.shape[1]);
  a.eps = p.eps;
  a.layer_norm = p.layer_norm;
  a.exact = exact();
  bk::norm(a, stream_);
}

void CudaBackend::do_rope(const RopeOp& p) {
  activate();
  const char* op = "rope";
  need(!p.x.empty() && (p.x.rank == 2 || p.x.rank == 3), op, "x must be 2-D or 3-D");
  need(p.x.stride[p.x.rank - 1] == 1, op, "x's innermost dimension must be contiguous");
  need_dtype(p.x, act_, op, "x");
  need_view(p.positions, 1, op, "positions");
  need_dtype(p.positions, DType::kI32, op, "positions");
  need(p.rope_dim > 0 && p.rope_dim % 2 == 0, op, "rope_dim must be positive and even");
  need(p.offset >= 0 && p.offset + p.rope_dim <= p.x.shape[p.x.rank - 1], op, "offset + rope_dim exceeds the row");
  const int half = p.rope_dim / 2;
  for (const TensorView* t : {&p.cos, &p.sin}) {
    need_view(*t, 2, op, "cos / sin");
    need_dtype(*t, DType::kF32, op, "cos / sin");
    need(t->shape[1] == half && t->stride[0] == half, op, "cos / sin must be contiguous [positions, rope_dim / 2]");
  }
  const int64_t tokens = p.x.shape[0];
  need(p.positions.shape[0] >= tokens, op, "fewer positions than tokens");
  const bool from_src = !p.src.empty();
  if (from_src) {
    need(p.src.rank == p.x.rank && p.src.shape[0] == tokens && (p.x.rank == 2 || p.src.shape[1] == p.x.shape[1]) &&
             p.src.shape[p.src.rank - 1] == p.rope_dim && p.src.stride[p.src.rank - 1] == 1,
         op, "src must be [T, rope_dim] or [T, heads, rope_dim] beside x");
    need_dtype(p.src, act_, op, "src");
  }
  if (tokens == 0) return;
  const bool heads3 = p.x.rank == 3;
  const int heads = heads3 ? static_cast<int>(p.x.shape[1]) : 1;
  if (heads == 0) return;
  const int64_t head_stride = heads3 ? p.x.stride[1] : 0;
  if (exact()) {
    if (from_src) bk::copy(strided(p.src), strided(p.x.cols(p.offset, p.rope_dim)), stream_);  // then in place
    bk::RopeF32Args a;
    a.x = static_cast<float*>(p.x.data) + p.offset;
    a.token_stride = p.x.stride[0];
    a.head_stride = head_stride;
    a.tokens = static_cast<int>(tokens);
    a.heads = heads;
    a.rope_dim = p.rope_dim;
    a.cos = p.cos.as<const float>();
    a.sin = p.sin.as<const float>();
    a.positions = p.positions.as<const int32_t>();
    a.layout = p.layout;
    bk::rope_f32(a, stream_);
  } else {
    gpu::RopeArgs a;
    a.src = from_src ? p.src.data : static_cast<const uint16_t*>(p.x.data) + p.offset;
    a.src_token_stride = from_src ? p.src.stride[0] : p.x.stride[0];
    a.src_head_stride = from_src ? (heads3 ? p.src.stride[1] : 0) : head_stride;
    a.dst = static_cast<uint16_t*>(p.x.data) + p.offset;
    a.dst_token_stride = p.x.stride[0];
    a.dst_head_stride = head_stride;
    a.tokens = static_cast<int>(tokens);
    a.heads = heads;
    a.rope_dim = p.rope_dim;
    a.cos = p.cos.as<const float>();
    a.sin = p.sin.as<const float>();
    a.positions = p.positions.as<const int32_t>();
    a.layout = p.layout;
    gpu::rope_bf16(a, stream_);
  }
}

void CudaBackend::do_cache_rows(const CacheRowsOp& p) {
  activate();
  const char* op = "cache_rows";
  need(p.pages.empty(), op, "paged caches (the batched engine) are not on CUDA yet");
  need_view(p.x, 2, op, "x");
  need_view(p.cache, 2, op, "cache");
  need_view(p.positions, 1, op, "positions");
  need_dtype(p.x, DType::kF32, op, "x");
  need_dtype(p.cache, act_, op, "cache");
  need_dtype(p.positions, DType::kI32, op, "positions");
  const int64_t T = p.x.shape[0], w = p.x.shape[1];
  need(p.cache.shape[1] == w, op, "x and cache must have one width");
  need(p.positions.shape[0] >= T, op, "fewer positions than tokens");
  need(p.norm_dim > 0 && p.norm_dim <= w && p.rope_offset >= 0 && p.rope_dim > 0 && p.rope_dim % 2 == 0 &&
           p.rope_offset + p.rope_dim <= w,
       op, "norm_dim and the rope dims must lie in the row");
  need(!p.norm_w.empty() && p.norm_w.numel() == p.norm_dim, op, "norm_w must have norm_dim elements");
  const bool bias = p.layer_norm && !p.norm_bias.empty();
  if (T == 0) return;
  const int32_t* pos = p.positions.as<const int32_t>();
  const bool packed = packed2(p.x) && packed2(p.cache) && p.norm_w.dtype == DType::kBF16 &&
                      (!bias || p.norm_bias.dtype == DType::kBF16);
  if (!exact() && packed) {
    // The fused kernels: the MLA latent (RMSNorm, then the interleaved rope part after it) and the
    // indexer key (LayerNorm of the row, rope part first).
    if (!p.layer_norm && p.rope_offset == p.norm_dim && p.norm_dim + p.rope_dim == w &&
        p.layout == RopeLayout::kInterleaved) {
      gpu::finalize_latent(p.x.as<const float>(), p.norm_w.data, p.cache.data, pos, p.cos.as<const float>(),
                           p.sin.as<const float>(), static_cast<int>(T), p.norm_dim, p.rope_dim, p.eps, stream_);
      return;
    }
    if (p.layer_norm && bias && p.norm_dim == w && p.rope_offset == 0) {
      gpu::finalize_index_key(p.x.as<const float>(), p.norm_w.data, p.norm_bias.data, p.cache.data, pos,
                              p.cos.as<const float>(), p.sin.as<const float>(), static_cast<int>(T), static_cast<int>(w),
                              p.rope_dim, p.layout, p.eps, stream_);
      return;
    }
  }
  // Any other row: norm, copy, rope on a temporary of the cache's dtype, then the rows to the cache.
  void* t = scratch(static_cast<size_t>(T * w) * dtype_size(act_));
  const TensorView r = view2d(t, act_, T, w);
  do_norm({.x = p.x.cols(0, p.norm_dim), .w = p.norm_w, .bias = p.norm_bias, .y = r.cols(0, p.norm_dim), .eps = p.eps,
           .layer_norm = p.layer_norm});
  if (p.norm_dim < w) do_copy({.src = p.x.cols(p.norm_dim, w - p.norm_dim), .dst = r.cols(p.norm_dim, w - p.norm_dim)});
  do_rope({.x = r, .offset = p.rope_offset, .rope_dim = p.rope_dim, .cos = p.cos, .sin = p.sin,
           .positions = p.positions, .layout = p.layout});
  do_copy({.src = r, .dst = p.cache, .dst_rows = view1d(p.positions.data, DType::kI32, T)});
}

void CudaBackend::do_embed(const EmbedOp& p) {
  activate();
  const char* op = "embed";
  need_view(p.table, 2, op, "table");
  need_view(p.ids, 1, op, "ids");
  need_view(p.out, 2, op, "out");
  need_dtype(p.ids, DType::kI32, op, "ids");
  need(f32_or_act(p.table.dtype) && f32_or_act(p.out.dtype), op, "table and out must be f32 or " + dt(act_));
  need(p.out.shape[1] == p.table.shape[1], op, "out and table rows differ in width");
  need(p.ids.shape[0] >= p.out.shape[0], op, "fewer ids than output rows");
  bk::embed(p.table.data, p.table.dtype, p.table.stride[0], p.table.shape[0], p.ids.as<const int32_t>(), p.out.data,
            p.out.dtype, p.out.stride[0], static_cast<int>(p.out.shape[0]), static_cast<int>(p.out.shape[1]),
            stream_);
}

// ---------------------------------------------------------------- elementwise

void CudaBackend::do_add(const AddOp& p) {
  activate();
  const char* op = "add";
  need(!p.x.empty() && !p.y.empty() && p.x.rank >= 1 && p.x.rank <= 3, op, "x and y must be 1-D to 3-D");
  need(same_shape(p.x, p.y), op, "x and y must have one shape");
  need(p.x.stride[p.x.rank - 1] == 1 && p.y.stride[p.y.rank - 1] == 1, op, "innermost dimensions must be contiguous");
  need(f32_or_act(p.x.dtype) && f32_or_act(p.y.dtype), op, "x and y must be f32 or " + dt(act_));
  bk::add(strided(p.x), strided(p.y), stream_);
}

void CudaBackend::do_scale(const ScaleOp& p) {
  activate();
  const char* op = "scale";
  need(!p.x.empty() && p.x.rank >= 1 && p.x.rank <= 3, op, "x must be 1-D to 3-D");
  need(p.x.stride[p.x.rank - 1] == 1, op, "x's innermost dimension must be contiguous");
  need(f32_or_act(p.x.dtype), op, "x must be f32 or " + dt(act_));
  bk::scale(strided(p.x), p.factor, stream_);
}

void CudaBackend::do_copy(const CopyOp& p) {
  activate();
  const char* op = "copy";
  need(!p.src.empty() && !p.dst.empty() && p.src.rank >= 1 && p.src.rank <= 3, op, "src and dst must be 1-D to 3-D");
  const bool scatter = !p.dst_rows.empty();
  if (scatter) {
    need(p.src.rank == 2 && p.dst.rank == 2 && p.src.shape[1] == p.dst.shape[1], op,
         "dst_rows needs 2-D src and dst of one width");
    need(p.dst_rows.rank == 1 && p.dst_rows.dtype == DType::kI32 && p.dst_rows.shape[0] == p.src.shape[0], op,
         "dst_rows must be int32 [src rows]");
  } else {
    need(same_shape(p.src, p.dst), op, "src and dst must have one shape");
  }
  need(p.src.stride[p.src.rank - 1] == 1 && p.dst.stride[p.dst.rank - 1] == 1, op,
       "innermost dimensions must be contiguous");
  const bool same = p.src.dtype == p.dst.dtype &&
                    (p.src.dtype == DType::kF32 || p.src.dtype == DType::kBF16 || p.src.dtype == DType::kI32);
  const bool convert = p.src.dtype != p.dst.dtype && f32_or_act(p.src.dtype) && f32_or_act(p.dst.dtype);
  need(same || convert, op, "no copy " + dt(p.src.dtype) + " -> " + dt(p.dst.dtype));
  bk::copy(strided(p.src), strided(p.dst), stream_, scatter ? p.dst_rows.as<const int32_t>() : nullptr);
}

// ---------------------------------------------------------------- DSA ops

void CudaBackend::do_indexer_scores(const IndexerScoresOp& p) {
  activate();
  const char* op = "indexer_scores";
  need(p.pages.empty(), op, "paged caches (the batched engine) are not on CUDA yet");
  need_view(p.q, 3, op, "q");
  need_view(p.w, 2, op, "w");
  need_view(p.k, 2, op, "k");
  need_view(p.positions, 1, op, "positions");
  need_view(p.scores, 2, op, "scores");
  need_dtype(p.q, act_, op, "q");
  need_dtype(p.k, act_, op, "k");
  need_dtype(p.w, DType::kF32, op, "w");
  need_dtype(p.positions, DType::kI32, op, "positions");
  need_dtype(p.scores, DType::kF32, op, "scores");
  const int64_t T = p.q.shape[0], H = p.q.shape[1], D = p.q.shape[2], S = p.k.shape[0];
  need(packed3(p.q), op, "q must be contiguous [T, H, D]");
  need(packed2(p.k) && p.k.shape[1] == D, op, "k must be contiguous [S, D]");
  need(packed2(p.w) && p.w.shape[0] == T && p.w.shape[1] == H, op, "w must be contiguous [T, H]");
  need(p.positions.shape[0] >= T, op, "fewer positions than tokens");
  need(p.scores.shape[0] == T && p.scores.shape[1] >= S, op, "scores must be [T, >= S]");
  if (T == 0 || S == 0) return;
  need(H > 0 && D > 0, op, "heads and head_dim must be positive");
  if (exact()) {
    need(D <= 256, op, "the f32 indexer takes head_dim <= 256 (got " + std::to_string(D) + ")");
    IndexerScoreParams k;
    k.q = p.q.as<const float>();
    k.w = p.w.as<const float>();
    k.k = p.k.as<const float>();
    k.positions = p.positions.as<const int32_t>();
    k.scores = p.scores.as<float>();
    k.scores_stride = p.scores.stride[0];
    k.tokens = static_cast<int>(T);
    k.keys = static_cast<int>(S);
    k.heads = static_cast<int>(H);
    k.head_dim = static_cast<int>(D);
    k.scale = p.scale;
    cuda::indexer_scores(k, stream_);
    return;
  }
  IndexerBf16Params k;
  k.q = p.q.data;
  k.k = p.k.data;
  k.w = p.w.as<const float>();
  k.positions = p.positions.as<const int32_t>();
  k.scores = p.scores.as<float>();
  k.scores_stride = p.scores.stride[0];
  k.tokens = static_cast<int>(T);
  k.keys = static_cast<int>(S);
  k.heads = static_cast<int>(H);
  k.head_dim = static_cast<int>(D);
  k.scale = p.scale;
  const bool tensor_cores = D == 128 && H % 8 == 0 && H <= 128 && aligned16(p.q.data) && aligned16(p.k.data);
  if (tensor_cores) {
    cuda::indexer_scores_bf16(k, stream_);
  } else {
    need(static_cast<size_t>(H) * (D + 1) * 4 <= 48 * 1024, op,
         "heads x (head_dim + 1) too large for the generic bf16 indexer (tensor cores need head_dim 128, heads % 8 == 0)");
    cuda::indexer_scores_generic(k, stream_);
  }
}

void CudaBackend::do_topk(const TopkOp& p) {
  activate();
  const char* op = "topk";
  need_view(p.scores, 2, op, "scores");
  need_view(p.valid, 1, op, "valid");
  need_view(p.indices, 2, op, "indices");
  need_dtype(p.scores, DType::kF32, op, "scores");
  need_dtype(p.valid, DType::kI32, op, "valid");
  need_dtype(p.indices, DType::kI32, op, "indices");
  need(packed2(p.indices), op, "indices must be contiguous [T, k]");
  const int64_t T = p.indices.shape[0], k = p.indices.shape[1];
  need(p.scores.shape[0] >= T && p.valid.shape[0] >= T, op, "scores and valid need a row per index row");
  if (T == 0 || k == 0) return;
  need(k <= kMaxTopk, op, "k must be at most " + std::to_string(kMaxTopk));
  if (exact()) {
    TopkParams t;
    t.scores = p.scores.as<const float>();
    t.scores_stride = p.scores.stride[0];
    t.valid = p.valid.as<const int32_t>();
    t.indices = p.indices.as<int32_t>();
    t.tokens = static_cast<int>(T);
    t.k = static_cast<int>(k);
    cuda::topk(t, stream_);
    return;
  }
  TopkRadixParams t;
  t.scores = p.scores.as<const float>();
  t.scores_stride = p.scores.stride[0];
  t.valid = p.valid.as<const int32_t>();
  t.indices = p.indices.as<int32_t>();
  t.tokens = static_cast<int>(T);
  t.k = static_cast<int>(k);
  // Few long rows (decode): the multi-block path, whose launches pay off only on long rows.
  const size_t bytes = cuda::topk_radix_scratch_bytes(t);
  if (bytes > 0 && p.scores.shape[1] > kMultiBlockTopkKeys) {
    t.scratch = scratch(bytes);
    t.scratch_bytes = bytes;
  }
  cuda::topk_radix(t, stream_);
}

void CudaBackend::do_sparse_attention(const SparseAttentionOp& p) {
  activate();
  const char* op = "sparse_attention";
  need(p.pages.empty(), op, "paged caches (the batched engine) are not on CUDA yet");
  need_view(p.q, 3, op, "q");
  need_view(p.kv, 2, op, "kv");
  need_view(p.indices, 2, op, "indices");
  need_view(p.out, 3, op, "out");
  need_dtype(p.q, act_, op, "q");
  need_dtype(p.kv, act_, op, "kv");
  need_dtype(p.out, act_, op, "out");
  need_dtype(p.indices, DType::kI32, op, "indices");
  const int64_t T = p.q.shape[0], H = p.q.shape[1], Dk = p.q.shape[2], Dv = p.out.shape[2];
  const int64_t K = p.indices.shape[1];
  need(p.out.shape[0] == T && p.out.shape[1] == H, op, "out must be [T, H, Dv]");
  need(p.indices.shape[0] == T && packed2(p.indices), op, "indices must be contiguous [T, K]");
  need(p.kv.shape[1] >= Dk && Dv <= Dk, op, "kv rows must hold Dk >= Dv elements");
  if (T == 0 || H == 0) return;
  if (exact()) {
    need(Dk <= 1024 && Dv <= 1024, op, "the f32 sparse attention takes head dims <= 1024");
    SparseAttentionParams a;
    a.q = p.q.as<const float>();
    a.q_token_stride = p.q.stride[0];
    a.q_head_stride = p.q.stride[1];
    a.k = p.kv.as<const float>();
    a.k_token_stride = p.kv.stride[0];
    a.k_head_stride = 0;
    a.v = p.kv.as<const float>();
    a.v_token_stride = p.kv.stride[0];
    a.v_head_stride = 0;
    a.indices = p.indices.as<const int32_t>();
    a.num_selected = static_cast<int>(K);
    a.out = p.out.as<float>();
    a.out_token_stride = p.out.stride[0];
    a.out_head_stride = p.out.stride[1];
    a.tokens = static_cast<int>(T);
    a.heads = static_cast<int>(H);
    a.kv_heads = 1;
    a.head_dim_k = static_cast<int>(Dk);
    a.head_dim_v = static_cast<int>(Dv);
    a.scale = p.scale;
    cuda::sparse_attention(a, stream_);
    return;
  }
  SparseMlaParams a;
  a.kv = p.kv.data;
  a.kv_stride = p.kv.stride[0];
  a.indices = p.indices.as<const int32_t>();
  a.num_selected = static_cast<int>(K);
  a.tokens = static_cast<int>(T);
  a.heads = static_cast<int>(H);
  a.dim_k = static_cast<int>(Dk);
  a.dim_v = static_cast<int>(Dv);
  a.scale = p.scale;
  const bool tensor_cores = Dk == 576 && Dv == 512 && H <= 128 && K <= 2048 && a.kv_stride % 8 == 0 &&
                            aligned16(p.kv.data);
  if (!tensor_cores)
    need((static_cast<size_t>(Dk) + 2 * static_cast<size_t>(K)) * 4 <= 48 * 1024, op,
         "Dk + 2 K too large for the generic bf16 sparse attention (tensor cores need Dk 576, Dv 512)");
  // The kernels read q and write out as contiguous [T, H, D]: strided views go through copies.
  const bool q_direct = packed3(p.q) && aligned16(p.q.data);
  const bool out_direct = packed3(p.out) && aligned16(p.out.data);
  const size_t qn = static_cast<size_t>(T * H * Dk), on = static_cast<size_t>(T * H * Dv);
  Carver measure;
  measure.take<uint16_t>(q_direct ? 0 : qn);
  measure.take<uint16_t>(out_direct ? 0 : on);
  size_t ws = 0;
  if (tensor_cores) {
    ws = cuda::sparse_mla_workspace_bytes(a);
    measure.take<char>(ws);
  }
  Carver carve(measure.size() ? scratch(measure.size()) : nullptr);
  void* q_tmp = carve.take<uint16_t>(q_direct ? 0 : qn);
  void* out_tmp = carve.take<uint16_t>(out_direct ? 0 : on);
  void* wsp = carve.take<char>(ws);
  TensorView q_c = view3d(q_tmp, DType::kBF16, T, H, Dk, H * Dk, Dk);
  TensorView out_c = view3d(out_tmp, DType::kBF16, T, H, Dv, H * Dv, Dv);
  if (!q_direct) bk::copy(strided(p.q), strided(q_c), stream_);
  a.q = q_direct ? p.q.data : q_tmp;
  a.out = out_direct ? p.out.data : out_tmp;
  if (tensor_cores) {
    a.workspace = ws ? wsp : nullptr;
    a.workspace_bytes = ws;
    cuda::sparse_mla_bf16(a, stream_);
  } else {
    cuda::sparse_mla_generic(a, stream_);
  }
  if (!out_direct) bk::copy(strided(out_c), strided(p.out), stream_);
}

}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(int gpu, Precision precision) {
  return std::make_unique<cuda::CudaBackend>(gpu, precision);
}

DeviceMemory cuda_device_memory(int gpu) {
  cuda::select_gpu(gpu);
  size_t free_b = 0, total_b = 0;
  IC_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return {static_cast<int64_t>(free_b), static_cast<int64_t>(total_b)};
}

}  // namespace indexcache
