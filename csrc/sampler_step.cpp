// CPU kernels of the fused diffusion ops (schemas in gencore.cpp, math in gencore/reference/sampler_step.py):
//
//   sampler_step                one pass: guidance, x0, clip/threshold, eps, posterior mean, noise.
//   diffusion_training_inputs   one pass: noisy = c0 x0 + c1 noise (+ velocity = c0 noise - c1 x0).
//   philox_uint32               the raw Philox words (tests: bit-identical noise across backends).
//
// Work is split into chunks of kChunk elements of one sample, so every chunk has a single row of coefficients
// (gathered once from the table by that sample's timestep) and, for Philox noise, a whole number of 4-element
// counter groups. Each chunk is read and written once with at::vec::Vectorized; math in float32 (float64 for
// float64). One allocation per output.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "philox.h"
#include "sampler_step.h"
#include "vec_io.h"

namespace gencore {
namespace {

using at::vec::Vectorized;
using namespace sampler_table;

constexpr int64_t kChunk = 2048;              // elements per work item: a multiple of 4 and of every vector width
constexpr int64_t kGrainElements = 1 << 15;   // below ~32K elements a second thread costs more than it saves


// timesteps (checked by ss::check_table) as a contiguous tensor, each value a row of coefs: on the CPU the range is
// checked here, naming the offending sample.
at::Tensor checked_timesteps(const at::Tensor& timesteps, const at::Tensor& coefs) {
  auto ts = timesteps.contiguous();
  const int64_t* t = ts.const_data_ptr<int64_t>();
  const int64_t rows = coefs.size(0);
  for (int64_t n = 0; n < ts.numel(); ++n) {
    TORCH_CHECK_INDEX(t[n] >= 0 && t[n] < rows, "timesteps[", n, "] = ", t[n], " is outside [0, ", rows,
                      ") (the rows of coefs)");
  }
  return ts;
}

// Runs body(n, start, len) over chunks of kChunk elements of each sample, in parallel.
template <typename F>
void for_each_chunk(int64_t num_samples, int64_t numel_per_sample, const F& body) {
  const int64_t chunks = (numel_per_sample + kChunk - 1) / kChunk;
  const int64_t per_item = std::min(kChunk, numel_per_sample);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / per_item);
  at::parallel_for(0, num_samples * chunks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / chunks;
      const int64_t start = (item % chunks) * kChunk;
      body(n, start, std::min(kChunk, numel_per_sample - start));
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Philox normals for elements [start, start + len) of sample n, into z (compute type).
//
// Contiguous layout: start is a multiple of 4 (kChunk is), so the chunk is a run of whole counter groups: draw the
// words, then Box-Muller with vector log1p/sqrt/cos/sin over the (radius, angle) pairs, interleaving the cosine and
// sine halves back into element order. Channels-last layout: memory position p holds logical element
// e = (p % C) * S + p / C, so each element draws its own group and takes its lane (a slower path, exact the same).

template <typename acc_t>
void philox_normals_contiguous(acc_t* z, uint64_t seed, uint64_t offset, int64_t n, int64_t start, int64_t len) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kPairs = kChunk / 2;
  alignas(64) acc_t radius[kPairs];
  alignas(64) acc_t angle[kPairs];
  const int64_t groups = (len + 3) / 4;
  for (int64_t g = 0; g < groups; ++g) {
    const auto w = philox::draw(seed, offset, static_cast<uint64_t>(n), static_cast<uint64_t>(start / 4 + g));
    radius[2 * g] = philox::radius_uniform<acc_t>(w.w[0]);
    angle[2 * g] = philox::angle_uniform<acc_t>(w.w[1]);
    radius[2 * g + 1] = philox::radius_uniform<acc_t>(w.w[2]);
    angle[2 * g + 1] = philox::angle_uniform<acc_t>(w.w[3]);
  }
  const int64_t pairs = 2 * groups;
  const Vec minus_two(acc_t(-2)), two_pi(acc_t(2 * M_PI));
  int64_t k = 0;
  for (; k + Vec::size() <= pairs; k += Vec::size()) {
    const Vec r = (minus_two * (-Vec::loadu(radius + k)).log1p()).sqrt();
    const Vec a = two_pi * Vec::loadu(angle + k);
    const auto zz = at::vec::interleave2(r * a.cos(), r * a.sin());
    const int64_t e = 2 * k;  // element index of pair k within the chunk
    if (e + 2 * Vec::size() <= len) {
      std::get<0>(zz).store(z + e);
      std::get<1>(zz).store(z + e + Vec::size());
    } else {
      alignas(64) acc_t tmp[2 * Vec::size()];
      std::get<0>(zz).store(tmp);
      std::get<1>(zz).store(tmp + Vec::size());
      std::copy(tmp, tmp + (len - e), z + e);
    }
  }
  for (; k < pairs; ++k) {
    const acc_t r = std::sqrt(acc_t(-2) * std::log1p(-radius[k]));
    const acc_t a = acc_t(2 * M_PI) * angle[k];
    if (2 * k < len) z[2 * k] = r * std::cos(a);
    if (2 * k + 1 < len) z[2 * k + 1] = r * std::sin(a);
  }
}

template <typename acc_t>
inline acc_t philox_normal_at(uint64_t seed, uint64_t offset, int64_t n, int64_t e) {
  const auto w = philox::draw(seed, offset, static_cast<uint64_t>(n), static_cast<uint64_t>(e / 4));
  const int lane = static_cast<int>(e % 4);
  const int pair = lane / 2;
  const acc_t r = std::sqrt(acc_t(-2) * std::log1p(-philox::radius_uniform<acc_t>(w.w[2 * pair])));
  const acc_t a = acc_t(2 * M_PI) * philox::angle_uniform<acc_t>(w.w[2 * pair + 1]);
  return lane % 2 == 0 ? r * std::cos(a) : r * std::sin(a);
}

template <typename acc_t>
void philox_normals_channels_last(acc_t* z, uint64_t seed, uint64_t offset, int64_t n, int64_t start, int64_t len,
                                  int64_t channels, int64_t spatial) {
  for (int64_t i = 0; i < len; ++i) {
    const int64_t p = start + i;
    z[i] = philox_normal_at<acc_t>(seed, offset, n, (p % channels) * spatial + p / channels);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// sampler_step
//
// The per-element loop is instantiated once per mode (guidance or not, clip / threshold / neither, noise tensor /
// Philox / none), so each instantiation is a straight run of loads, fused multiply-adds and stores with no tests
// inside. Its pointers arrive by value in a plain struct: read through the lambda's captured references instead,
// the compiler has to reload every pointer after each store (a partial vector store goes through memcpy, which may
// alias anything), and that reloading, not memory, was what bound the loop (perf, (16, 4, 64, 64)).

enum class Clip { kNone, kRange, kThreshold };
enum class Noise { kNone, kTensor, kPhilox };

template <typename scalar_t>
struct StepSpan {
  const scalar_t* sample;
  const scalar_t* model_output;
  const scalar_t* uncond;  // classifier-free guidance only
  const scalar_t* noise;   // Noise::kTensor only
  const scalar_t* history1;  // kHistory only: a multistep solver's earlier x0 ...
  const scalar_t* history2;  // ... (history1 again, with a zero coefficient, when only one is given)
  scalar_t* prev;
  scalar_t* x0;
};

// Per-sample constants of the step, broadcast once per chunk. eps = c2 x + c3 m + c4 x0 is only ever used as
// c7 eps, so prev = c5 x0 + c6 x + c7 eps folds to prev = fold_x0 x0 + fold_x x + fold_m m (coefficients combined
// in double): 7 vector operations per vector instead of 10.
template <typename acc_t>
struct StepCoefs {
  using Vec = Vectorized<acc_t>;
  Vec x0_from_sample, x0_from_model, noise_std, fold_x0, fold_x, fold_m, guidance, lo, hi, from_h1, from_h2;

  StepCoefs(const acc_t* c, acc_t guidance_scale, acc_t bound, bool has_history2)
      : x0_from_sample(c[kX0FromSample]),
        x0_from_model(c[kX0FromModel]),
        noise_std(c[kNoiseStd]),
        fold_x0(static_cast<acc_t>(double(c[kPrevFromX0]) + double(c[kPrevFromEps]) * double(c[kEpsFromX0]))),
        fold_x(static_cast<acc_t>(double(c[kPrevFromSample]) + double(c[kPrevFromEps]) * double(c[kEpsFromSample]))),
        fold_m(static_cast<acc_t>(double(c[kPrevFromEps]) * double(c[kEpsFromModel]))),
        guidance(guidance_scale),
        lo(-bound),
        hi(bound),
        from_h1(c[kPrevFromHistory1]),
        from_h2(has_history2 ? c[kPrevFromHistory2] : acc_t(0)) {}
};

// Elements [0, len) of one chunk; z holds the chunk's Philox normals (Noise::kPhilox).
template <typename scalar_t, bool kGuided, Clip kClip, Noise kNoise, bool kHistory, typename acc_t = acc_type<scalar_t>>
void sampler_step_span(const StepSpan<scalar_t> p, const StepCoefs<acc_t>& c, const acc_t* z, int64_t len) {
  using Vec = Vectorized<acc_t>;
  const auto step = [&](int64_t i, int64_t count) {
    const Vec x = load_n(p.sample + i, count);
    Vec m = load_n(p.model_output + i, count);
    if constexpr (kGuided) {
      const Vec u = load_n(p.uncond + i, count);
      m = u + c.guidance * (m - u);
    }
    Vec x0 = at::vec::fmadd(c.x0_from_sample, x, c.x0_from_model * m);
    if constexpr (kClip == Clip::kThreshold) {
      x0 = at::vec::clamp(x0, c.lo, c.hi) / c.hi;
    } else if constexpr (kClip == Clip::kRange) {
      x0 = at::vec::clamp(x0, c.lo, c.hi);
    }
    Vec out = at::vec::fmadd(c.fold_x0, x0, at::vec::fmadd(c.fold_x, x, c.fold_m * m));
    if constexpr (kHistory) {
      out = at::vec::fmadd(c.from_h1, load_n(p.history1 + i, count), out);
      out = at::vec::fmadd(c.from_h2, load_n(p.history2 + i, count), out);
    }
    if constexpr (kNoise == Noise::kTensor) {
      out = at::vec::fmadd(c.noise_std, load_n(p.noise + i, count), out);
    } else if constexpr (kNoise == Noise::kPhilox) {
      out = at::vec::fmadd(c.noise_std, Vec::loadu(z + i, count), out);
    }
    store_n(p.prev + i, out, count);
    store_n(p.x0 + i, x0, count);
  };
  int64_t i = 0;
  for (; i + Vec::size() <= len; i += Vec::size()) step(i, Vec::size());
  if (i < len) step(i, len - i);
}

template <typename scalar_t, bool kGuided, Clip kClip, Noise kNoise, bool kHistory>
void sampler_step_loop(const at::Tensor& model_output, const at::Tensor& sample, const at::Tensor& timesteps,
                       const at::Tensor& coefs, const c10::optional<at::Tensor>& uncond, double guidance_scale,
                       c10::optional<double> clip_range, const c10::optional<at::Tensor>& threshold,
                       const c10::optional<at::Tensor>& noise, c10::optional<int64_t> philox_seed,
                       int64_t philox_offset, const c10::optional<at::Tensor>& history1,
                       const c10::optional<at::Tensor>& history2, bool channels_last, at::Tensor& prev,
                       at::Tensor& x0_out) {
  using acc_t = acc_type<scalar_t>;
  const int64_t num_samples = sample.size(0);
  const int64_t numel = sample.numel() / num_samples;
  const int64_t channels = sample.dim() >= 2 ? sample.size(1) : 1;
  const int64_t spatial = channels > 0 ? numel / channels : 0;
  const StepSpan<scalar_t> whole{sample.const_data_ptr<scalar_t>(), model_output.const_data_ptr<scalar_t>(),
                                 kGuided ? uncond->const_data_ptr<scalar_t>() : nullptr,
                                 kNoise == Noise::kTensor ? noise->const_data_ptr<scalar_t>() : nullptr,
                                 kHistory ? history1->const_data_ptr<scalar_t>() : nullptr,
                                 kHistory ? (history2.has_value() ? *history2 : *history1).const_data_ptr<scalar_t>()
                                          : nullptr,
                                 prev.mutable_data_ptr<scalar_t>(), x0_out.mutable_data_ptr<scalar_t>()};
  const bool has_history2 = history2.has_value();
  const acc_t* th_ptr = kClip == Clip::kThreshold ? threshold->const_data_ptr<acc_t>() : nullptr;
  const int64_t* t_ptr = timesteps.const_data_ptr<int64_t>();
  const acc_t* coef_ptr = coefs.const_data_ptr<acc_t>();
  const uint64_t seed = kNoise == Noise::kPhilox ? static_cast<uint64_t>(*philox_seed) : 0;
  const uint64_t offset = static_cast<uint64_t>(philox_offset);
  const acc_t clip_value = kClip == Clip::kRange ? static_cast<acc_t>(*clip_range) : acc_t(0);
  const acc_t g_scale = static_cast<acc_t>(guidance_scale);

  for_each_chunk(num_samples, numel, [&](int64_t n, int64_t start, int64_t len) {
    const StepCoefs<acc_t> c(coef_ptr + t_ptr[n] * ss::kNumCoefs, g_scale,
                             kClip == Clip::kThreshold ? th_ptr[n] : clip_value, has_history2);
    alignas(64) acc_t z_buf[kNoise == Noise::kPhilox ? kChunk : 1];
    if constexpr (kNoise == Noise::kPhilox) {
      if (channels_last) {
        philox_normals_channels_last(z_buf, seed, offset, n, start, len, channels, spatial);
      } else {
        philox_normals_contiguous(z_buf, seed, offset, n, start, len);
      }
    }
    const int64_t base = n * numel + start;
    const StepSpan<scalar_t> span{whole.sample + base, whole.model_output + base,
                                  kGuided ? whole.uncond + base : nullptr,
                                  kNoise == Noise::kTensor ? whole.noise + base : nullptr,
                                  kHistory ? whole.history1 + base : nullptr,
                                  kHistory ? whole.history2 + base : nullptr, whole.prev + base, whole.x0 + base};
    sampler_step_span<scalar_t, kGuided, kClip, kNoise, kHistory>(span, c, z_buf, len);
  });
}

// Picks the loop instantiation of this call's mode.
template <typename scalar_t, typename... Args>
void sampler_step_kernel(bool guided, Clip clip, Noise noise, bool history, Args&&... args) {
  const auto with_history = [&](auto guided_c, auto clip_c, auto noise_c) {
    constexpr bool g = decltype(guided_c)::value;
    constexpr Clip c = decltype(clip_c)::value;
    constexpr Noise z = decltype(noise_c)::value;
    if (history) return sampler_step_loop<scalar_t, g, c, z, true>(args...);
    return sampler_step_loop<scalar_t, g, c, z, false>(args...);
  };
  const auto with_noise = [&](auto guided_c, auto clip_c) {
    switch (noise) {
      case Noise::kNone: return with_history(guided_c, clip_c, std::integral_constant<Noise, Noise::kNone>{});
      case Noise::kTensor: return with_history(guided_c, clip_c, std::integral_constant<Noise, Noise::kTensor>{});
      case Noise::kPhilox: return with_history(guided_c, clip_c, std::integral_constant<Noise, Noise::kPhilox>{});
    }
  };
  const auto with_clip = [&](auto guided_c) {
    switch (clip) {
      case Clip::kNone: return with_noise(guided_c, std::integral_constant<Clip, Clip::kNone>{});
      case Clip::kRange: return with_noise(guided_c, std::integral_constant<Clip, Clip::kRange>{});
      case Clip::kThreshold: return with_noise(guided_c, std::integral_constant<Clip, Clip::kThreshold>{});
    }
  };
  if (guided) {
    with_clip(std::true_type{});
  } else {
    with_clip(std::false_type{});
  }
}

std::tuple<at::Tensor, at::Tensor> sampler_step_cpu(
    const at::Tensor& model_output_in, const at::Tensor& sample_in, const at::Tensor& timesteps,
    const at::Tensor& coefs_in, const c10::optional<at::Tensor>& uncond_in, double guidance_scale,
    c10::optional<double> clip_range, const c10::optional<at::Tensor>& threshold_in,
    const c10::optional<at::Tensor>& noise_in, c10::optional<int64_t> philox_seed, int64_t philox_offset,
    const c10::optional<at::Tensor>& history1_in, const c10::optional<at::Tensor>& history2_in) {
  ss::check_step(model_output_in, sample_in, timesteps, coefs_in, ss::kNumCoefs, uncond_in, clip_range, threshold_in,
                 noise_in, philox_seed, philox_offset, history1_in, history2_in, c10::DeviceType::CPU);
  const auto ts = checked_timesteps(timesteps, coefs_in);
  const bool channels_last = is_channels_last(sample_in);
  const auto sample = to_layout(sample_in, channels_last);
  const auto model_output = to_layout(model_output_in, channels_last);
  const auto coefs = coefs_in.contiguous();
  c10::optional<at::Tensor> uncond, noise, threshold, history1, history2;
  if (uncond_in.has_value()) uncond = to_layout(*uncond_in, channels_last);
  if (history1_in.has_value()) history1 = to_layout(*history1_in, channels_last);
  if (history2_in.has_value()) history2 = to_layout(*history2_in, channels_last);
  if (noise_in.has_value()) noise = to_layout(*noise_in, channels_last);
  if (threshold_in.has_value()) threshold = threshold_in->to(coefs.scalar_type()).contiguous();
  auto prev = output_like(sample);
  auto x0 = output_like(sample);
  const Clip clip = threshold.has_value() ? Clip::kThreshold : clip_range.has_value() ? Clip::kRange : Clip::kNone;
  const Noise noise_kind = noise.has_value() ? Noise::kTensor : philox_seed.has_value() ? Noise::kPhilox : Noise::kNone;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sample.scalar_type(), "sampler_step_cpu", [&] {
    sampler_step_kernel<scalar_t>(uncond.has_value(), clip, noise_kind, history1.has_value(), model_output, sample,
                                  ts, coefs, uncond, guidance_scale, clip_range, threshold, noise, philox_seed,
                                  philox_offset, history1, history2, channels_last, prev, x0);
  });
  return {prev, x0};
}

// ---------------------------------------------------------------------------------------------------------------
// diffusion_training_inputs

template <typename scalar_t>
void training_inputs_kernel(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps,
                            const at::Tensor& coefs, at::Tensor& noisy, at::Tensor* velocity) {
  using acc_t = acc_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  const int64_t num_samples = x0.size(0);
  const int64_t numel = x0.numel() / num_samples;
  const scalar_t* x_ptr = x0.const_data_ptr<scalar_t>();
  const scalar_t* z_ptr = noise.const_data_ptr<scalar_t>();
  const int64_t* t_ptr = timesteps.const_data_ptr<int64_t>();
  const acc_t* coef_ptr = coefs.const_data_ptr<acc_t>();
  scalar_t* noisy_ptr = noisy.mutable_data_ptr<scalar_t>();
  scalar_t* v_ptr = velocity ? velocity->mutable_data_ptr<scalar_t>() : nullptr;
  for_each_chunk(num_samples, numel, [&](int64_t n, int64_t start, int64_t len) {
    const acc_t* c = coef_ptr + t_ptr[n] * 2;
    const Vec c0(c[0]), c1(c[1]);
    const int64_t base = n * numel + start;
    for (int64_t i = 0; i < len; i += Vec::size()) {
      const int64_t count = std::min<int64_t>(Vec::size(), len - i);
      const Vec x = load_n(x_ptr + base + i, count);
      const Vec z = load_n(z_ptr + base + i, count);
      store_n(noisy_ptr + base + i, c0 * x + c1 * z, count);
      if (v_ptr) store_n(v_ptr + base + i, c0 * z - c1 * x, count);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> training_inputs_cpu(const at::Tensor& x0_in, const at::Tensor& noise_in,
                                                       const at::Tensor& timesteps, const at::Tensor& coefs_in,
                                                       bool velocity) {
  ss::check_table(x0_in, timesteps, coefs_in, 2, "x0", c10::DeviceType::CPU);
  ss::check_like(noise_in, x0_in, "noise", "x0");
  const auto ts = checked_timesteps(timesteps, coefs_in);
  const bool channels_last = is_channels_last(x0_in);
  const auto x0 = to_layout(x0_in, channels_last);
  const auto noise = to_layout(noise_in, channels_last);
  const auto coefs = coefs_in.contiguous();
  auto noisy = output_like(x0);
  auto v = velocity ? output_like(x0) : at::empty({0}, x0.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "diffusion_training_inputs_cpu", [&] {
    training_inputs_kernel<scalar_t>(x0, noise, ts, coefs, noisy, velocity ? &v : nullptr);
  });
  return {noisy, v};
}

// ---------------------------------------------------------------------------------------------------------------
// philox_uint32: (N, numel per sample) int64 holding each element's word.

at::Tensor philox_uint32_cpu(const at::Tensor& sample, int64_t seed, int64_t offset) {
  TORCH_CHECK(sample.dim() >= 1, "sample must have a batch dimension (N, *)");
  const int64_t num_samples = sample.size(0);
  const int64_t numel = c10::multiply_integers(sample.sizes().slice(1));  // also for an empty batch
  ss::check_philox(seed, offset, num_samples, numel);
  auto out = at::empty({num_samples, numel}, sample.options().dtype(at::kLong));
  int64_t* o = out.mutable_data_ptr<int64_t>();
  const int64_t groups = (numel + 3) / 4;
  at::parallel_for(0, num_samples * groups, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / groups, g = item % groups;
      const auto w = philox::draw(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                                  static_cast<uint64_t>(n), static_cast<uint64_t>(g));
      for (int lane = 0; lane < 4 && 4 * g + lane < numel; ++lane) o[n * numel + 4 * g + lane] = w.w[lane];
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gencore, CPU, m) {
  m.impl("sampler_step", &sampler_step_cpu);
  m.impl("diffusion_training_inputs", &training_inputs_cpu);
  m.impl("philox_uint32", &philox_uint32_cpu);
}

}  // namespace gencore
