// Tiny RAII owner of a device allocation plus the few host helpers tests and benchmarks need.
// No CUDA types here: plain C++ can include it. Errors throw indexcache::Error (kRuntime).
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace indexcache::cuda {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return ptr_; }
  template <class T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

  // Copies host -> device (bytes <= this->bytes()) and device -> host; both synchronous.
  void upload(const void* src, size_t bytes);
  void download(void* dst, size_t bytes) const;
  // Sets every byte to `value` (0xFF makes f32 NaN, 0x7F makes int32 0x7F7F7F7F).
  void fill_bytes(int value);

  template <class T>
  static DeviceBuffer from(const std::vector<T>& v) {
    DeviceBuffer b(v.size() * sizeof(T));
    b.upload(v.data(), v.size() * sizeof(T));
    return b;
  }
  template <class T>
  std::vector<T> to_vector(size_t count) const {
    std::vector<T> v(count);
    download(v.data(), count * sizeof(T));
    return v;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Waits for all device work; throws on any pending asynchronous error.
void device_synchronize();

// Runs fn once to warm up, then `reps` times, each timed with CUDA events on the default stream;
// returns the median in milliseconds.
double median_ms(const std::function<void()>& fn, int reps = 10);

// "NVIDIA H200 (sm_90, 132 SMs)" or a reason why there is no device.
std::string device_description();

}  // namespace indexcache::cuda
