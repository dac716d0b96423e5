// CUDA kernels of the fused GroupNorm + SiLU + time-embedding op, and their plain-C++ launchers.
//
// No PyTorch header: see group_norm_silu_kernels.h. The math, and the names of its symbols here (A, B, d, r, xhat,
// gz, S1, S2, S3, m1, m2, E, F), is docs/math.md. d = h - mean is formed per element: folding t - mean into B
// cancels catastrophically when the variance is tiny next to the mean, e.g. a group of one element, where d must be
// exactly 0.
//
// Work decomposition. Each sample n is a row-major matrix of R rows x L columns:
//   channels-first: R = C rows (one per channel), L = S        -> a channel is a row
//   channels-last : R = S rows (one per position), L = C        -> a channel is a column
// Threads load V consecutive elements of a row at once (16 bytes) when L % V == 0 and every pointer is aligned; else
// V = 1. A vector never straddles rows.
//
// Both reductions (forward statistics, backward sums) are per (n, c) over s, split into `splits` chunks of s so that
// batch 1 still gives enough blocks to fill the GPU: every (n, c, split) slot of the workspace has exactly one writer.
// A per-(n, g) "finalize" block then merges a group's cpg * splits slots in a fixed order (Chan's parallel-variance
// merge for the statistics, plain sums for the gradients). Elementwise passes read per-(n, c) coefficients.
//
// Determinism: every reduction below runs in an order fixed by the shape alone (thread-sequential loops, then
// shuffle-down trees, then warp results combined by one thread in warp order). No atomics anywhere.

#include "group_norm_silu_kernels.h"

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "common.cuh"

namespace gencore {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarps = 8;
static_assert(kWarp * kWarps == kThreads, "the reductions below assume kThreads = 8 warps of 32");
constexpr int64_t kMaxSplits = 1024;      // bounds the per-channel merge loop of the finalize kernels
constexpr int64_t kMaxGridX = 1 << 30;    // below CUDA's 2^31 - 1; kernels loop over the rest
constexpr int64_t kMaxGridY = 65535;

// An optional per-channel value: p[i], or `absent` where the tensor was None.
template <class T>
__device__ __forceinline__ acc_type<T> opt(const T* p, int64_t i, acc_type<T> absent) {
  return p != nullptr ? to_acc(p[i]) : absent;
}

__device__ __forceinline__ float exp_acc(float z) { return expf(z); }
__device__ __forceinline__ double exp_acc(double z) { return exp(z); }
__device__ __forceinline__ float rsqrt_acc(float v) { return rsqrtf(v); }
__device__ __forceinline__ double rsqrt_acc(double v) { return rsqrt(v); }

// sigmoid without overflow: e = exp(-|z|) <= 1, so neither branch divides by infinity.
template <class A>
__device__ __forceinline__ A sigmoid(A z) {
  const A e = exp_acc(-fabs(z));
  const A inv = A(1) / (A(1) + e);
  return z >= A(0) ? inv : e * inv;
}

// act(z) and act'(z) for act = silu (z * s) or the identity.
template <class A>
__device__ __forceinline__ A activation(A z, bool silu) {
  return silu ? z * sigmoid(z) : z;
}
template <class A>
__device__ __forceinline__ A activation_grad(A z, bool silu) {
  if (!silu) return A(1);
  const A s = sigmoid(z);
  return s * (A(1) + z * (A(1) - s));
}

// Per-(n, c) coefficients in the workspace, index i = n*C + c. The group constants (mean, r, E, F) are repeated per
// channel so that every elementwise pass indexes all of them the same way.
template <class A>
struct ChannelCoefs {
  A* t;  // temb[n, c] (0 without temb)
  A* m;  // the group's mean
  A* a;  // A = r*w*k
  A* b;  // B = b*k + sh
  A* r;  // the group's rstd                         (backward only)
  A* e;  // E = -r*r*m2, F = -r*m1 (see the top)      (backward only)
  A* f;

};

// d = (x + t) - mean: h exactly as the statistics saw it, then centred (exact when h is near the mean).
template <class A>
__device__ __forceinline__ A centred(A x, A t, A mean) {
  return (x + t) - mean;
}

// The coefficients of a vector's V lanes from a per-(n, c) array, nc = n*C + c of lane 0. Channels-last: the lanes
// are V consecutive channels, read with one vector load (the workspace arrays are 256-byte aligned and nc is a
// multiple of V whenever V > 1). Channels-first: one channel, one load, broadcast.
template <int V, bool CL, class A>
__device__ __forceinline__ Pack<A, V> lanes_of(const A* p, int64_t nc) {
  Pack<A, V> out;
  if constexpr (CL) {
    out = *reinterpret_cast<const Pack<A, V>*>(p + nc);
  } else {
    const A v = p[nc];
#pragma unroll
    for (int k = 0; k < V; ++k) out.v[k] = v;
  }
  return out;
}

// Where the per-(n, c) parameters come from. Shared by the forward finalize and the backward prepare kernels so both
// directions use bit-identical coefficients.
template <class T>
struct ChannelParams {
  using A = acc_type<T>;
  const T* weight;
  const T* bias;
  const T* temb;
  const T* scale_shift;
  int64_t C;

  // w, b, t, k = 1 + scale, sh = shift for sample n, channel c.
  __device__ __forceinline__ void load(int64_t n, int64_t c, A& w, A& b, A& t, A& k, A& sh) const {
    w = opt(weight, c, A(1));
    b = opt(bias, c, A(0));
    t = opt(temb, n * C + c, A(0));
    k = A(1) + opt(scale_shift, n * 2 * C + c, A(0));
    sh = opt(scale_shift, n * 2 * C + C + c, A(0));
  }

  // t, mean, A, B of channel i = n*C + c, for a group with statistics (mean, r).
  __device__ __forceinline__ void store_forward(const ChannelCoefs<A>& cf, int64_t n, int64_t c, A mean, A r) const {
    A w, b, t, k, sh;
    load(n, c, w, b, t, k, sh);
    const int64_t i = n * C + c;
    cf.t[i] = t;
    cf.m[i] = mean;
    cf.a[i] = r * w * k;
    cf.b[i] = b * k + sh;
  }
};

// ---------------------------------------------------------------------------------------------------------------------
// Reduction states. A reduction "op" has a per-thread state of V lanes (one per element of a loaded vector), a
// single-channel State, a fixed-order merge, and a warp shuffle.

template <class A>
struct Welford {
  A count, mean, m2;
};

// Chan et al.'s merge of two (count, mean, M2) summaries: exact in real arithmetic, never E[x^2] - E[x]^2.
template <class A>
__device__ __forceinline__ Welford<A> merge(const Welford<A>& a, const Welford<A>& b) {
  if (b.count == A(0)) return a;
  if (a.count == A(0)) return b;
  const A count = a.count + b.count;
  const A delta = b.mean - a.mean;
  const A fb = b.count / count;
  return {count, a.mean + delta * fb, a.m2 + b.m2 + delta * delta * a.count * fb};
}

template <class A>
__device__ __forceinline__ Welford<A> shfl_down(const Welford<A>& s, int offset) {
  return {__shfl_down_sync(0xffffffffu, s.count, offset), __shfl_down_sync(0xffffffffu, s.mean, offset),
          __shfl_down_sync(0xffffffffu, s.m2, offset)};
}

template <class A>
struct Sums3 {
  A s1, s2, s3;
};

template <class A>
__device__ __forceinline__ Sums3<A> merge(const Sums3<A>& a, const Sums3<A>& b) {
  return {a.s1 + b.s1, a.s2 + b.s2, a.s3 + b.s3};
}

template <class A>
__device__ __forceinline__ Sums3<A> shfl_down(const Sums3<A>& s, int offset) {
  return {__shfl_down_sync(0xffffffffu, s.s1, offset), __shfl_down_sync(0xffffffffu, s.s2, offset),
          __shfl_down_sync(0xffffffffu, s.s3, offset)};
}

// Lane k of a thread's vector sees channel nc (channels-first: a vector lies in one channel) or nc + k
// (channels-last: a vector spans V consecutive channels). nc = n*C + c of lane 0.
template <bool CL>
__device__ __forceinline__ int64_t lane_channel(int64_t nc, int k) {
  return CL ? nc + k : nc;
}

// Forward statistics of h = x + t[n, c]: Welford per lane. All lanes of a thread see the same number of elements,
// so one reciprocal serves the V updates of a step.
template <class T, int V, bool CL>
struct FwdStatsOp {
  using A = acc_type<T>;
  using State = Welford<A>;
  struct Lanes {
    A count;
    A mean[V];
    A m2[V];
  };

  const T* x;
  const T* temb;
  A* part_mean;  // (N*C, splits)
  A* part_m2;

  __device__ __forceinline__ void init(Lanes& st) const {
    st.count = A(0);
#pragma unroll
    for (int k = 0; k < V; ++k) st.mean[k] = st.m2[k] = A(0);
  }
  __device__ __forceinline__ void push(Lanes& st, int64_t off, int64_t nc) const {
    const Pack<T, V> xv = *reinterpret_cast<const Pack<T, V>*>(x + off);
    st.count += A(1);
    const A inv = A(1) / st.count;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const A h = to_acc(xv.v[k]) + (temb != nullptr ? to_acc(temb[lane_channel<CL>(nc, k)]) : A(0));
      const A delta = h - st.mean[k];
      st.mean[k] += delta * inv;
      st.m2[k] += delta * (h - st.mean[k]);
    }
  }
  __device__ __forceinline__ State lane(const Lanes& st, int k) const { return {st.count, st.mean[k], st.m2[k]}; }
  __device__ __forceinline__ void store(int64_t slot, const State& s) const {
    part_mean[slot] = s.mean;
    part_m2[slot] = s.m2;
  }
};

// Backward sums S1 = sum gz, S2 = sum gz*xhat, S3 = sum xhat, from the per-(n, c) coefficients (z = d*A + B,
// xhat = d*r, d = x + t - mean).
template <class T, int V, bool CL>
struct BwdSumsOp {
  using A = acc_type<T>;
  using State = Sums3<A>;
  struct Lanes {
    A s1[V];
    A s2[V];
    A s3[V];
  };

  const T* x;
  const T* grad_out;
  ChannelCoefs<A> coefs;
  bool silu;
  A* part_s1;  // (N*C, splits)
  A* part_s2;
  A* part_s3;

  __device__ __forceinline__ void init(Lanes& st) const {
#pragma unroll
    for (int k = 0; k < V; ++k) st.s1[k] = st.s2[k] = st.s3[k] = A(0);
  }
  __device__ __forceinline__ void push(Lanes& st, int64_t off, int64_t nc) const {
    const Pack<T, V> xv = *reinterpret_cast<const Pack<T, V>*>(x + off);
    const Pack<T, V> gv = *reinterpret_cast<const Pack<T, V>*>(grad_out + off);
    const Pack<A, V> t = lanes_of<V, CL>(coefs.t, nc), m = lanes_of<V, CL>(coefs.m, nc);
    const Pack<A, V> a = lanes_of<V, CL>(coefs.a, nc), b = lanes_of<V, CL>(coefs.b, nc);
    const Pack<A, V> r = lanes_of<V, CL>(coefs.r, nc);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const A d = centred(to_acc(xv.v[k]), t.v[k], m.v[k]);
      const A gz = to_acc(gv.v[k]) * activation_grad(d * a.v[k] + b.v[k], silu);
      const A xhat = d * r.v[k];
      st.s1[k] += gz;
      st.s2[k] += gz * xhat;
      st.s3[k] += xhat;
    }
  }
  __device__ __forceinline__ State lane(const Lanes& st, int k) const { return {st.s1[k], st.s2[k], st.s3[k]}; }
  __device__ __forceinline__ void store(int64_t slot, const State& s) const {
    part_s1[slot] = s.s1;
    part_s2[slot] = s.s2;
    part_s3[slot] = s.s3;
  }
};

// How a per-(n, c) reduction over s is cut into blocks. s in [split*chunk, min(S, (split+1)*chunk)).
struct ReducePlan {
  int64_t N, C, S;
  int64_t splits, chunk;  // chunk is a multiple of V in channels-first layout (a vector stays inside one chunk)
  int64_t tiles;          // per sample: channels-first: ceil(C / kWarps) rows of 8; channels-last: ceil(C/V / 32)
};

__host__ __device__ __forceinline__ int64_t split_count(const ReducePlan& p, int64_t split) {
  const int64_t begin = split * p.chunk;
  const int64_t end = begin + p.chunk < p.S ? begin + p.chunk : p.S;
  return end - begin;
}

// Channels-first reduction: one warp per channel row, lanes along s. Block = 8 rows of one sample, one split.
template <class Op, int V>
__global__ void __launch_bounds__(kThreads) channel_partials_cf_kernel(Op op, ReducePlan p) {
  using State = typename Op::State;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t tasks = p.N * p.tiles * p.splits;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t split = task % p.splits;
    const int64_t tile = (task / p.splits) % p.tiles;
    const int64_t n = task / (p.splits * p.tiles);
    const int64_t c = tile * kWarps + warp;
    if (c >= p.C) continue;  // warp-uniform: no block-level synchronisation in this kernel
    const int64_t nc = n * p.C + c;
    const int64_t s_begin = split * p.chunk;
    const int64_t s_end = s_begin + split_count(p, split);
    typename Op::Lanes st;
    op.init(st);
    for (int64_t s = s_begin + int64_t(lane) * V; s < s_end; s += int64_t(kWarp) * V) op.push(st, nc * p.S + s, nc);
    State acc = op.lane(st, 0);
#pragma unroll
    for (int k = 1; k < V; ++k) acc = merge(acc, op.lane(st, k));
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) acc = merge(acc, shfl_down(acc, offset));
    if (lane == 0) op.store(nc * p.splits + split, acc);
  }
}

// Channels-last reduction: lane l of every warp owns the V channels of column vector tile*32 + l; the 8 warps take
// rows s_begin + warp, + 8, ...; the 8 partial states per channel are merged in warp order through shared memory.
template <class Op, int V>
__global__ void __launch_bounds__(kThreads) channel_partials_cl_kernel(Op op, ReducePlan p) {
  using State = typename Op::State;
  __shared__ State shared[kWarps][kWarp * V];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t col_vectors = p.C / V;
  const int64_t tasks = p.N * p.tiles * p.splits;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {  // block-uniform loop
    const int64_t split = task % p.splits;
    const int64_t tile = (task / p.splits) % p.tiles;
    const int64_t n = task / (p.splits * p.tiles);
    const int64_t cv = tile * kWarp + lane;
    const bool active = cv < col_vectors;
    const int64_t nc = n * p.C + cv * V;
    const int64_t s_begin = split * p.chunk;
    const int64_t s_end = s_begin + split_count(p, split);
    typename Op::Lanes st;
    op.init(st);
    if (active) {
      for (int64_t s = s_begin + warp; s < s_end; s += kWarps) op.push(st, (n * p.S + s) * p.C + cv * V, nc);
    }
#pragma unroll
    for (int k = 0; k < V; ++k) shared[warp][lane * V + k] = op.lane(st, k);
    __syncthreads();
    if (warp == 0 && active) {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        State acc = shared[0][lane * V + k];
        for (int w = 1; w < kWarps; ++w) acc = merge(acc, shared[w][lane * V + k]);
        op.store((nc + k) * p.splits + split, acc);
      }
    }
    __syncthreads();  // shared is rewritten by the next task
  }
}

// Block-wide reduction in a fixed order: shuffle-down tree per warp, then thread 0 merges the 8 warp results in warp
// order. The result is returned to every thread. `shared` holds kWarps + 1 states.
template <class State>
__device__ __forceinline__ State block_merge(State v, State* shared) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = merge(v, shfl_down(v, offset));
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    State acc = shared[0];
    for (int w = 1; w < kWarps; ++w) acc = merge(acc, shared[w]);
    shared[kWarps] = acc;
  }
  __syncthreads();
  const State out = shared[kWarps];
  __syncthreads();  // shared may be reused right after
  return out;
}

// ---------------------------------------------------------------------------------------------------------------------
// Forward

struct GroupPlan {
  int64_t N, C, S, G, cpg;
};

// One block per (n, g): merge the group's cpg * splits Welford slots (thread t takes a contiguous run of them, in
// order; then block_merge), write mean and rstd, and the per-channel coefficients of y = act(d*A + B).
template <class T>
__global__ void __launch_bounds__(kThreads)
    fwd_finalize_kernel(ReducePlan rp, GroupPlan gp, const acc_type<T>* part_mean, const acc_type<T>* part_m2,
                        ChannelParams<T> params, acc_type<T> eps, double* out_mean, acc_type<T>* out_rstd,
                        ChannelCoefs<acc_type<T>> coefs) {
  using A = acc_type<T>;
  __shared__ Welford<A> shared[kWarps + 1];
  const int64_t slots = gp.cpg * rp.splits;
  const int64_t per_thread = (slots + kThreads - 1) / kThreads;
  for (int64_t ng = blockIdx.x; ng < gp.N * gp.G; ng += gridDim.x) {
    const int64_t n = ng / gp.G, g = ng % gp.G;
    const int64_t first = (n * gp.C + g * gp.cpg) * rp.splits;  // the group's slots are contiguous
    Welford<A> acc{A(0), A(0), A(0)};
    const int64_t q_end = min(slots, (int64_t(threadIdx.x) + 1) * per_thread);
    for (int64_t q = int64_t(threadIdx.x) * per_thread; q < q_end; ++q) {
      const Welford<A> part{A(split_count(rp, q % rp.splits)), part_mean[first + q], part_m2[first + q]};
      acc = merge(acc, part);
    }
    const Welford<A> total = block_merge(acc, shared);
    const A group_size = A(gp.cpg) * A(gp.S);
    const A mean = total.mean;
    const A var = fmax(total.m2 / group_size, A(0));
    const A r = rsqrt_acc(var + eps);
    if (threadIdx.x == 0) {
      out_mean[ng] = double(mean);  // the saved mean is double on every backend (the CPU centre needs it)
      out_rstd[ng] = r;
    }
    for (int64_t j = threadIdx.x; j < gp.cpg; j += kThreads) params.store_forward(coefs, n, g * gp.cpg + j, mean, r);
  }
}

// Elementwise passes over the (R x L) matrix of each sample: blockIdx.y walks samples, the x-threads walk the sample's
// R * L/V vectors with a grid stride. (row, col) advance by a fixed step without a division per vector.
struct ApplyPlan {
  int64_t N, C, R, L;  // L = columns in elements; L % V == 0
};

template <int V>
struct RowColWalker {
  int64_t row, col, row_step, col_step, cols;  // col counts vectors
  __device__ __forceinline__ RowColWalker(int64_t start, int64_t step, int64_t cols_)
      : row(start / cols_), col(start % cols_), row_step(step / cols_), col_step(step % cols_), cols(cols_) {}
  __device__ __forceinline__ void advance() {
    col += col_step;
    row += row_step;
    if (col >= cols) {
      col -= cols;
      ++row;
    }
  }
};

template <class T, int V, bool CL>
__global__ void __launch_bounds__(kThreads)
    fwd_apply_kernel(ApplyPlan p, const T* x, T* y, ChannelCoefs<acc_type<T>> coefs, bool silu) {
  using A = acc_type<T>;
  const int64_t cols = p.L / V;
  const int64_t start = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t step = int64_t(gridDim.x) * kThreads;
  if (start >= p.R * cols) return;
  for (int64_t n = blockIdx.y; n < p.N; n += gridDim.y) {
    for (RowColWalker<V> it(start, step, cols); it.row < p.R; it.advance()) {
      const int64_t off = (n * p.R + it.row) * p.L + it.col * V;
      const int64_t nc = n * p.C + (CL ? it.col * V : it.row);
      const Pack<T, V> xv = *reinterpret_cast<const Pack<T, V>*>(x + off);
      const Pack<A, V> t = lanes_of<V, CL>(coefs.t, nc), m = lanes_of<V, CL>(coefs.m, nc);
      const Pack<A, V> a = lanes_of<V, CL>(coefs.a, nc), b = lanes_of<V, CL>(coefs.b, nc);
      Pack<T, V> yv;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        yv.v[k] = from_acc<T>(activation(centred(to_acc(xv.v[k]), t.v[k], m.v[k]) * a.v[k] + b.v[k], silu));
      }
      *reinterpret_cast<Pack<T, V>*>(y + off) = yv;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Backward

// Per (n, c): the forward's coefficients (from the saved mean and rstd) and r.
template <class T>
__global__ void __launch_bounds__(kThreads)
    bwd_prepare_kernel(GroupPlan gp, ChannelParams<T> params, const double* mean_in, const acc_type<T>* rstd_in,
                       ChannelCoefs<acc_type<T>> coefs) {
  const int64_t total = gp.N * gp.C;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total; i += int64_t(gridDim.x) * kThreads) {
    const int64_t n = i / gp.C, c = i % gp.C;
    const int64_t ng = n * gp.G + c / gp.cpg;
    params.store_forward(coefs, n, c, acc_type<T>(mean_in[ng]), rstd_in[ng]);
    coefs.r[i] = rstd_in[ng];
  }
}

// One block per (n, g): merge each channel's split sums in split order; write g_scale_shift and the per-(n, c)
// parameter-gradient partials; reduce m1, m2 over the group's channels (fixed order); write g_temb and the E, F
// coefficients of gx = A*gz + E*d + F.
template <class T>
__global__ void __launch_bounds__(kThreads)
    bwd_finalize_kernel(ReducePlan rp, GroupPlan gp, ChannelParams<T> params, const acc_type<T>* rstd_in,
                        const acc_type<T>* part_s1, const acc_type<T>* part_s2, const acc_type<T>* part_s3,
                        acc_type<T>* sum_s1, acc_type<T>* sum_s3, acc_type<T>* gw_nc, acc_type<T>* gb_nc,
                        ChannelCoefs<acc_type<T>> coefs,
                        T* grad_temb, T* grad_scale_shift) {
  using A = acc_type<T>;
  __shared__ Sums3<A> shared[kWarps + 1];
  for (int64_t ng = blockIdx.x; ng < gp.N * gp.G; ng += gridDim.x) {
    const int64_t n = ng / gp.G, g = ng % gp.G;
    const A r = rstd_in[ng];
    Sums3<A> wk{A(0), A(0), A(0)};  // s1: sum w*k*S1, s2: sum w*k*S2 over this thread's channels
    for (int64_t j = threadIdx.x; j < gp.cpg; j += kThreads) {
      const int64_t c = g * gp.cpg + j, i = n * gp.C + c;
      A s1 = A(0), s2 = A(0), s3 = A(0);
      for (int64_t split = 0; split < rp.splits; ++split) {
        s1 += part_s1[i * rp.splits + split];
        s2 += part_s2[i * rp.splits + split];
        s3 += part_s3[i * rp.splits + split];
      }
      A w, b, t, k, sh;
      params.load(n, c, w, b, t, k, sh);
      if (grad_scale_shift != nullptr) {
        grad_scale_shift[n * 2 * gp.C + c] = from_acc<T>(w * s2 + b * s1);
        grad_scale_shift[n * 2 * gp.C + gp.C + c] = from_acc<T>(s1);
      }
      gw_nc[i] = k * s2;
      gb_nc[i] = k * s1;
      sum_s1[i] = s1;
      sum_s3[i] = s3;
      wk.s1 += w * k * s1;
      wk.s2 += w * k * s2;
    }
    const Sums3<A> total = block_merge(wk, shared);
    const A group_size = A(gp.cpg) * A(gp.S);
    const A m1 = total.s1 / group_size, m2 = total.s2 / group_size;
    const A e = -r * r * m2;
    for (int64_t j = threadIdx.x; j < gp.cpg; j += kThreads) {  // same channels as the loop above: own writes
      const int64_t c = g * gp.cpg + j, i = n * gp.C + c;
      A w, b, t, k, sh;
      params.load(n, c, w, b, t, k, sh);
      coefs.e[i] = e;
      coefs.f[i] = -r * m1;
      if (grad_temb != nullptr) grad_temb[i] = from_acc<T>(r * (w * k * sum_s1[i] - A(gp.S) * m1 - m2 * sum_s3[i]));
    }
  }
}

template <class T, int V, bool CL>
__global__ void __launch_bounds__(kThreads)
    bwd_apply_kernel(ApplyPlan p, const T* x, const T* grad_out, T* grad_x, ChannelCoefs<acc_type<T>> coefs,
                     bool silu) {
  using A = acc_type<T>;
  const int64_t cols = p.L / V;
  const int64_t start = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t step = int64_t(gridDim.x) * kThreads;
  if (start >= p.R * cols) return;
  for (int64_t n = blockIdx.y; n < p.N; n += gridDim.y) {
    for (RowColWalker<V> it(start, step, cols); it.row < p.R; it.advance()) {
      const int64_t off = (n * p.R + it.row) * p.L + it.col * V;
      const int64_t nc = n * p.C + (CL ? it.col * V : it.row);
      const Pack<T, V> xv = *reinterpret_cast<const Pack<T, V>*>(x + off);
      const Pack<T, V> gv = *reinterpret_cast<const Pack<T, V>*>(grad_out + off);
      const Pack<A, V> t = lanes_of<V, CL>(coefs.t, nc), m = lanes_of<V, CL>(coefs.m, nc);
      const Pack<A, V> a = lanes_of<V, CL>(coefs.a, nc), b = lanes_of<V, CL>(coefs.b, nc);
      const Pack<A, V> e = lanes_of<V, CL>(coefs.e, nc), f = lanes_of<V, CL>(coefs.f, nc);
      Pack<T, V> out;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const A d = centred(to_acc(xv.v[k]), t.v[k], m.v[k]);
        const A gz = to_acc(gv.v[k]) * activation_grad(d * a.v[k] + b.v[k], silu);
        out.v[k] = from_acc<T>(a.v[k] * gz + e.v[k] * d + f.v[k]);
      }
      *reinterpret_cast<Pack<T, V>*>(grad_x + off) = out;
    }
  }
}

// g_weight[c] = sum_n gw_nc[n, c], g_bias[c] = sum_n gb_nc[n, c], n ascending: one thread per channel.
template <class T>
__global__ void __launch_bounds__(kThreads)
    param_grads_kernel(int64_t N, int64_t C, const acc_type<T>* gw_nc, const acc_type<T>* gb_nc, T* grad_weight,
                       T* grad_bias) {
  using A = acc_type<T>;
  for (int64_t c = int64_t(blockIdx.x) * kThreads + threadIdx.x; c < C; c += int64_t(gridDim.x) * kThreads) {
    A gw = A(0), gb = A(0);
    for (int64_t n = 0; n < N; ++n) {
      gw += gw_nc[n * C + c];
      gb += gb_nc[n * C + c];
    }
    if (grad_weight != nullptr) grad_weight[c] = from_acc<T>(gw);
    if (grad_bias != nullptr) grad_bias[c] = from_acc<T>(gb);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Host side: plans, workspace layout, dispatch.

bool aligned(const void* p, size_t bytes) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0; }

bool valid(const GroupNormSiluDims& d) {
  return d.N > 0 && d.C > 0 && d.S > 0 && d.G > 0 && d.C % d.G == 0;
}

// Vector width: 16 bytes of elements when the row length allows it and every elementwise pointer is aligned.
template <class T>
int vector_width(const GroupNormSiluDims& d, std::initializer_list<const void*> pointers) {
  constexpr int kV = int(16 / sizeof(T));
  const int64_t row_length = d.channels_last ? d.C : d.S;
  if (row_length % kV != 0) return 1;
  for (const void* p : pointers) {
    if (!aligned(p, 16)) return 1;
  }
  return kV;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

cudaError_t multiprocessor_count(int* sms) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  return cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device);
}

// Splits so that N * tiles * splits blocks fill the GPU (about 8 resident 256-thread blocks per SM) while each lane
// still reduces at least 2 vectors (channels-first) or each warp at least 4 rows (channels-last) per split.
ReducePlan make_reduce_plan(const GroupNormSiluDims& d, int V, int sms) {
  ReducePlan p{d.N, d.C, d.S, 1, d.S, 1};
  int64_t min_chunk;
  if (d.channels_last) {
    p.tiles = ceil_div(d.C / V, kWarp);
    min_chunk = int64_t(kWarps) * 4;
  } else {
    p.tiles = ceil_div(d.C, kWarps);
    min_chunk = int64_t(kWarp) * V * 2;
  }
  const int64_t target_blocks = int64_t(sms) * 8;
  const int64_t wanted = ceil_div(target_blocks, d.N * p.tiles);
  const int64_t splits = std::max<int64_t>(1, std::min({wanted, ceil_div(d.S, min_chunk), kMaxSplits}));
  int64_t chunk = ceil_div(d.S, splits);
  if (!d.channels_last) chunk = ceil_div(chunk, V) * V;  // S % V == 0 when V > 1, so chunk <= S still
  p.chunk = chunk;
  p.splits = ceil_div(d.S, chunk);  // every split non-empty
  return p;
}

GroupPlan make_group_plan(const GroupNormSiluDims& d) { return {d.N, d.C, d.S, d.G, d.C / d.G}; }

ApplyPlan make_apply_plan(const GroupNormSiluDims& d) {
  return d.channels_last ? ApplyPlan{d.N, d.C, d.S, d.C} : ApplyPlan{d.N, d.C, d.C, d.S};
}

dim3 apply_grid(const ApplyPlan& p, int V, int sms) {
  const int64_t grid_y = std::min(p.N, kMaxGridY);
  const int64_t per_sample = ceil_div(p.R * (p.L / V), kThreads);
  const int64_t grid_x = std::max<int64_t>(1, std::min(per_sample, ceil_div(int64_t(sms) * 8, grid_y)));
  return dim3(unsigned(grid_x), unsigned(grid_y));
}

unsigned blocks_for(int64_t tasks) { return unsigned(std::max<int64_t>(1, std::min(tasks, kMaxGridX))); }

// The workspace is a run of Acc arrays, each starting on a 256-byte boundary.
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<char*>(base)) {}
  template <class A>
  A* take(int64_t count) {
    const size_t start = (used_ + 255) / 256 * 256;
    used_ = start + size_t(count) * sizeof(A);
    return base_ == nullptr ? nullptr : reinterpret_cast<A*>(base_ + start);
  }
  size_t used() const { return used_; }

 private:
  char* base_;
  size_t used_ = 0;
};

template <class T>
struct FwdWorkspace {
  using A = acc_type<T>;
  A *part_mean, *part_m2;
  ChannelCoefs<A> coefs{};  // t, m, a, b
  size_t bytes;
  FwdWorkspace(void* base, const GroupNormSiluDims& d, const ReducePlan& rp) {
    Carver w(base);
    part_mean = w.take<A>(d.N * d.C * rp.splits);
    part_m2 = w.take<A>(d.N * d.C * rp.splits);
    for (A** p : {&coefs.t, &coefs.m, &coefs.a, &coefs.b}) *p = w.take<A>(d.N * d.C);
    bytes = w.used();
  }
};

template <class T>
struct BwdWorkspace {
  using A = acc_type<T>;
  A *part_s1, *part_s2, *part_s3, *sum_s1, *sum_s3, *gw_nc, *gb_nc;
  ChannelCoefs<A> coefs{};  // all seven
  size_t bytes;
  BwdWorkspace(void* base, const GroupNormSiluDims& d, const ReducePlan& rp) {
    Carver w(base);
    const int64_t nc = d.N * d.C;
    for (A** p : {&coefs.t, &coefs.m, &coefs.a, &coefs.b, &coefs.r, &coefs.e, &coefs.f}) *p = w.take<A>(nc);
    part_s1 = w.take<A>(nc * rp.splits);
    part_s2 = w.take<A>(nc * rp.splits);
    part_s3 = w.take<A>(nc * rp.splits);
    sum_s1 = w.take<A>(nc);
    sum_s3 = w.take<A>(nc);
    gw_nc = w.take<A>(nc);
    gb_nc = w.take<A>(nc);
    bytes = w.used();
  }
};

template <class T>
ChannelParams<T> channel_params(const void* weight, const void* bias, const void* temb, const void* scale_shift,
                                int64_t C) {
  return {static_cast<const T*>(weight), static_cast<const T*>(bias), static_cast<const T*>(temb),
          static_cast<const T*>(scale_shift), C};
}

template <class T>
int fwd_vector_width(const GroupNormSiluFwdArgs& a) {
  return vector_width<T>(a.dims, {a.x, a.y});
}
template <class T>
int bwd_vector_width(const GroupNormSiluBwdArgs& a) {
  return vector_width<T>(a.dims, {a.x, a.grad_out, a.grad_x});
}

template <class Op, int V, bool CL>
void launch_partials(const Op& op, const ReducePlan& rp, cudaStream_t stream) {
  const unsigned blocks = blocks_for(rp.N * rp.tiles * rp.splits);
  if constexpr (CL) {
    launch(channel_partials_cl_kernel<Op, V>, blocks, stream, op, rp);
  } else {
    launch(channel_partials_cf_kernel<Op, V>, blocks, stream, op, rp);
  }
}

template <class T, int V, bool CL>
void fwd_reduce_and_apply(const GroupNormSiluFwdArgs& a, const ReducePlan& rp, const FwdWorkspace<T>& ws, int sms,
                          cudaStream_t stream) {
  using A = acc_type<T>;
  const GroupNormSiluDims& d = a.dims;
  const T* x = static_cast<const T*>(a.x);
  FwdStatsOp<T, V, CL> op{x, static_cast<const T*>(a.temb), ws.part_mean, ws.part_m2};
  launch_partials<FwdStatsOp<T, V, CL>, V, CL>(op, rp, stream);
  launch(fwd_finalize_kernel<T>, blocks_for(d.N * d.G), stream, rp, make_group_plan(d), ws.part_mean, ws.part_m2,
         channel_params<T>(a.weight, a.bias, a.temb, a.scale_shift, d.C), A(a.eps), static_cast<double*>(a.mean),
         static_cast<A*>(a.rstd), ws.coefs);
  const ApplyPlan ap = make_apply_plan(d);
  launch(fwd_apply_kernel<T, V, CL>, apply_grid(ap, V, sms), stream, ap, x, static_cast<T*>(a.y), ws.coefs, a.silu);
}

template <class T>
cudaError_t fwd_typed(const GroupNormSiluFwdArgs& a, void* workspace, size_t workspace_bytes, size_t* bytes_needed,
                      cudaStream_t stream) {
  constexpr int kV = int(16 / sizeof(T));
  if (!valid(a.dims)) return cudaErrorInvalidValue;
  int sms = 0;
  cudaError_t err = multiprocessor_count(&sms);
  if (err != cudaSuccess) return err;
  const int V = fwd_vector_width<T>(a);
  const ReducePlan rp = make_reduce_plan(a.dims, V, sms);
  const FwdWorkspace<T> ws(workspace, a.dims, rp);
  if (bytes_needed != nullptr) {
    *bytes_needed = ws.bytes;
    return cudaSuccess;
  }
  if (workspace == nullptr || workspace_bytes < ws.bytes || !aligned(workspace, 256)) return cudaErrorInvalidValue;
  if (a.x == nullptr || a.y == nullptr || a.mean == nullptr || a.rstd == nullptr) return cudaErrorInvalidValue;
  cudaGetLastError();  // clear a stale error so the check below reports ours
  if (a.dims.channels_last) {
    if (V == kV) fwd_reduce_and_apply<T, kV, true>(a, rp, ws, sms, stream);
    else fwd_reduce_and_apply<T, 1, true>(a, rp, ws, sms, stream);
  } else {
    if (V == kV) fwd_reduce_and_apply<T, kV, false>(a, rp, ws, sms, stream);
    else fwd_reduce_and_apply<T, 1, false>(a, rp, ws, sms, stream);
  }
  return cudaGetLastError();
}

template <class T, int V, bool CL>
void bwd_reduce_and_apply(const GroupNormSiluBwdArgs& a, const ReducePlan& rp, const BwdWorkspace<T>& ws, int sms,
                          cudaStream_t stream) {
  using A = acc_type<T>;
  const GroupNormSiluDims& d = a.dims;
  const GroupPlan gp = make_group_plan(d);
  const ChannelParams<T> params = channel_params<T>(a.weight, a.bias, a.temb, a.scale_shift, d.C);
  const T* x = static_cast<const T*>(a.x);
  const T* grad_out = static_cast<const T*>(a.grad_out);
  const double* mean = static_cast<const double*>(a.mean);
  const A* rstd = static_cast<const A*>(a.rstd);
  launch(bwd_prepare_kernel<T>, blocks_for(ceil_div(d.N * d.C, kThreads)), stream, gp, params, mean, rstd,
         ws.coefs);
  BwdSumsOp<T, V, CL> op{x, grad_out, ws.coefs, a.silu, ws.part_s1, ws.part_s2, ws.part_s3};
  launch_partials<BwdSumsOp<T, V, CL>, V, CL>(op, rp, stream);
  launch(bwd_finalize_kernel<T>, blocks_for(d.N * d.G), stream, rp, gp, params, rstd, ws.part_s1, ws.part_s2,
         ws.part_s3, ws.sum_s1, ws.sum_s3, ws.gw_nc, ws.gb_nc, ws.coefs, static_cast<T*>(a.grad_temb),
         static_cast<T*>(a.grad_scale_shift));
  const ApplyPlan ap = make_apply_plan(d);
  launch(bwd_apply_kernel<T, V, CL>, apply_grid(ap, V, sms), stream, ap, x, grad_out, static_cast<T*>(a.grad_x),
         ws.coefs, a.silu);
  if (a.grad_weight != nullptr || a.grad_bias != nullptr) {
    launch(param_grads_kernel<T>, blocks_for(ceil_div(d.C, kThreads)), stream, d.N, d.C, ws.gw_nc, ws.gb_nc,
           static_cast<T*>(a.grad_weight), static_cast<T*>(a.grad_bias));
  }
}

template <class T>
cudaError_t bwd_typed(const GroupNormSiluBwdArgs& a, void* workspace, size_t workspace_bytes, size_t* bytes_needed,
                      cudaStream_t stream) {
  constexpr int kV = int(16 / sizeof(T));
  if (!valid(a.dims)) return cudaErrorInvalidValue;
  int sms = 0;
  cudaError_t err = multiprocessor_count(&sms);
  if (err != cudaSuccess) return err;
  const int V = bwd_vector_width<T>(a);
  const ReducePlan rp = make_reduce_plan(a.dims, V, sms);
  const BwdWorkspace<T> ws(workspace, a.dims, rp);
  if (bytes_needed != nullptr) {
    *bytes_needed = ws.bytes;
    return cudaSuccess;
  }
  if (workspace == nullptr || workspace_bytes < ws.bytes || !aligned(workspace, 256)) return cudaErrorInvalidValue;
  if (a.x == nullptr || a.grad_out == nullptr || a.grad_x == nullptr || a.mean == nullptr || a.rstd == nullptr) {
    return cudaErrorInvalidValue;
  }
  cudaGetLastError();
  if (a.dims.channels_last) {
    if (V == kV) bwd_reduce_and_apply<T, kV, true>(a, rp, ws, sms, stream);
    else bwd_reduce_and_apply<T, 1, true>(a, rp, ws, sms, stream);
  } else {
    if (V == kV) bwd_reduce_and_apply<T, kV, false>(a, rp, ws, sms, stream);
    else bwd_reduce_and_apply<T, 1, false>(a, rp, ws, sms, stream);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t group_norm_silu_fwd_workspace_bytes(const GroupNormSiluFwdArgs& args, size_t* bytes) {
  return dispatch(args.dtype, [&](auto tag) { return fwd_typed<decltype(tag)>(args, nullptr, 0, bytes, nullptr); });
}

cudaError_t group_norm_silu_bwd_workspace_bytes(const GroupNormSiluBwdArgs& args, size_t* bytes) {
  return dispatch(args.dtype, [&](auto tag) { return bwd_typed<decltype(tag)>(args, nullptr, 0, bytes, nullptr); });
}

cudaError_t group_norm_silu_fwd(const GroupNormSiluFwdArgs& args, void* workspace, size_t workspace_bytes,
                                cudaStream_t stream) {
  return dispatch(args.dtype, [&](auto tag) {
    return fwd_typed<decltype(tag)>(args, workspace, workspace_bytes, nullptr, stream);
  });
}

cudaError_t group_norm_silu_bwd(const GroupNormSiluBwdArgs& args, void* workspace, size_t workspace_bytes,
                                cudaStream_t stream) {
  return dispatch(args.dtype, [&](auto tag) {
    return bwd_typed<decltype(tag)>(args, workspace, workspace_bytes, nullptr, stream);
  });
}

}  // namespace cuda
}  // namespace gencore
