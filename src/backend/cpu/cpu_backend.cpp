#include "backend/cpu/kernels.h"

namespace indexcache {

namespace {
class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  void linear(const LinearParams& p) override { cpu::linear(p); }
  void norm(const NormParams& p) override { cpu::norm(p); }
  void rope(const RopeParams& p) override { cpu::rope(p); }
  void indexer_scores(const IndexerScoreParams& p) override { cpu::indexer_scores(p); }
  void topk(const TopkParams& p) override { cpu::topk(p); }
  void sparse_attention(const SparseAttentionParams& p) override { cpu::sparse_attention(p); }
  void silu_mul(const float* gate, const float* up, float* y, int64_t n) override {
    cpu::silu_mul(gate, up, y, n);
  }
};
}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace indexcache
