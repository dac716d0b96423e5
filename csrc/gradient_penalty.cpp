// CPU kernels of the WGAN-GP gradient penalty (math in gencore/reference/gradient_penalty.py):
//   gradient_penalty_interpolate        x_hat = alpha[n] * real + (1 - alpha[n]) * fake, one pass, any rank.
//   gradient_norm_penalty_fwd   per-sample ||grad_scale * grad[n]|| over all non-batch dims and the penalty, one pass.
//   gradient_norm_penalty_bwd   d penalty / d grad = coef[n] * grad, one pass.
//
// Every tensor is read as (N, D) with each sample one dense block of D elements (contiguous, channels_last, ...:
// see per_sample_dense); anything else is copied to contiguous first. Half types compute in float32, float64 in
// float64. Determinism: sums of squares are taken over fixed chunks of kChunk elements (the chunking depends on the
// shape only, never on the thread count) and merged in a fixed order; no atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "gradient_penalty.h"
#include "vec_io.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace gencore {
namespace {

// Elements per partial sum of squares: large enough to amortise a task, small enough that batch 1 still splits
// across threads.
constexpr int64_t kChunk = 16384;
// Elements per parallel task of the elementwise passes.
constexpr int64_t kGrain = 32768;
// Elements per parallel task of the norm pass, which only reads: one core streams an L2-resident MNIST batch
// (64 x 784 floats, 200 KB) in ~2 us, less than handing half of it to a second thread costs (measured 6.3 us on
// one thread vs 7.0 us on two for the whole op call on the 2-core CI machine).
constexpr int64_t kReduceGrain = 65536;

// ---------------------------------------------------------------------------------------------------------------
// Vector helpers, over VecIO (vec_io.h): every element type in steps of one accumulation vector of W elements, the
// last len % W elements one by one.

template <typename scalar_t>
inline acc_type<scalar_t> sum_of_squares(const scalar_t* x, int64_t len) {
  using acc = acc_type<scalar_t>;
  using io = VecIO<scalar_t>;
  using V = typename io::V;
  constexpr int64_t W = io::W;
  V s0(acc(0)), s1(acc(0)), s2(acc(0)), s3(acc(0));
  int64_t i = 0;
  for (; i + 4 * W <= len; i += 4 * W) {
    const V a = io::load(x + i), b = io::load(x + i + W), c = io::load(x + i + 2 * W), d = io::load(x + i + 3 * W);
    s0 = at::vec::fmadd(a, a, s0);
    s1 = at::vec::fmadd(b, b, s1);
    s2 = at::vec::fmadd(c, c, s2);
    s3 = at::vec::fmadd(d, d, s3);
  }
  acc total = lane_sum((s0 + s1) + (s2 + s3));
  for (; i < len; ++i) {
    const acc v = static_cast<acc>(x[i]);
    total += v * v;
  }
  return total;
}

// out[i] = a * p[i] + b * q[i] over len elements (q may be null: out = a * p).
template <typename scalar_t>
inline void axpby(acc_type<scalar_t> a, const scalar_t* p, acc_type<scalar_t> b, const scalar_t* q, scalar_t* out,
                  int64_t len) {
  using acc = acc_type<scalar_t>;
  using io = VecIO<scalar_t>;
  using V = typename io::V;
  constexpr int64_t W = io::W;
  const V va(a), vb(b);
  int64_t i = 0;
  for (; i + W <= len; i += W) {
    V o = va * io::load(p + i);
    if (q != nullptr) o = at::vec::fmadd(vb, io::load(q + i), o);
    io::store(out + i, o);
  }
  for (; i < len; ++i) {
    acc o = a * static_cast<acc>(p[i]);
    if (q != nullptr) o += b * static_cast<acc>(q[i]);
    out[i] = static_cast<scalar_t>(o);
  }
}

// The value of a one-element CPU tensor, read in place (item() would dispatch, and .to(kDouble) allocate, on every
// backward).
double scalar_value(const at::Tensor& t) {
  double value = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "scalar_value", [&] {
    value = static_cast<double>(*t.const_data_ptr<scalar_t>());
  });
  return value;
}

// Runs body(n, begin, end) over every [begin, end) piece of the (N, D) index space, in parallel, pieces never
// crossing a sample boundary.
template <typename F>
void for_each_sample_piece(int64_t n_samples, int64_t d, const F& body) {
  at::parallel_for(0, n_samples * d, kGrain, [&](int64_t begin, int64_t end) {
    while (begin < end) {
      const int64_t n = begin / d;
      const int64_t stop = std::min(end, (n + 1) * d);
      body(n, begin, stop);
      begin = stop;
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------

at::Tensor gradient_penalty_interpolate_cpu(const at::Tensor& real_in, const at::Tensor& fake_in, const at::Tensor& alpha_in) {
  gp::check_interpolate(real_in, fake_in, alpha_in, c10::DeviceType::CPU);
  const int64_t n = real_in.size(0);
  // real and fake must share one flat layout to be walked together.
  at::Tensor real = gp::as_flat(real_in), fake = gp::as_flat(fake_in);
  if (real.strides() != fake.strides()) {
    real = real.contiguous();
    fake = fake.contiguous();
  }
  const at::Tensor alpha = alpha_in.contiguous();
  at::Tensor out = output_like(real);  // the layout of real, stride for stride
  const int64_t d = real.numel() / n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real.scalar_type(), "gradient_penalty_interpolate_cpu", [&] {
    using acc = acc_type<scalar_t>;
    const scalar_t* r = real.const_data_ptr<scalar_t>();
    const scalar_t* f = fake.const_data_ptr<scalar_t>();
    const scalar_t* a = alpha.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for_each_sample_piece(n, d, [&](int64_t s, int64_t begin, int64_t end) {
      const acc w = static_cast<acc>(a[s]);
      axpby<scalar_t>(w, r + begin, acc(1) - w, f + begin, o + begin, end - begin);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gradient_norm_penalty_fwd_cpu(const at::Tensor& grad_in, double center, bool one_sided,
                                                           double grad_scale) {
  gp::check_batch(grad_in, "grad", c10::DeviceType::CPU);
  const at::Tensor grad = gp::as_flat(grad_in);
  const int64_t n = grad.size(0);
  const int64_t d = grad.numel() / n;
  const auto stats = accumulation_type(grad.scalar_type());
  at::Tensor norms = at::empty({n}, grad.options().dtype(stats));
  at::Tensor penalty = at::empty({}, grad.options().dtype(stats));
  const int64_t chunks = std::max<int64_t>(1, (d + kChunk - 1) / kChunk);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gradient_norm_penalty_fwd_cpu", [&] {
    using acc = acc_type<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    std::vector<acc> partial(n * chunks);
    // Tasks of at least ~kReduceGrain elements: MNIST-sized samples (784 elements) one per task would cost more in
    // thread hand-offs than in arithmetic.
    const int64_t grain = std::max<int64_t>(1, kReduceGrain / std::min(kChunk, d));
    at::parallel_for(0, n * chunks, grain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t s = b / chunks, c = b % chunks;
        const int64_t start = c * kChunk;
        partial[b] = sum_of_squares<scalar_t>(g + s * d + start, std::min(kChunk, d - start));
      }
    });
    acc* nrm = norms.mutable_data_ptr<acc>();
    double total = 0;  // N terms at most: float64 costs nothing here and keeps the mean exact to the last bit
    for (int64_t s = 0; s < n; ++s) {
      acc sq = 0;
      for (int64_t c = 0; c < chunks; ++c) sq += partial[s * chunks + c];
      nrm[s] = static_cast<acc>(std::abs(grad_scale)) * std::sqrt(sq);
      double dev = static_cast<double>(nrm[s]) - center;
      if (one_sided && dev < 0) dev = 0;
      total += dev * dev;
    }
    *penalty.mutable_data_ptr<acc>() = static_cast<acc>(total / static_cast<double>(n));
  });
  return {penalty, norms};
}

at::Tensor gradient_norm_penalty_bwd_cpu(const at::Tensor& grad_penalty, const at::Tensor& grad_in,
                                   const at::Tensor& norms_in, double center, bool one_sided, double grad_scale) {
  gp::check_backward(grad_penalty, grad_in, norms_in, c10::DeviceType::CPU);
  const at::Tensor grad = gp::as_flat(grad_in);
  const int64_t n = grad.size(0);
  const int64_t d = grad.numel() / n;
  const at::Tensor norms = norms_in.contiguous();
  const double gout = scalar_value(grad_penalty);
  at::Tensor out = output_like(grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gradient_norm_penalty_bwd_cpu", [&] {
    using acc = acc_type<scalar_t>;
    const acc* nrm = norms.const_data_ptr<acc>();
    // coef[n] = gout * (2/N) * d[n] * s^2 / norm[n]; 0 where norm[n] == 0 (then grad[n] == 0 too, the subgradient
    // torch.linalg.vector_norm's backward picks) or where one_sided clips d[n] to 0. A NaN norm stays NaN (the test
    // is norm == 0, not norm > 0): every element of that sample depends on it, as in the reference.
    std::vector<acc> coef(n);
    for (int64_t s = 0; s < n; ++s) {
      const double norm = nrm[s];
      double dev = norm - center;
      if (one_sided && dev < 0) dev = 0;
      coef[s] = norm == 0 ? acc(0) : static_cast<acc>(gout * 2.0 / n * dev * grad_scale * grad_scale / norm);
    }
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for_each_sample_piece(n, d, [&](int64_t s, int64_t begin, int64_t end) {
      axpby<scalar_t>(coef[s], g + begin, acc(0), nullptr, o + begin, end - begin);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gencore, CPU, m) {
  m.impl("gradient_penalty_interpolate", &gradient_penalty_interpolate_cpu);
  m.impl("gradient_norm_penalty_fwd", &gradient_norm_penalty_fwd_cpu);
  m.impl("gradient_norm_penalty_bwd", &gradient_norm_penalty_bwd_cpu);
}

}  // namespace gencore
