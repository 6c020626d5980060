// The CUDA path of `indexcache bench`: SyntheticGpuModel (random bf16 weights generated on the
// device with the preset's shapes) timed over ctx x plan x mode, or (--engine session) the one
// Session on the CUDA backend; and the GPU's facts for every report. Built where
// INDEXCACHE_HAVE_CUDA is defined; elsewhere --device cuda is a one-line error.
#include "bench/bench_run.h"
#include "indexcache/error.h"

#ifdef INDEXCACHE_HAVE_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "gpu/synthetic_gpu_model.h"
#endif

namespace indexcache::bench {

#ifndef INDEXCACHE_HAVE_CUDA

BenchReport run_gpu_bench(const BenchSetup&, Progress&) {
  throw_bad_input("--device cuda", "this build has no CUDA backend (no CUDA compiler at configure time); use --device cpu");
}

MachineInfo cuda_machine_info(int) {
  throw_bad_input("--device cuda", "this build has no CUDA backend (no CUDA compiler at configure time); use --device cpu");
}

std::optional<int64_t> cuda_used_bytes() { return std::nullopt; }

#else

namespace {

ClassSeconds to_classes(const gpu::KernelTimes& k) {
  return {.gemm = k.gemm, .moe = k.moe, .attention = k.attention, .indexer = k.indexer, .topk = k.topk,
          .other = k.other};
}

PhaseStats to_stats(const gpu::PhaseResult& p, bool instrumented) {
  PhaseStats s;
  s.seconds = p.seconds;
  s.tokens = p.tokens;
  if (instrumented) s.classes = to_classes(p.kernels);
  s.flops = {.indexer = p.flops.indexer, .attention = p.flops.attention};
  return s;
}

std::string seconds_str(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g s", s);
  return buf;
}

// Makes `gpu` the current CUDA device, with a one-line error when there is none or too few.
void select_gpu(int gpu) {
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0)
    throw_runtime("--device cuda", std::string("no usable CUDA device (") +
                                       (err != cudaSuccess ? cudaGetErrorString(err) : "0 devices") + ")");
  if (gpu >= devices)
    throw_runtime("--gpu " + std::to_string(gpu), "only " + std::to_string(devices) + " CUDA device(s)");
  const cudaError_t set = cudaSetDevice(gpu);
  if (set != cudaSuccess) throw_runtime("--gpu " + std::to_string(gpu), cudaGetErrorString(set));
}

}  // namespace

MachineInfo cuda_machine_info(int gpu) {
  select_gpu(gpu);
  const gpu::GpuInfo info = gpu::gpu_info();
  MachineInfo m;
  m.device = "cuda";
  m.name = info.name;
  m.sm_count = info.sm_count;
  m.cc_major = info.cc_major;
  m.cc_minor = info.cc_minor;
  m.memory_gib = info.memory_gib;
  m.driver_version = info.driver_version;
  m.runtime_version = info.runtime_version;
  return m;
}

std::optional<int64_t> cuda_used_bytes() {
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) return std::nullopt;
  return static_cast<int64_t>(total - free);
}

BenchReport run_gpu_bench(const BenchSetup& setup, Progress& progress) {
  const BenchOptions& o = setup.options;
  BenchReport r = report_skeleton(setup);
  r.machine = cuda_machine_info(o.device.gpu);
  progress.note(r.machine.name + ": measuring the bf16 matrix peak");
  r.machine.bf16_peak_tflops = gpu::measure_bf16_peak_tflops();
  if (o.engine != Engine::kRunner) {
    auto be = make_cuda_backend(o.device.gpu, o.device.precision);
    return run_session_bench(setup, progress, *be, std::move(r), /*profile_ops=*/o.engine == Engine::kSessionProfile);
  }

  progress.note("allocating " + setup.preset.name + " (" + format_bytes(static_cast<double>(r.weight_bytes)) +
           " of bf16 weights) for " + std::to_string(setup.max_context()) + " tokens");
  std::unique_ptr<gpu::SyntheticGpuModel> owned;
  try {
    owned = std::make_unique<gpu::SyntheticGpuModel>(setup.preset.spec, setup.max_context(), o.seed);
  } catch (const Error& e) {
    // Shapes the GPU kernels do not take (e.g. the small CPU presets) or a model that does not fit.
    const std::string what = "--synthetic " + setup.preset.name + " on --device cuda";
    if (e.kind() == ErrorKind::kBadInput) throw_bad_input(what, e.what());
    throw_runtime(what, std::string(e.what()) + "; trim it with --layers N / --experts E or shorten --ctx");
  }
  gpu::SyntheticGpuModel& model = *owned;
  r.device_weight_bytes = static_cast<int64_t>(model.weight_bytes());

  gpu::RunOptions ro;
  ro.chunk = setup.chunk;
  ro.decode_steps = setup.decode_steps;
  ro.cuda_graphs = o.cuda_graphs;
  ro.indexer_fp8 = o.indexer_fp8;
  ro.indexer_hadamard = o.indexer_hadamard;
  ro.instrument = true;

  // Warm-up (cuBLASLt heuristics, module loading, graph capture paths): a short prefill and decode.
  {
    const int64_t warm = std::min<int64_t>(*std::min_element(o.ctx.begin(), o.ctx.end()), 2048);
    progress.note("warm-up at " + std::to_string(warm) + " tokens");
    gpu::RunOptions wo = ro;
    wo.decode_steps = std::min(ro.decode_steps, 4);
    if (o.prefill) model.prefill(warm, setup.plans.front().plan, wo);
    if (o.decode) model.decode(warm, setup.plans.front().plan, wo);
  }

  for (int64_t ctx : o.ctx) {
    for (const auto& np : setup.plans) {
      BenchRow row;
      row.ctx = ctx;
      row.plan = np.text;
      row.pattern = np.plan.pattern();
      row.full_layers = np.plan.num_full();
      if (o.prefill) {
        std::vector<PhaseStats> runs;
        for (int i = 0; i < o.repeat; ++i) runs.push_back(to_stats(model.prefill(ctx, np.plan, ro), ro.instrument));
        row.prefill = median_run(std::move(runs));
        if (row.prefill->flops.indexer == 0 && row.prefill->flops.attention == 0)
          row.prefill->flops = count_prefill_flops(setup.preset.spec, np.plan, ctx);
        progress.note("ctx " + std::to_string(ctx) + " plan " + np.text + ": prefill " + seconds_str(row.prefill->seconds));
      }
      if (o.decode) {
        std::vector<PhaseStats> runs;
        for (int i = 0; i < o.repeat; ++i) runs.push_back(to_stats(model.decode(ctx, np.plan, ro), ro.instrument));
        row.decode = median_run(std::move(runs));
        if (row.decode->flops.indexer == 0 && row.decode->flops.attention == 0)
          row.decode->flops = count_decode_flops(setup.preset.spec, np.plan, ctx, row.decode->tokens);
        progress.note("ctx " + std::to_string(ctx) + " plan " + np.text + ": decode " +
                 std::to_string(row.decode->tokens) + " steps in " + seconds_str(row.decode->seconds));
      }
      r.rows.push_back(std::move(row));
    }
  }
  return r;
}

#endif

}  // namespace indexcache::bench
