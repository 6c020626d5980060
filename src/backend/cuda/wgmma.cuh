// Hopper warpgroup MMA (wgmma, sm_90a) helpers shared by the tensor-core DSA kernels: shared-memory
// matrix descriptors for the 128-byte-swizzled K-major layout, the 128B swizzle itself, and the
// fence / commit / wait instructions. The MMA instructions themselves (shape- and type-specific) live
// in the kernels that use them. Include from .cu files only; the kernels must be built for sm_90a.
//
// Layout ("K-major, 128B swizzle"): a tile of R rows whose K extent is 128 bytes (64 bf16 or 128
// e4m3) is stored as R rows of 128 bytes, row r at byte r * 128 of a 1024-byte-aligned base, and the
// 16-byte chunk c (0..7) of row r stored at chunk position c ^ (r & 7). Rows wider than 128 bytes are
// split into 128-byte column slabs stored one after the other (slab s at base + s * R * 128).
// Descriptor of such a slab: start address >> 4, leading-dimension byte offset unused (1), stride
// byte offset 1024 (8 rows x 128 B, the distance between 8-row core-matrix groups), swizzle mode 1
// (128B). A k-step of 32 bytes within the slab advances the start address by 32 bytes (the hardware
// applies the XOR swizzle on the final address bits, which is why the base must be 1024-aligned).
#pragma once

#include <cstdint>

namespace indexcache::cuda {
namespace {

// Byte offset of 16-byte chunk c (0..7) of row r in a 128B-swizzled slab.
__device__ __forceinline__ uint32_t swz128(int r, int c) {
  return static_cast<uint32_t>((r << 7) + ((c ^ (r & 7)) << 4));
}

// Shared-memory matrix descriptor for a K-major 128B-swizzled slab starting at shared address
// `saddr` (plus any k-step byte offset inside the 128-byte row).
__device__ __forceinline__ uint64_t wgmma_desc_k128(uint32_t saddr) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((saddr & 0x3FFFF) >> 4);  // bits 0-13: start address
  d |= static_cast<uint64_t>(1) << 16;                  // bits 16-29: leading byte offset (unused)
  d |= static_cast<uint64_t>(1024 >> 4) << 32;          // bits 32-45: stride byte offset
  d |= static_cast<uint64_t>(1) << 62;                  // bits 62-63: 128B swizzle
  return d;
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Makes this thread's generic-proxy shared-memory writes (st.shared, cp.async after its wait)
// visible to the async proxy (wgmma operand reads); follow with a barrier.
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Barrier over `threads` threads (a multiple of 32) with hardware barrier id `id` (1..15; 0 is
// __syncthreads).
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace
}  // namespace indexcache::cuda
