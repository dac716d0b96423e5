// Philox4x32-10 and gencore's keying, shared by the CPU kernels (csrc/sampler_step.cpp) and the CUDA kernels
// (csrc/cuda/sampler_step_kernels.cu). No PyTorch header: nvcc compiles it on its own.
//
// The definition (and its plain-PyTorch twin) is gencore/reference/philox.py:
//   key     = (seed & 0xffffffff, seed >> 32)
//   counter = (element / 4, sample index, offset & 0xffffffff, offset >> 32)
//   element e takes output word e % 4; words (0, 1) and (2, 3) are the (radius, angle) pairs of Box-Muller:
//   v = (w_even >> 8) * 2^-24, a = (w_odd >> 8) * 2^-24 - 0.5, r = sqrt(-2 log1p(-v)),
//   z_even = r cos(2 pi a), z_odd = r sin(2 pi a).
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define GENCORE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GENCORE_HOST_DEVICE inline
#endif

namespace gencore {
namespace philox {

constexpr uint32_t kM0 = 0xD2511F53u;
constexpr uint32_t kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u;
constexpr uint32_t kW1 = 0xBB67AE85u;
constexpr int kRounds = 10;
// 2^-24: the 24 high bits of a word, scaled, are exactly representable in float32.
constexpr float kUniformScale = 5.9604644775390625e-08f;

struct Words {
  uint32_t w[4];
};

GENCORE_HOST_DEVICE Words philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                        uint32_t k1) {
#if defined(__CUDA_ARCH__)  // the device pass only: the host compiler would warn about an unknown pragma
#pragma unroll
#endif
  for (int round = 0; round < kRounds; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return Words{{c0, c1, c2, c3}};
}

// The four words of group `group` (elements 4*group .. 4*group+3) of sample `sample` at step `offset`.
GENCORE_HOST_DEVICE Words draw(uint64_t seed, uint64_t offset, uint64_t sample, uint64_t group) {
  return philox4x32_10(static_cast<uint32_t>(group), static_cast<uint32_t>(sample), static_cast<uint32_t>(offset),
                       static_cast<uint32_t>(offset >> 32), static_cast<uint32_t>(seed),
                       static_cast<uint32_t>(seed >> 32));
}

// Box-Muller inputs of a word pair, in float (exact) or double.
template <typename T>
GENCORE_HOST_DEVICE T radius_uniform(uint32_t w) {
  return static_cast<T>(w >> 8) * static_cast<T>(kUniformScale);
}
template <typename T>
GENCORE_HOST_DEVICE T angle_uniform(uint32_t w) {
  return static_cast<T>(w >> 8) * static_cast<T>(kUniformScale) - static_cast<T>(0.5);
}

}  // namespace philox
}  // namespace gencore
