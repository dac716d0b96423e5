// A small cache of large CPU output buffers, for the fused ops' outputs (y, grad_x, prev_sample, ...).
//
// Why: a fresh allocation of tens of MB is served by mmap, and the first write to each 4 KiB page then costs a page
// fault plus the kernel zeroing the page. For the GroupNorm of an (8, 320, 64, 64) float32 activation that is about
// 65 ms of page faults against ~10 ms of actual work: the allocator, not the kernel, would set the speed. A loop
// (sampling, training) asks for the same sizes again and again, so buffers of at least 1 MiB freed by their tensors
// come back here and serve the next output of the same size, like the CUDA caching allocator does on the GPU.
//
// What is kept: only what a loop reuses. A freed buffer is kept only when its size was asked for before (a size
// asked for once, as in a run over varied shapes, goes straight back to the system), and only while that size is
// among the 16 sizes asked for most recently: asking for a new size drops the buffers of the size asked for longest
// ago. A loop whose outputs take up to 16 sizes (a diffusion UNet's GroupNorms, forward and backward, take about 10)
// keeps them all from its second pass on; varied shapes leave next to nothing cached.
// Bounded also in bytes: at most GENCORE_CPU_CACHE_MB megabytes (default 1024; 0 turns the cache off), beyond which a
// freed buffer goes back to the system. gencore::cpu_empty_cache() releases everything cached.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace gencore {

// An uninitialised CPU tensor with t's sizes, strides and dtype (t must be non-overlapping and dense, so its strides
// span exactly t.numel() elements), whose storage comes from the cache and whose data starts at the same offset
// within a 4 KiB page as t's (to 64 bytes).
//
// Why the page offset: a kernel that streams an input and writes an output element by element stalls when a load's
// address matches a recent store's address in its low 12 bits ("4K aliasing": the load is held back as if it
// depended on that store). With the input at page offset 64 (where the system allocator puts large blocks) and the
// output 64 bytes further, every vector load aliased the store of the previous iteration: the sampler step at
// (4, 3, 256, 256) ran in 160 us instead of 103 us. Outputs at the input's offset never alias a later load.
at::Tensor pooled_empty_like(const at::Tensor& t);

// Frees every cached buffer; returns the number of bytes released.
int64_t cpu_empty_cache();

// [bytes cached now, limit in bytes].
std::vector<int64_t> cpu_cache_stats();

// Sets the limit in bytes (0 turns the cache off; what it holds beyond the new limit is released); returns
// cpu_cache_stats().
std::vector<int64_t> cpu_set_cache_limit(int64_t bytes);

}  // namespace gencore
