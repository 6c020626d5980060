# Defaults both self-contained GPU-machine builds (scripts/gpu_test, scripts/gpu_bench) share.
# Include before project(): enabling CUDA would otherwise set the compiler's default (pre-sm_80)
# arch; sm_90a because the wgmma kernels need the arch-specific target.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 90a)
endif()
set(CMAKE_CXX_STANDARD 20)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_CUDA_STANDARD 17)  # CMake 3.25 does not know nvcc 13 supports 20
set(CMAKE_CUDA_EXTENSIONS OFF)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
if(NOT CMAKE_BUILD_TYPE)
  set(CMAKE_BUILD_TYPE Release)
endif()
