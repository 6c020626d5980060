#include "backend/cuda/device_buffer.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <utility>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/cuda_ops.h"

namespace indexcache::cuda {

bool cuda_available() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the (non-sticky) error so later calls start clean
    return false;
  }
  return n > 0;
}

std::string device_description() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return std::string("no CUDA device (") + cudaGetErrorString(e) + ")";
  }
  if (n == 0) return "no CUDA device (device count 0)";
  int dev = 0;
  cudaDeviceProp prop{};
  IC_CUDA_CHECK(cudaGetDevice(&dev));
  IC_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) +
         ", " + std::to_string(prop.multiProcessorCount) + " SMs)";
}

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes > 0) IC_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::upload(const void* src, size_t bytes) {
  if (bytes > bytes_) throw_runtime("DeviceBuffer::upload", "more bytes than allocated");
  if (bytes) IC_CUDA_CHECK(cudaMemcpy(ptr_, src, bytes, cudaMemcpyHostToDevice));
}

void DeviceBuffer::download(void* dst, size_t bytes) const {
  if (bytes > bytes_) throw_runtime("DeviceBuffer::download", "more bytes than allocated");
  if (bytes) IC_CUDA_CHECK(cudaMemcpy(dst, ptr_, bytes, cudaMemcpyDeviceToHost));
}

void DeviceBuffer::fill_bytes(int value) {
  if (bytes_) IC_CUDA_CHECK(cudaMemset(ptr_, value, bytes_));
  IC_CUDA_CHECK(cudaDeviceSynchronize());
}

void device_synchronize() { IC_CUDA_CHECK(cudaDeviceSynchronize()); }

double median_ms(const std::function<void()>& fn, int reps) {
  fn();
  device_synchronize();
  cudaEvent_t start, stop;
  IC_CUDA_CHECK(cudaEventCreate(&start));
  IC_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> times;
  for (int i = 0; i < std::max(reps, 1); ++i) {
    IC_CUDA_CHECK(cudaEventRecord(start));
    fn();
    IC_CUDA_CHECK(cudaEventRecord(stop));
    IC_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    IC_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace indexcache::cuda
