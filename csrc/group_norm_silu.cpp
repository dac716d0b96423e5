// CPU kernels of gencore::group_norm_silu_fwd / _bwd (schemas in gencore.cpp; the math, and the names of its
// symbols here, in docs/math.md).
//
// View x as (N, C, S). Two layouts are read in place, and the output is written in the same one:
//   channels-first (x.is_contiguous()):           element (n, c, s) at (n*C + c)*S + s
//   channels-last  (channels innermost, N-D):     element (n, c, s) at (n*S + s)*C + c
// Any other strides are copied to contiguous first (the layout rule of csrc/tensor_rules.h and gencore/_rules.py).
//
// Statistics: every channel is cut into fixed chunks (channels-first: kChunk positions of one channel; channels-last:
// a block of rows, all channels). Each chunk gets a centred two-pass (mean, M2) while it sits in L1/L2, and the
// chunks are Chan-merged per (n, g) in one fixed order. The chunking depends only on the shape, never on the thread
// count, and no result is ever accumulated by two threads, so outputs and gradients are bit-identical for any
// number of threads (tests/ops/test_group_norm_silu.py checks 1 vs 2 threads).
//
// Channels-first speed: each (n, g) slab is contiguous, so with enough slabs to keep every thread busy one task
// takes a whole slab: stats pass, then the output pass while the slab is still in L2 (x is read from DRAM once).
// With fewer slabs than 2 x threads (batch 1 and few groups) the three phases run as separate parallel loops over
// chunks instead; both schedules compute the same chunk partials and merge them in the same order.
// Channels-last: per-(n, row-block) partial sums over all channels, merged per group in a fixed order, then one
// elementwise pass over rows.
//
// Elementwise math per (n, c) (the symbols of docs/math.md), around the centre M = mean - t (x - M = h - mean),
// subtracted before any scaling: on offset data (x = 1000 + noise) x*A + B would lose ~1e-4 absolute to the rounding
// of A and B. M is kept in double through the merge and split as M_hi (float) + M_lo; x - M_hi is exact (Sterbenz)
// and M_lo is folded into the per-channel constants, so the passes cost no extra operation:
//   forward   z = (x - M_hi)*A + B',  B' = B - M_lo*A,  y = silu(z) or z
//   backward  xhat = (x - M_hi)*r + X0,  X0 = -M_lo*r;  gx = A*gz + E*(x - M_hi) + F',  F' = F - E*M_lo
// Each of y and grad_x is one allocation in x's layout (output_like, tensor_rules.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "group_norm_silu.h"
#include "vec_io.h"

namespace gencore {
namespace {

using at::vec::Vectorized;

// Positions of one channel per statistics chunk (channels-first), and elements per row block (channels-last).
// 4096 float32 = 16 KiB: a chunk is re-read by the second pass of the variance from L1.
constexpr int64_t kChunk = 4096;
constexpr int64_t kRowBlockElems = 16384;
// Backward keeps gz of a whole slab in a per-thread float buffer (saves recomputing the SiLU's exp) up to this size.
constexpr int64_t kMaxScratch = int64_t(1) << 18;

#define GENCORE_INLINE inline __attribute__((always_inline))

// sigmoid(z) = 1 / (1 + exp(-z)) in float32, inlined into the loops. ATen's Vectorized<float>::exp_u20 is not
// inlined by GCC: the call spills every live vector register and made the SiLU backward 4x slower than its loads.
// exp: Cody-Waite range reduction x = n*ln2 + r (ln2 in two parts), degree-5 minimax polynomial on
// |r| <= ln2/2 (Cephes' expf coefficients), 2^n built in the exponent bits: ~2 ulp. The input is clamped to
// [-87.3, 88.3], so exp never overflows (sigmoid of a very negative z is then ~1e-38 instead of 0, and z * that
// is still 0 in float32 for the output). 1/x: the hardware reciprocal estimate refined by one Newton step
// (AVX-512 rcp14: ~1e-8 relative after the step; AVX2 rcp: ~3e-7 relative, well inside the float32 tolerance).
#if defined(CPU_CAPABILITY_AVX512)
#define GENCORE_SIMD_EXP 1
using simd_ps = __m512;
GENCORE_INLINE __m512 sigmoid_ps(__m512 z) {
  __m512 x = _mm512_sub_ps(_mm512_setzero_ps(), z);
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  const __m512 den = _mm512_fmadd_ps(p, _mm512_castsi512_ps(e), _mm512_set1_ps(1.0f));  // 1 + exp(-z)
  const __m512 est = _mm512_rcp14_ps(den);
  return _mm512_mul_ps(est, _mm512_fnmadd_ps(den, est, _mm512_set1_ps(2.0f)));
}
#elif defined(CPU_CAPABILITY_AVX2)
#define GENCORE_SIMD_EXP 1
using simd_ps = __m256;
GENCORE_INLINE __m256 sigmoid_ps(__m256 z) {
  __m256 x = _mm256_sub_ps(_mm256_setzero_ps(), z);
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 den = _mm256_fmadd_ps(p, _mm256_castsi256_ps(e), _mm256_set1_ps(1.0f));  // 1 + exp(-z)
  const __m256 est = _mm256_rcp_ps(den);
  return _mm256_mul_ps(est, _mm256_fnmadd_ps(den, est, _mm256_set1_ps(2.0f)));
}
#endif

GENCORE_INLINE Vectorized<float> sigmoid(const Vectorized<float>& z) {
#ifdef GENCORE_SIMD_EXP
  return Vectorized<float>(sigmoid_ps(static_cast<simd_ps>(z)));
#else
  const Vectorized<float> one(1.0f);
  return one / (one + (Vectorized<float>(0.0f) - z).exp_u20());
#endif
}
GENCORE_INLINE Vectorized<double> sigmoid(const Vectorized<double>& z) {
  const Vectorized<double> one(1.0);
  return one / (one + (Vectorized<double>(0.0) - z).exp());
}

template <typename V>
GENCORE_INLINE V silu(const V& z) {
  return z * sigmoid(z);
}

// d/dz silu(z) * gy = gy * s * (1 + z*(1 - s)), s = sigmoid(z).
template <typename V>
GENCORE_INLINE V silu_backward(const V& z, const V& gy) {
  const V one(1);
  const V s = sigmoid(z);
  return gy * s * at::vec::fmadd(z, one - s, one);
}

// Centred two-pass moments of one chunk, around its first element x0 so that offset data (x = 1000 + noise) keeps
// its precision in float32: returns x0, the mean of x - x0, and M2 = sum (x - mean)^2.
template <typename T, typename acc_t>
inline void chunk_moments(const T* p, int64_t len, acc_t& shift_out, acc_t& rel_mean_out, acc_t& m2_out) {
  using io = VecIO<T>;
  using V = typename io::V;
  constexpr int64_t W = io::W;
  const acc_t x0 = static_cast<acc_t>(p[0]);
  const V vs(x0);
  V a0(0), a1(0), a2(0), a3(0);
  int64_t i = 0;
  for (; i + 4 * W <= len; i += 4 * W) {
    a0 += io::load(p + i) - vs;
    a1 += io::load(p + i + W) - vs;
    a2 += io::load(p + i + 2 * W) - vs;
    a3 += io::load(p + i + 3 * W) - vs;
  }
  for (; i + W <= len; i += W) a0 += io::load(p + i) - vs;
  if (i < len) a1 += V::set(V(0), io::load(p + i, len - i) - vs, len - i);  // only the real lanes
  const acc_t rel = lane_sum((a0 + a1) + (a2 + a3)) / static_cast<acc_t>(len);
  const V vm(rel);
  a0 = a1 = a2 = a3 = V(0);
  i = 0;
  for (; i + 4 * W <= len; i += 4 * W) {
    V d0 = (io::load(p + i) - vs) - vm, d1 = (io::load(p + i + W) - vs) - vm;
    V d2 = (io::load(p + i + 2 * W) - vs) - vm, d3 = (io::load(p + i + 3 * W) - vs) - vm;
    a0 = at::vec::fmadd(d0, d0, a0);
    a1 = at::vec::fmadd(d1, d1, a1);
    a2 = at::vec::fmadd(d2, d2, a2);
    a3 = at::vec::fmadd(d3, d3, a3);
  }
  for (; i + W <= len; i += W) {
    V d = (io::load(p + i) - vs) - vm;
    a0 = at::vec::fmadd(d, d, a0);
  }
  if (i < len) {
    V d = V::set(V(0), (io::load(p + i, len - i) - vs) - vm, len - i);
    a1 = at::vec::fmadd(d, d, a1);
  }
  shift_out = x0;
  rel_mean_out = rel;
  m2_out = lane_sum((a0 + a1) + (a2 + a3));
}

// Chan's parallel-variance merge of (count, mean, M2) partials, in double: a handful per channel, so free, and the
// group mean keeps more than float32's 3e-5 absolute resolution at an offset of 1000 (see Coefficients).
struct Moments {
  double count = 0, mean = 0, m2 = 0;
  inline void merge(double n_b, double mean_b, double m2_b) {
    if (count == 0) {
      count = n_b;
      mean = mean_b;
      m2 = m2_b;
      return;
    }
    const double n = count + n_b, delta = mean_b - mean;
    mean += delta * (n_b / n);
    m2 += m2_b + delta * delta * (count * n_b / n);
    count = n;
  }
};

// The centre M = mean - temb of a channel (in double) split as M_hi + M_lo with M_hi in the accumulation type:
// x - M_hi is exact on offset data (Sterbenz), and the M_lo part is folded into the per-channel constants, so
// the elementwise passes pay no extra operation for the extra precision.
template <typename acc_t>
inline void split_centre(double M, acc_t& hi, double& lo) {
  hi = static_cast<acc_t>(M);
  lo = M - static_cast<double>(hi);
}

// y = act((x - M)*A + B) over len elements of one channel.
template <typename T, typename acc_t>
inline void affine_act(const T* x, T* y, int64_t len, acc_t M, acc_t A, acc_t B, bool use_silu) {
  using io = VecIO<T>;
  using V = typename io::V;
  constexpr int64_t W = io::W;
  const V vm(M), va(A), vb(B);
  int64_t i = 0;
  if (use_silu) {
    for (; i + 2 * W <= len; i += 2 * W) {
      V z0 = at::vec::fmadd(io::load(x + i) - vm, va, vb);
      V z1 = at::vec::fmadd(io::load(x + i + W) - vm, va, vb);
      io::store(y + i, silu(z0));
      io::store(y + i + W, silu(z1));
    }
    for (; i + W <= len; i += W) io::store(y + i, silu(at::vec::fmadd(io::load(x + i) - vm, va, vb)));
    if (i < len) io::store(y + i, silu(at::vec::fmadd(io::load(x + i, len - i) - vm, va, vb)), len - i);
  } else {
    for (; i + W <= len; i += W) io::store(y + i, at::vec::fmadd(io::load(x + i) - vm, va, vb));
    if (i < len) io::store(y + i, at::vec::fmadd(io::load(x + i, len - i) - vm, va, vb), len - i);
  }
}

// One channels-last row: C channels with per-channel coefficient arrays.
template <typename T, typename acc_t>
inline void affine_act_row(const T* x, T* y, int64_t C, const acc_t* M, const acc_t* A, const acc_t* B,
                           bool use_silu) {
  using io = VecIO<T>;
  using V = typename io::V;
  constexpr int64_t W = io::W;
  int64_t c = 0;
  for (; c + W <= C; c += W) {
    V z = at::vec::fmadd(io::load(x + c) - V::loadu(M + c), V::loadu(A + c), V::loadu(B + c));
    io::store(y + c, use_silu ? silu(z) : z);
  }
  if (c < C) {
    const int64_t n = C - c;
    V z = at::vec::fmadd(io::load(x + c, n) - V::loadu(M + c, n), V::loadu(A + c, n), V::loadu(B + c, n));
    io::store(y + c, use_silu ? silu(z) : z, n);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Arguments: checks and per-channel parameters as contiguous accumulation-type arrays.

// A (possibly absent) small parameter tensor as a contiguous accumulation-type tensor (undefined if absent).
at::Tensor as_acc(const std::optional<at::Tensor>& t, at::ScalarType acc) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  return t->to(acc).contiguous();
}

template <typename acc_t>
const acc_t* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<acc_t>() : nullptr;
}

// Per-(n, c) parameters, read with defaults for absent tensors.
template <typename acc_t>
struct Params {
  const acc_t* weight;       // (C,)
  const acc_t* bias;         // (C,)
  const acc_t* temb;         // (N, C)
  const acc_t* scale_shift;  // (N, 2C)
  int64_t C;
  inline acc_t w(int64_t c) const { return weight ? weight[c] : acc_t(1); }
  inline acc_t b(int64_t c) const { return bias ? bias[c] : acc_t(0); }
  inline acc_t t(int64_t n, int64_t c) const { return temb ? temb[n * C + c] : acc_t(0); }
  inline acc_t k(int64_t n, int64_t c) const { return scale_shift ? acc_t(1) + scale_shift[n * 2 * C + c] : acc_t(1); }
  inline acc_t sh(int64_t n, int64_t c) const { return scale_shift ? scale_shift[n * 2 * C + C + c] : acc_t(0); }
};

struct Shape {
  int64_t N, C, S, G, cpg;
};

// Finishes the statistics of group (n, g) from its partials and writes the forward coefficients of its channels:
// z = (x - M_hi)*A + B with A = r*w*k and B = b*k + shift - M_lo*A.
// partial(i) for i in [0, count) yields (channel c, positions, mean of x, M2) in the fixed merge order.
template <typename acc_t, typename Partial>
inline void finish_group(int64_t n, int64_t g, int64_t count, const Partial& partial, const Shape& sh,
                         const Params<acc_t>& P, double eps, double* mean_out, acc_t* rstd_out, acc_t* coefM,
                         acc_t* coefA, acc_t* coefB) {
  Moments m;
  for (int64_t i = 0; i < count; ++i) {
    int64_t c, len;
    double mu, m2;
    partial(i, c, len, mu, m2);
    m.merge(static_cast<double>(len), mu + static_cast<double>(P.t(n, c)), m2);
  }
  const double var = std::max(m.m2 / m.count, 0.0);
  const acc_t r = static_cast<acc_t>(1.0 / std::sqrt(var + eps));
  mean_out[n * sh.G + g] = m.mean;  // saved in double: the backward rebuilds this exact centre
  rstd_out[n * sh.G + g] = r;
  for (int64_t c = g * sh.cpg; c < (g + 1) * sh.cpg; ++c) {
    const int64_t nc = n * sh.C + c;
    const acc_t k = P.k(n, c);
    double lo;
    split_centre<acc_t>(m.mean - static_cast<double>(P.t(n, c)), coefM[nc], lo);
    coefA[nc] = r * P.w(c) * k;
    coefB[nc] = static_cast<acc_t>(static_cast<double>(P.b(c) * k + P.sh(n, c)) - lo * coefA[nc]);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Forward

template <typename T>
void forward_channels_first(const T* x, T* y, double* mean, acc_type<T>* rstd,
                            const Shape& sh, const Params<acc_type<T>>& P, double eps, bool use_silu) {
  using acc_t = acc_type<T>;
  const int64_t S = sh.S, K = (S + kChunk - 1) / kChunk;  // chunks per channel
  const int64_t units = sh.N * sh.C * K, slabs = sh.N * sh.G, units_per_slab = sh.cpg * K;
  std::vector<acc_t> part_shift(units), part_rel(units), part_m2(units), coefM(sh.N * sh.C),
      coefA(sh.N * sh.C), coefB(sh.N * sh.C);
  auto unit_range = [&](int64_t u, int64_t& nc, int64_t& off, int64_t& len) {
    nc = u / K;
    const int64_t k = u % K;
    off = nc * S + k * kChunk;
    len = std::min(kChunk, S - k * kChunk);
  };
  auto stats = [&](int64_t u) {
    int64_t nc, off, len;
    unit_range(u, nc, off, len);
    chunk_moments<T, acc_t>(x + off, len, part_shift[u], part_rel[u], part_m2[u]);
  };
  auto finish = [&](int64_t ng) {
    const int64_t n = ng / sh.G, g = ng % sh.G, first = ng * units_per_slab;
    finish_group<acc_t>(
        n, g, units_per_slab,
        [&](int64_t i, int64_t& c, int64_t& len, double& mu, double& m2) {
          const int64_t u = first + i;
          c = (u / K) % sh.C;
          len = std::min(kChunk, S - (u % K) * kChunk);
          mu = static_cast<double>(part_shift[u]) + static_cast<double>(part_rel[u]);
          m2 = part_m2[u];
        },
        sh, P, eps, mean, rstd, coefM.data(), coefA.data(), coefB.data());
  };
  auto output = [&](int64_t u) {
    int64_t nc, off, len;
    unit_range(u, nc, off, len);
    affine_act<T, acc_t>(x + off, y + off, len, coefM[nc], coefA[nc], coefB[nc], use_silu);
  };
  if (slabs >= 2 * at::get_num_threads()) {
    // (n, g) slabs are contiguous (channels of a group are adjacent): stats then output while the slab is in L2.
    at::parallel_for(0, slabs, 1, [&](int64_t begin, int64_t end) {
      for (int64_t ng = begin; ng < end; ++ng) {
        for (int64_t u = ng * units_per_slab; u < (ng + 1) * units_per_slab; ++u) stats(u);
        finish(ng);
        for (int64_t u = ng * units_per_slab; u < (ng + 1) * units_per_slab; ++u) output(u);
      }
    });
  } else {
    at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) stats(u);
    });
    for (int64_t ng = 0; ng < slabs; ++ng) finish(ng);
    at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) output(u);
    });
  }
}

template <typename T>
void forward_channels_last(const T* x, T* y, double* mean, acc_type<T>* rstd,
                           const Shape& sh, const Params<acc_type<T>>& P, double eps, bool use_silu) {
  using acc_t = acc_type<T>;
  using io = VecIO<T>;
  using V = typename io::V;
  constexpr int64_t W = io::W;
  const int64_t C = sh.C, S = sh.S;
  const int64_t rows = std::max<int64_t>(1, kRowBlockElems / C), K = (S + rows - 1) / rows;  // row blocks per n
  // Per (n, row block), per channel: shift (the block's first row), mean relative to it, M2.
  std::vector<acc_t> part_shift(sh.N * K * C), part_rel(sh.N * K * C), part_m2(sh.N * K * C), coefM(sh.N * C),
      coefA(sh.N * C), coefB(sh.N * C);
  // Per (n, row block): per-channel two-pass moments around the first row, vectorized over channels.
  at::parallel_for(0, sh.N * K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nk = begin; nk < end; ++nk) {
      const int64_t n = nk / K, s0 = (nk % K) * rows, s1 = std::min(S, s0 + rows), len = s1 - s0;
      acc_t* ps = part_shift.data() + nk * C;
      acc_t* pm = part_rel.data() + nk * C;
      acc_t* p2 = part_m2.data() + nk * C;
      const T* xb = x + (n * S + s0) * C;
      for (int64_t c = 0; c < C; ++c) ps[c] = static_cast<acc_t>(xb[c]);
      std::fill(pm, pm + C, acc_t(0));
      std::fill(p2, p2 + C, acc_t(0));
      for (int64_t s = 1; s < len; ++s) {  // row 0 contributes x0 - x0 = 0
        const T* row = xb + s * C;
        for (int64_t c = 0; c < C; c += W) {
          const int64_t m = std::min(W, C - c);
          V v = load_n(row + c, m);
          (V::loadu(pm + c, m) + (v - V::loadu(ps + c, m))).store(pm + c, m);
        }
      }
      const acc_t inv = acc_t(1) / static_cast<acc_t>(len);
      for (int64_t c = 0; c < C; ++c) pm[c] *= inv;
      for (int64_t s = 0; s < len; ++s) {
        const T* row = xb + s * C;
        for (int64_t c = 0; c < C; c += W) {
          const int64_t m = std::min(W, C - c);
          V v = load_n(row + c, m);
          V d = (v - V::loadu(ps + c, m)) - V::loadu(pm + c, m);
          at::vec::fmadd(d, d, V::loadu(p2 + c, m)).store(p2 + c, m);
        }
      }
    }
  });
  at::parallel_for(0, sh.N * sh.G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t n = ng / sh.G, g = ng % sh.G;
      finish_group<acc_t>(
          n, g, sh.cpg * K,
          [&](int64_t i, int64_t& c, int64_t& len, double& mu, double& m2) {
            c = g * sh.cpg + i / K;
            const int64_t k = i % K, idx = (n * K + k) * C + c;
            len = std::min(S, (k + 1) * rows) - k * rows;
            mu = static_cast<double>(part_shift[idx]) + static_cast<double>(part_rel[idx]);
            m2 = part_m2[idx];
          },
          sh, P, eps, mean, rstd, coefM.data(), coefA.data(), coefB.data());
    }
  });
  at::parallel_for(0, sh.N * S, std::max<int64_t>(1, 4096 / C), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / S;
      affine_act_row<T, acc_t>(x + row * C, y + row * C, C, coefM.data() + n * C, coefA.data() + n * C,
                               coefB.data() + n * C, use_silu);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_silu_fwd_cpu(
    const at::Tensor& x_in, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& temb, const std::optional<at::Tensor>& scale_shift, int64_t num_groups,
    double eps, std::optional<c10::string_view> activation) {
  const bool use_silu = gn::applies_silu(activation);
  gn::check_forward(x_in, weight, bias, temb, scale_shift, num_groups, eps, c10::DeviceType::CPU);
  const int64_t N = x_in.size(0), C = x_in.size(1);

  const bool cl = is_channels_last(x_in);
  const at::Tensor x = (cl || x_in.is_contiguous()) ? x_in : x_in.contiguous();
  const Shape sh{N, C, x.numel() / (N * C), num_groups, C / num_groups};
  const auto acc = accumulation_type(x.scalar_type());
  const at::Tensor w = as_acc(weight, acc), b = as_acc(bias, acc), t = as_acc(temb, acc),
                   ss = as_acc(scale_shift, acc);
  at::Tensor y = output_like(x);
  at::Tensor mean = at::empty({N, num_groups}, x.options().dtype(at::kDouble));
  at::Tensor rstd = at::empty({N, num_groups}, x.options().dtype(acc));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_norm_silu_fwd_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const Params<acc_t> P{ptr_or_null<acc_t>(w), ptr_or_null<acc_t>(b), ptr_or_null<acc_t>(t),
                          ptr_or_null<acc_t>(ss), C};
    // data_ptr of a channels-last tensor is its (n, s, c) storage.
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    if (cl) {
      forward_channels_last<scalar_t>(xp, yp, mean.data_ptr<double>(), rstd.data_ptr<acc_t>(), sh, P, eps, use_silu);
    } else {
      forward_channels_first<scalar_t>(xp, yp, mean.data_ptr<double>(), rstd.data_ptr<acc_t>(), sh, P, eps,
                                       use_silu);
    }
  });
  return {y, mean, rstd};
}

// ---------------------------------------------------------------------------------------------------------------------
// Backward

// Per-(n, c) coefficients of the backward (docs/math.md): the forward's (M_hi, A, B) so z = (x - M_hi)*A + B;
// xhat = (x - M_hi)*r + X0 with X0 = -M_lo*r; M_lo itself; and gx = A*gz + E*(x - M_hi) + F.
template <typename acc_t>
struct BwdCoefs {
  std::vector<acc_t> M, A, B, r, X0, E, F;
  std::vector<double> lo;
  explicit BwdCoefs(int64_t nc) : M(nc), A(nc), B(nc), r(nc), X0(nc), E(nc), F(nc), lo(nc) {}
};

// One chunk of the reduction: S1 = sum gz, S2 = sum gz*xhat, S3 = sum xhat. Stores gz to `gz_out` if given.
template <typename T, typename acc_t>
inline void reduce_chunk(const T* x, const T* gy, int64_t len, acc_t M, acc_t A, acc_t B, acc_t r, acc_t x0,
                         bool use_silu, float* gz_out, acc_t& s1, acc_t& s2, acc_t& s3) {
  using io = VecIO<T>;
  using V = typename io::V;
  constexpr int64_t W = io::W;
  const V vm(M), va(A), vb(B), vr(r), vx0(x0);
  V a1(0), a2(0), a3(0), b1(0), b2(0), b3(0);
  auto step = [&](int64_t i, int64_t n, V& c1, V& c2, V& c3) {
    V d = load_n(x + i, n) - vm;
    V g = load_n(gy + i, n);  // zero-filled lanes give gz = 0
    V gz = use_silu ? silu_backward(at::vec::fmadd(d, va, vb), g) : g;
    V xhat = at::vec::fmadd(d, vr, vx0);
    if (n != W) xhat = V::set(V(0), xhat, n);
    c1 += gz;
    c2 = at::vec::fmadd(gz, xhat, c2);
    c3 += xhat;
    if (gz_out) {
      if constexpr (std::is_same_v<acc_t, float>) {
        if (n == W) gz.store(gz_out + i); else gz.store(gz_out + i, n);
      }
    }
  };
  int64_t i = 0;
  for (; i + 2 * W <= len; i += 2 * W) {
    step(i, W, a1, a2, a3);
    step(i + W, W, b1, b2, b3);
  }
  for (; i + W <= len; i += W) step(i, W, a1, a2, a3);
  if (i < len) step(i, len - i, b1, b2, b3);
  s1 = lane_sum(a1 + b1);
  s2 = lane_sum(a2 + b2);
  s3 = lane_sum(a3 + b3);
}

// gx = A*gz + E*(x - M) + F over one chunk, with gz from `gz_in` or recomputed.
template <typename T, typename acc_t>
inline void grad_input_chunk(const T* x, const T* gy, T* gx, int64_t len, acc_t M, acc_t A, acc_t B, acc_t E,
                             acc_t F, bool use_silu, const float* gz_in) {
  using io = VecIO<T>;
  using V = typename io::V;
  constexpr int64_t W = io::W;
  const V vm(M), va(A), vb(B), ve(E), vf(F);
  auto step = [&](int64_t i, int64_t n) {
    V d = load_n(x + i, n) - vm;
    V gz;
    if constexpr (std::is_same_v<acc_t, float>) {
      if (gz_in) gz = n == W ? V::loadu(gz_in + i) : V::loadu(gz_in + i, n);
    }
    if (!gz_in) {
      V g = load_n(gy + i, n);
      gz = use_silu ? silu_backward(at::vec::fmadd(d, va, vb), g) : g;
    }
    V out = at::vec::fmadd(va, gz, at::vec::fmadd(ve, d, vf));
    store_n(gx + i, out, n);
  };
  int64_t i = 0;
  for (; i + W <= len; i += W) step(i, W);
  if (i < len) step(i, len - i);
}

// Finishes group (n, g) of the backward from per-channel sums S1, S2, S3 (already merged over chunks): writes
// E, F of its channels and the per-(n, c) gradients of temb and scale_shift.
template <typename acc_t>
inline void finish_group_backward(int64_t n, int64_t g, const Shape& sh, const Params<acc_t>& P,
                                  const acc_t* S1, const acc_t* S2, const acc_t* S3, BwdCoefs<acc_t>& cf,
                                  acc_t* g_temb, acc_t* g_ss) {
  acc_t m1 = 0, m2 = 0;
  for (int64_t c = g * sh.cpg; c < (g + 1) * sh.cpg; ++c) {
    const int64_t nc = n * sh.C + c;
    const acc_t wk = P.w(c) * P.k(n, c);
    m1 += wk * S1[nc];
    m2 += wk * S2[nc];
  }
  const acc_t inv_d = acc_t(1) / static_cast<acc_t>(sh.cpg * sh.S);
  m1 *= inv_d;
  m2 *= inv_d;
  for (int64_t c = g * sh.cpg; c < (g + 1) * sh.cpg; ++c) {
    const int64_t nc = n * sh.C + c;
    const acc_t r = cf.r[nc], wk = P.w(c) * P.k(n, c);
    cf.E[nc] = -r * r * m2;
    cf.F[nc] = static_cast<acc_t>(-static_cast<double>(r * m1) - static_cast<double>(cf.E[nc]) * cf.lo[nc]);
    if (g_temb) g_temb[nc] = r * (wk * S1[nc] - static_cast<acc_t>(sh.S) * m1 - m2 * S3[nc]);
    if (g_ss) {
      g_ss[n * 2 * sh.C + c] = P.w(c) * S2[nc] + P.b(c) * S1[nc];
      g_ss[n * 2 * sh.C + sh.C + c] = S1[nc];
    }
  }
}

template <typename T>
void backward_channels_first(const T* x, const T* gy, T* gx, const Shape& sh,
                             const Params<acc_type<T>>& P, BwdCoefs<acc_type<T>>& cf,
                             acc_type<T>* S1, acc_type<T>* S2, acc_type<T>* S3,
                             acc_type<T>* g_temb, acc_type<T>* g_ss, bool use_silu) {
  using acc_t = acc_type<T>;
  const int64_t S = sh.S, K = (S + kChunk - 1) / kChunk;
  const int64_t units = sh.N * sh.C * K, slabs = sh.N * sh.G, units_per_slab = sh.cpg * K;
  std::vector<acc_t> p1(units), p2(units), p3(units);
  auto reduce = [&](int64_t u, float* gz_out) {
    const int64_t nc = u / K, k = u % K, off = nc * S + k * kChunk, len = std::min(kChunk, S - k * kChunk);
    reduce_chunk<T, acc_t>(x + off, gy + off, len, cf.M[nc], cf.A[nc], cf.B[nc], cf.r[nc], cf.X0[nc], use_silu,
                           gz_out, p1[u], p2[u], p3[u]);
  };
  auto finish = [&](int64_t ng) {
    const int64_t n = ng / sh.G, g = ng % sh.G;
    for (int64_t c = g * sh.cpg; c < (g + 1) * sh.cpg; ++c) {
      const int64_t nc = n * sh.C + c;
      acc_t s1 = 0, s2 = 0, s3 = 0;
      for (int64_t u = nc * K; u < (nc + 1) * K; ++u) {
        s1 += p1[u];
        s2 += p2[u];
        s3 += p3[u];
      }
      S1[nc] = s1;
      S2[nc] = s2;
      S3[nc] = s3;
    }
    finish_group_backward<acc_t>(n, g, sh, P, S1, S2, S3, cf, g_temb, g_ss);
  };
  auto grad_input = [&](int64_t u, const float* gz_in) {
    const int64_t nc = u / K, k = u % K, off = nc * S + k * kChunk, len = std::min(kChunk, S - k * kChunk);
    grad_input_chunk<T, acc_t>(x + off, gy + off, gx + off, len, cf.M[nc], cf.A[nc], cf.B[nc], cf.E[nc],
                               cf.F[nc], use_silu, gz_in);
  };
  if (slabs >= 2 * at::get_num_threads()) {
    // Whole slabs per task; with SiLU, gz of the slab is kept in a float buffer so the exp runs once per element.
    const int64_t slab_elems = sh.cpg * S;
    const bool scratch = use_silu && std::is_same_v<acc_t, float> && slab_elems <= kMaxScratch;
    at::parallel_for(0, slabs, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> gz(scratch ? slab_elems : 0);
      for (int64_t ng = begin; ng < end; ++ng) {
        const int64_t first = ng * units_per_slab;
        auto at_unit = [&](int64_t u) {  // offset of unit u inside the slab's gz buffer
          return ((u / K) % sh.cpg) * S + (u % K) * kChunk;
        };
        for (int64_t u = first; u < first + units_per_slab; ++u) reduce(u, scratch ? gz.data() + at_unit(u) : nullptr);
        finish(ng);
        for (int64_t u = first; u < first + units_per_slab; ++u)
          grad_input(u, scratch ? gz.data() + at_unit(u) : nullptr);
      }
    });
  } else {
    at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) reduce(u, nullptr);
    });
    for (int64_t ng = 0; ng < slabs; ++ng) finish(ng);
    at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) grad_input(u, nullptr);
    });
  }
}

template <typename T>
void backward_channels_last(const T* x, const T* gy, T* gx, const Shape& sh,
                            const Params<acc_type<T>>& P, BwdCoefs<acc_type<T>>& cf,
                            acc_type<T>* S1, acc_type<T>* S2, acc_type<T>* S3,
                            acc_type<T>* g_temb, acc_type<T>* g_ss, bool use_silu) {
  using acc_t = acc_type<T>;
  using io = VecIO<T>;
  using V = typename io::V;
  constexpr int64_t W = io::W;
  const int64_t C = sh.C, S = sh.S;
  const int64_t rows = std::max<int64_t>(1, kRowBlockElems / C), K = (S + rows - 1) / rows;
  std::vector<acc_t> p1(sh.N * K * C), p2(sh.N * K * C), p3(sh.N * K * C);
  at::parallel_for(0, sh.N * K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nk = begin; nk < end; ++nk) {
      const int64_t n = nk / K, s0 = (nk % K) * rows, s1 = std::min(S, s0 + rows);
      acc_t* q1 = p1.data() + nk * C;
      acc_t* q2 = p2.data() + nk * C;
      acc_t* q3 = p3.data() + nk * C;
      std::fill(q1, q1 + C, acc_t(0));
      std::fill(q2, q2 + C, acc_t(0));
      std::fill(q3, q3 + C, acc_t(0));
      const acc_t *M = cf.M.data() + n * C, *A = cf.A.data() + n * C, *B = cf.B.data() + n * C,
                  *r = cf.r.data() + n * C, *X0 = cf.X0.data() + n * C;
      for (int64_t s = s0; s < s1; ++s) {
        const T* xr = x + (n * S + s) * C;
        const T* gr = gy + (n * S + s) * C;
        for (int64_t c = 0; c < C; c += W) {
          const int64_t m = std::min(W, C - c);
          V d = m == W ? io::load(xr + c) - V::loadu(M + c) : V::set(V(0), io::load(xr + c, m) - V::loadu(M + c, m), m);
          V g = load_n(gr + c, m);
          V gz = use_silu ? silu_backward(at::vec::fmadd(d, V::loadu(A + c, m), V::loadu(B + c, m)), g) : g;
          V xhat = at::vec::fmadd(d, V::loadu(r + c, m), V::loadu(X0 + c, m));  // tail lanes: 0
          (V::loadu(q1 + c, m) + gz).store(q1 + c, m);
          at::vec::fmadd(gz, xhat, V::loadu(q2 + c, m)).store(q2 + c, m);
          (V::loadu(q3 + c, m) + xhat).store(q3 + c, m);
        }
      }
    }
  });
  at::parallel_for(0, sh.N * sh.G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t n = ng / sh.G, g = ng % sh.G;
      for (int64_t c = g * sh.cpg; c < (g + 1) * sh.cpg; ++c) {
        acc_t s1 = 0, s2 = 0, s3 = 0;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t idx = (n * K + k) * C + c;
          s1 += p1[idx];
          s2 += p2[idx];
          s3 += p3[idx];
        }
        S1[n * C + c] = s1;
        S2[n * C + c] = s2;
        S3[n * C + c] = s3;
      }
      finish_group_backward<acc_t>(n, g, sh, P, S1, S2, S3, cf, g_temb, g_ss);
    }
  });
  at::parallel_for(0, sh.N * S, std::max<int64_t>(1, 4096 / C), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / S;
      const acc_t *M = cf.M.data() + n * C, *A = cf.A.data() + n * C, *B = cf.B.data() + n * C,
                  *E = cf.E.data() + n * C, *F = cf.F.data() + n * C;
      const T* xr = x + row * C;
      const T* gr = gy + row * C;
      T* out = gx + row * C;
      for (int64_t c = 0; c < C; c += W) {
        const int64_t m = std::min(W, C - c);
        V d = load_n(xr + c, m) - V::loadu(M + c, m);
        V g = load_n(gr + c, m);
        V gz = use_silu ? silu_backward(at::vec::fmadd(d, V::loadu(A + c, m), V::loadu(B + c, m)), g) : g;
        V o = at::vec::fmadd(V::loadu(A + c, m), gz, at::vec::fmadd(V::loadu(E + c, m), d, V::loadu(F + c, m)));
        store_n(out + c, o, m);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_silu_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& x_in, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& temb,
    const std::optional<at::Tensor>& scale_shift, const at::Tensor& mean, const at::Tensor& rstd, int64_t num_groups,
    std::optional<c10::string_view> activation) {
  const bool use_silu = gn::applies_silu(activation);
  gn::check_backward(grad_out, x_in, weight, bias, temb, scale_shift, mean, rstd, num_groups, c10::DeviceType::CPU);
  const int64_t N = x_in.size(0), C = x_in.size(1), G = num_groups;
  const auto acc = accumulation_type(x_in.scalar_type());

  const bool cl = is_channels_last(x_in);
  const at::Tensor x = (cl || x_in.is_contiguous()) ? x_in : x_in.contiguous();
  // grad_out in x's layout (torch.compile may hand a channels_last tangent for a contiguous x, or the reverse).
  const at::Tensor gy = cl ? grad_out.movedim(1, -1).contiguous() : grad_out.contiguous();
  const Shape sh{N, C, x.numel() / (N * C), G, C / G};
  const at::Tensor w = as_acc(weight, acc), b = as_acc(bias, acc), t = as_acc(temb, acc),
                   ss = as_acc(scale_shift, acc);
  const at::Tensor mean_c = mean.contiguous(), rstd_c = rstd.contiguous();
  at::Tensor gx = output_like(x);
  at::Tensor sums = at::empty({3, N, C}, x.options().dtype(acc));
  at::Tensor g_temb = t.defined() ? at::empty({N, C}, x.options().dtype(acc)) : at::Tensor();
  at::Tensor g_ss = ss.defined() ? at::empty({N, 2 * C}, x.options().dtype(acc)) : at::Tensor();
  at::Tensor g_w = w.defined() ? at::empty({C}, x.options().dtype(acc)) : at::Tensor();
  at::Tensor g_b = b.defined() ? at::empty({C}, x.options().dtype(acc)) : at::Tensor();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_norm_silu_bwd_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const Params<acc_t> P{ptr_or_null<acc_t>(w), ptr_or_null<acc_t>(b), ptr_or_null<acc_t>(t),
                          ptr_or_null<acc_t>(ss), C};
    const double* mp = mean_c.const_data_ptr<double>();
    const acc_t* rp = rstd_c.const_data_ptr<acc_t>();
    BwdCoefs<acc_t> cf(N * C);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        const int64_t nc = n * C + c, ng = n * G + c / sh.cpg;
        const acc_t k = P.k(n, c);
        split_centre<acc_t>(mp[ng] - static_cast<double>(P.t(n, c)), cf.M[nc], cf.lo[nc]);
        cf.r[nc] = rp[ng];
        cf.X0[nc] = static_cast<acc_t>(-cf.lo[nc] * rp[ng]);
        cf.A[nc] = rp[ng] * P.w(c) * k;
        cf.B[nc] = static_cast<acc_t>(static_cast<double>(P.b(c) * k + P.sh(n, c)) - cf.lo[nc] * cf.A[nc]);
      }
    }
    acc_t* S1 = sums.data_ptr<acc_t>();
    acc_t* S2 = S1 + N * C;
    acc_t* S3 = S2 + N * C;
    acc_t* gt = g_temb.defined() ? g_temb.data_ptr<acc_t>() : nullptr;
    acc_t* gss = g_ss.defined() ? g_ss.data_ptr<acc_t>() : nullptr;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = gy.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    if (cl) {
      backward_channels_last<scalar_t>(xp, gp, gxp, sh, P, cf, S1, S2, S3, gt, gss, use_silu);
    } else {
      backward_channels_first<scalar_t>(xp, gp, gxp, sh, P, cf, S1, S2, S3, gt, gss, use_silu);
    }
    // Parameter gradients: per-(n, c) partials summed over n in order, one writer per channel.
    if (g_w.defined() || g_b.defined()) {
      acc_t* gwp = g_w.defined() ? g_w.data_ptr<acc_t>() : nullptr;
      acc_t* gbp = g_b.defined() ? g_b.data_ptr<acc_t>() : nullptr;
      for (int64_t c = 0; c < C; ++c) {
        acc_t sw = 0, sb = 0;
        for (int64_t n = 0; n < N; ++n) {
          const acc_t k = P.k(n, c);
          sw += k * S2[n * C + c];
          sb += k * S1[n * C + c];
        }
        if (gwp) gwp[c] = sw;
        if (gbp) gbp[c] = sb;
      }
    }
  });
  const auto dt = x.scalar_type();
  auto cast = [&](const at::Tensor& g) { return g.defined() ? g.to(dt) : at::empty({0}, x.options()); };
  return {gx, cast(g_w), cast(g_b), cast(g_temb), cast(g_ss)};
}

}  // namespace

TORCH_LIBRARY_IMPL(gencore, CPU, m) {
  m.impl("group_norm_silu_fwd", &group_norm_silu_fwd_cpu);
  m.impl("group_norm_silu_bwd", &group_norm_silu_bwd_cpu);
}

}  // namespace gencore
