// Loads and stores of a tensor's elements as vectors of their accumulation type, the one set every CPU kernel uses
// (group_norm_silu.cpp, sampler_step.cpp, gradient_penalty.cpp): float and double load into their own Vectorized;
// float16 and bfloat16 load W = Vectorized<float>::size() elements at a time (a half-width load, converted), so that
// every element type walks its data in steps of one accumulation vector.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

#include "scalar_kind.h"

namespace gencore {

template <typename T>
struct VecIO {
  using V = at::vec::Vectorized<acc_type<T>>;
  static constexpr int64_t W = V::size();
  static V load(const T* p) { return V::loadu(p); }
  static V load(const T* p, int64_t n) { return V::loadu(p, n); }  // the first n < W elements, the rest 0
  static void store(T* p, const V& v) { v.store(p); }
  static void store(T* p, const V& v, int64_t n) { v.store(p, static_cast<int>(n)); }  // the first n < W lanes
};

template <typename T>
struct ReducedVecIO {
  using V = at::vec::Vectorized<float>;
  static constexpr int64_t W = V::size();
  static V load(const T* p) {
    V out;
    at::vec::load_to_float(p, out);
    return out;
  }
  static V load(const T* p, int64_t n) {
    return std::get<0>(at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p, n)));
  }
  static void store(T* p, const V& v) { at::vec::convert_from_float<T>(v, v).store(p, static_cast<int>(W)); }
  static void store(T* p, const V& v, int64_t n) {
    at::vec::convert_from_float<T>(v, v).store(p, static_cast<int>(n));
  }
};
template <>
struct VecIO<at::Half> : ReducedVecIO<at::Half> {};
template <>
struct VecIO<at::BFloat16> : ReducedVecIO<at::BFloat16> {};

// n <= W elements: one full vector when n == W (the body of a loop stepping by W), else the first n (its tail).
template <typename T>
inline typename VecIO<T>::V load_n(const T* p, int64_t n) {
  return n == VecIO<T>::W ? VecIO<T>::load(p) : VecIO<T>::load(p, n);
}

template <typename T>
inline void store_n(T* p, const typename VecIO<T>::V& v, int64_t n) {
  if (n == VecIO<T>::W) {
    VecIO<T>::store(p, v);
  } else {
    VecIO<T>::store(p, v, n);
  }
}

// The sum of a vector's lanes in lane order (a fixed order: deterministic).
template <typename V>
inline typename V::value_type lane_sum(const V& v) {
  typename V::value_type buf[V::size()];
  v.store(buf);
  typename V::value_type s = 0;
  for (int64_t i = 0; i < V::size(); ++i) s += buf[i];
  return s;
}

}  // namespace gencore
