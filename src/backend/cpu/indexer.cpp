// Lightning-indexer scores on the CPU. Keys are repacked into tiles of kTile keys stored
// dimension-major, so one vector FMA advances kTile dot products at once; kHeads heads share each
// key load. GCC/Clang vector extensions keep this portable (no intrinsics); with AVX2 a v8f is one
// register.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/kernels.h"
#include "backend/cpu/simd_dispatch.h"

namespace indexcache::cpu {

namespace {

typedef float v8f __attribute__((vector_size(32)));
constexpr int kLanes = 8;
constexpr int kTile = 16;  // keys per tile: two v8f
constexpr int kHeads = 4;  // heads per register block
constexpr int kQueryBlock = 8;
constexpr int kTilesPerChunk = 32;  // 512 keys per work item

// Packs keys [S, D] into tiles [S/kTile][D][kTile], zero-padding the last tile. Its own OpenMP
// region: marked like a kernel, so that the region is cloned too (simd_dispatch.h).
INDEXCACHE_CPU_KERNEL std::vector<float> pack_keys(const float* k, int keys, int dim) {
  const int tiles = (keys + kTile - 1) / kTile;
  std::vector<float> packed(static_cast<size_t>(tiles) * dim * kTile, 0.0f);
#pragma omp parallel for schedule(static) if (tiles > 64)
  for (int j = 0; j < tiles; ++j) {
    float* dst = packed.data() + static_cast<size_t>(j) * dim * kTile;
    for (int l = 0; l < kTile; ++l) {
      const int s = j * kTile + l;
      if (s >= keys) break;
      const float* src = k + static_cast<size_t>(s) * dim;
      for (int d = 0; d < dim; ++d) dst[d * kTile + l] = src[d];
    }
  }
  return packed;
}

inline v8f load8(const float* p) {
  v8f v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

// scores for one query against one tile: out[0..kTile) = sum_h w[h] * relu(q[h] . k[:, l]).
// Always inlined, so that it is compiled into each clone of indexer_scores (simd_dispatch.h).
[[gnu::always_inline]] inline void score_tile(const float* q, const float* w, const float* tile,
                                              int heads, int dim, float* out) {
  const v8f zero = {};
  v8f total0 = zero, total1 = zero;
  int h = 0;
  for (; h + kHeads <= heads; h += kHeads) {
    v8f a[kHeads][2];
    for (int i = 0; i < kHeads; ++i) a[i][0] = a[i][1] = zero;
    const float* qh = q + static_cast<size_t>(h) * dim;
    for (int d = 0; d < dim; ++d) {
      const v8f k0 = load8(tile + d * kTile);
      const v8f k1 = load8(tile + d * kTile + kLanes);
      for (int i = 0; i < kHeads; ++i) {
        const float qv = qh[static_cast<size_t>(i) * dim + d];
        a[i][0] += qv * k0;
        a[i][1] += qv * k1;
      }
    }
    for (int i = 0; i < kHeads; ++i) {
      const float wh = w[h + i];
      total0 += wh * (a[i][0] > zero ? a[i][0] : zero);
      total1 += wh * (a[i][1] > zero ? a[i][1] : zero);
    }
  }
  for (; h < heads; ++h) {
    v8f a0 = zero, a1 = zero;
    const float* qh = q + static_cast<size_t>(h) * dim;
    for (int d = 0; d < dim; ++d) {
      a0 += qh[d] * load8(tile + d * kTile);
      a1 += qh[d] * load8(tile + d * kTile + kLanes);
    }
    total0 += w[h] * (a0 > zero ? a0 : zero);
    total1 += w[h] * (a1 > zero ? a1 : zero);
  }
  __builtin_memcpy(out, &total0, sizeof(total0));
  __builtin_memcpy(out + kLanes, &total1, sizeof(total1));
}

}  // namespace

INDEXCACHE_CPU_KERNEL void indexer_scores(const IndexerScoreParams& p) {
  if (p.tokens == 0) return;
  const std::vector<float> packed = pack_keys(p.k, p.keys, p.head_dim);
  const int tiles = (p.keys + kTile - 1) / kTile;
  const int qblocks = (p.tokens + kQueryBlock - 1) / kQueryBlock;
  // Work items are (query block, run of key tiles), so that a single decode query still spreads
  // over every thread; each item writes its whole key range of every query in its block.
  const int chunks = (tiles + kTilesPerChunk - 1) / kTilesPerChunk;
  const float neg_inf = -std::numeric_limits<float>::infinity();
#pragma omp parallel for schedule(dynamic, 1) collapse(2)
  for (int b = 0; b < qblocks; ++b) {
    for (int c = 0; c < chunks; ++c) {
      const int t0 = b * kQueryBlock;
      const int t1 = std::min(p.tokens, t0 + kQueryBlock);
      const int j1 = std::min(tiles, (c + 1) * kTilesPerChunk);
      float buf[kTile];
      for (int j = c * kTilesPerChunk; j < j1; ++j) {
        const float* tile = packed.data() + static_cast<size_t>(j) * p.head_dim * kTile;
        const int s0 = j * kTile;
        const int n = std::min(kTile, p.keys - s0);
        for (int t = t0; t < t1; ++t) {
          const int pos = p.positions[t];
          float* row = p.scores + t * p.scores_stride;
          if (s0 > pos) {  // the whole tile is in this query's future
            std::fill(row + s0, row + s0 + n, neg_inf);
            continue;
          }
          score_tile(p.q + static_cast<size_t>(t) * p.heads * p.head_dim,
                     p.w + static_cast<size_t>(t) * p.heads, tile, p.heads, p.head_dim, buf);
          for (int l = 0; l < n; ++l) row[s0 + l] = (s0 + l <= pos) ? buf[l] * p.scale : neg_inf;
        }
      }
    }
  }
}

}  // namespace indexcache::cpu
