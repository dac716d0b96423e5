// The rules every op's CPU kernels and CUDA bindings share, written once: the element types, the accumulation dtype,
// the layout a kernel reads and the one its outputs are written in. The Python twin (and the full statement of the
// rules) is gencore/_rules.py; the type-level rules, which the CUDA kernels share, are in scalar_kind.h.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "cpu_output_pool.h"
#include "scalar_kind.h"

namespace gencore {

// float64 for float64 inputs, float32 for float16, bfloat16 and float32: the dtype every backend does its math in
// (acc_type in scalar_kind.h is the same rule for a kernel's element type).
inline at::ScalarType accumulation_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The ScalarKind of a tensor of dtype t (the CUDA launchers' element type); `name` names that tensor in the error.
inline ScalarKind scalar_kind(at::ScalarType t, const char* name) {
  switch (t) {
    case at::kHalf: return ScalarKind::Float16;
    case at::kBFloat16: return ScalarKind::BFloat16;
    case at::kFloat: return ScalarKind::Float32;
    case at::kDouble: return ScalarKind::Float64;
    default: break;
  }
  TORCH_CHECK(false, name, " must be float16, bfloat16, float32 or float64, got ", t);
}

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

// An uninitialised output for a kernel input t already in its kernel's layout (contiguous, channels-last or per-sample
// dense: each is non-overlapping and dense): t's sizes, strides and dtype, so the output is written in t's layout. On
// the CPU from the output cache (cpu_output_pool.h: a fresh multi-MB buffer costs page faults comparable to the whole
// op, and it starts at t's page offset); on CUDA from the caching allocator.
inline at::Tensor output_like(const at::Tensor& t) {
  TORCH_INTERNAL_ASSERT(t.is_non_overlapping_and_dense(), "output_like wants a kernel input in its kernel's layout");
  return t.is_cpu() ? pooled_empty_like(t) : at::empty_like(t);
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
