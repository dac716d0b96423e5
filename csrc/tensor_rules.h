// The two rules every op's CPU kernels and CUDA bindings share, written once: the accumulation dtype and the layout
// a kernel reads. The Python twin (and the full statement of both rules) is gencore/_rules.py.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

namespace gencore {

// float64 for float64 inputs, float32 for float16, bfloat16 and float32: the dtype every backend does its math in.
inline at::ScalarType accumulation_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The same rule for a kernel's element type (at::Half, at::BFloat16, float, double).
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Channels (dim 1) innermost and the rest dense (channels_last or its 3-D/5-D analogue): read in place as (N, S, C),
// written in that layout. A single sample whose batch stride is below its size (an attention output reshaped from
// (1, HW, C)) is not: torch's suggest_memory_format calls it contiguous and so does this rule (_rules.py says why).
inline bool is_channels_last(const at::Tensor& t) {
  return t.dim() >= 3 && !t.is_contiguous() && t.movedim(1, -1).is_contiguous() &&
         (t.size(0) != 1 || t.stride(0) >= t.numel());
}

// t in the layout the kernels read: channels innermost if channels_last, else contiguous (no copy when already so).
inline at::Tensor to_layout(const at::Tensor& t, bool channels_last) {
  if (channels_last) return is_channels_last(t) ? t : t.movedim(1, -1).contiguous().movedim(-1, 1);
  return t.contiguous();
}

// Each sample one dense block of numel / N elements at offset n * numel / N, its dims in any order (contiguous,
// channels_last, ...): the gradient-penalty kernels read such tensors in place as (N, D).
inline bool per_sample_dense(const at::Tensor& t) {
  if (t.numel() == 0 || t.is_contiguous()) return true;
  const int64_t n = t.size(0);
  if (n > 1 && t.stride(0) != t.numel() / n) return false;
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size) of the non-batch dims longer than 1
  for (int64_t i = 1; i < t.dim(); ++i) {
    if (t.size(i) != 1) dims.emplace_back(t.stride(i), t.size(i));
  }
  std::sort(dims.begin(), dims.end());
  int64_t expected = 1;
  for (const auto& [stride, size] : dims) {
    if (stride != expected) return false;
    expected *= size;
  }
  return true;
}

}  // namespace gencore
