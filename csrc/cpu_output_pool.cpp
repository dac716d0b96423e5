// See cpu_output_pool.h.
#include "cpu_output_pool.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace gencore {
namespace {

constexpr size_t kMinPooledBytes = size_t(1) << 20;  // below this, malloc reuses its own free lists anyway
constexpr size_t kAlign = 64;                        // the alignment of c10::alloc_cpu, kept for every output
constexpr size_t kHeader = kAlign;                   // the block's byte size, in front of the data
constexpr size_t kPage = 4096;                       // the data may start at any kAlign offset within a page
constexpr size_t kSlack = kPage - kAlign;

size_t limit_from_env() {
  const char* env = std::getenv("GENCORE_CPU_CACHE_MB");
  if (env == nullptr || *env == '\0') return size_t(1024) << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(env, &end, 10);
  return (end == env || mb <= 0) ? 0 : static_cast<size_t>(mb) << 20;
}

// How many sizes the cache follows (see cpu_output_pool.h). More than the distinct output sizes of one pass of a
// loop, so a loop keeps all of its buffers: the GroupNorms of Stable Diffusion 1.5's UNet produce 8 to 10 sizes of
// 1 MiB or more at batch 1 to 8 (the backward's grad_x the same ones), a CIFAR DDPM UNet's 7 to 9. Few enough that a
// run over varied shapes holds little: over 300 GroupNorms of random shapes (six runs), following 32 sizes raised the
// peak RSS by 90 MB on average (at most 140 MB) over no cache, 16 sizes by 37 MB (at most 68 MB).
constexpr size_t kRecentSizes = 16;

// Each block is [header: its byte size][kSlack bytes][nbytes]; the data starts somewhere in the first kPage bytes
// after the header, at the page offset asked for. The DataPtr context is the block.
class OutputPool {
 public:
  c10::DataPtr allocate(size_t nbytes, size_t page_offset) {
    if (nbytes < kMinPooledBytes || limit_.load() == 0) return c10::GetDefaultCPUAllocator()->allocate(nbytes);
    char* block = nullptr;
    std::vector<void*> dropped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = sizes_.find(nbytes);
      if (it != sizes_.end()) {
        SizeEntry& entry = it->second;
        recent_.splice(recent_.begin(), recent_, entry.recency);  // now the most recent size
        entry.asked_again = true;
        if (!entry.free.empty()) {
          block = static_cast<char*>(entry.free.back());
          entry.free.pop_back();
          cached_ -= nbytes;
        }
      } else {
        recent_.push_front(nbytes);
        sizes_.emplace(nbytes, SizeEntry{recent_.begin(), false, {}});
        if (sizes_.size() > kRecentSizes) dropped = forget(recent_.back());
      }
    }
    for (void* b : dropped) c10::free_cpu(b);
    if (block == nullptr) {
      block = static_cast<char*>(c10::alloc_cpu(kHeader + kSlack + nbytes));
      std::memcpy(block, &nbytes, sizeof(nbytes));
    }
    const uintptr_t first = reinterpret_cast<uintptr_t>(block) + kHeader;  // kAlign-aligned
    char* data = block + kHeader + (page_offset + kPage - first % kPage) % kPage;
    return {data, block, &OutputPool::release, c10::Device(c10::DeviceType::CPU)};
  }

  int64_t empty_cache() {
    std::vector<void*> drop;
    int64_t released = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& [bytes, entry] : sizes_) {
        drop.insert(drop.end(), entry.free.begin(), entry.free.end());
        entry.free.clear();
      }
      released = static_cast<int64_t>(cached_);
      cached_ = 0;
    }
    for (void* b : drop) c10::free_cpu(b);
    return released;
  }

  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {static_cast<int64_t>(cached_), static_cast<int64_t>(limit_.load())};
  }

  // A new bound; the cache is emptied when it holds more than the new limit (0 also turns the cache off).
  void set_limit(size_t bytes) {
    bool drop = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      limit_.store(bytes);
      drop = cached_ > bytes;
    }
    if (drop) empty_cache();
  }

  static OutputPool& get() {
    static OutputPool* pool = new OutputPool();  // never destroyed: tensors may outlive static destructors
    return *pool;
  }

 private:
  // One of the recently asked-for sizes: its place in recent_, whether it was asked for more than once while
  // followed (only then are its freed buffers kept), and its cached buffers.
  struct SizeEntry {
    std::list<size_t>::iterator recency;
    bool asked_again;
    std::vector<void*> free;
  };

  // Stops following a size; returns its cached buffers for the caller to free outside the lock.
  std::vector<void*> forget(size_t nbytes) {
    auto it = sizes_.find(nbytes);
    std::vector<void*> blocks = std::move(it->second.free);
    cached_ -= nbytes * blocks.size();
    recent_.erase(it->second.recency);
    sizes_.erase(it);
    return blocks;
  }

  static void release(void* block) {
    size_t nbytes;
    std::memcpy(&nbytes, block, sizeof(nbytes));
    OutputPool& pool = get();
    {
      std::lock_guard<std::mutex> lock(pool.mutex_);
      auto it = pool.sizes_.find(nbytes);
      if (it != pool.sizes_.end() && it->second.asked_again && pool.cached_ + nbytes <= pool.limit_.load()) {
        it->second.free.push_back(block);
        pool.cached_ += nbytes;
        return;
      }
    }
    c10::free_cpu(block);
  }

  std::mutex mutex_;
  std::list<size_t> recent_;                        // the followed sizes, most recently asked for first
  std::unordered_map<size_t, SizeEntry> sizes_;     // at most kRecentSizes entries, one per element of recent_
  size_t cached_ = 0;
  std::atomic<size_t> limit_{limit_from_env()};
};

// The c10::Allocator of the outputs at one page offset. A tensor's storage keeps its allocator (resize_ calls it
// again), so there is one static instance per kAlign offset, never destroyed.
class PageOffsetAllocator final : public c10::Allocator {
 public:
  size_t page_offset = 0;

  c10::DataPtr allocate(size_t nbytes) override { return OutputPool::get().allocate(nbytes, page_offset); }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

c10::Allocator* allocator_like(const at::Tensor& like) {
  static PageOffsetAllocator* allocators = [] {
    auto* all = new PageOffsetAllocator[kPage / kAlign];
    for (size_t i = 0; i < kPage / kAlign; ++i) all[i].page_offset = i * kAlign;
    return all;
  }();
  const auto address = reinterpret_cast<uintptr_t>(like.const_data_ptr());
  return &allocators[(address % kPage) / kAlign];
}

}  // namespace

at::Tensor pooled_empty_like(const at::Tensor& t) {
  return at::detail::empty_strided_generic(t.sizes(), t.strides(), allocator_like(t),
                                           c10::DispatchKeySet(c10::DispatchKey::CPU), t.scalar_type());
}

int64_t cpu_empty_cache() { return OutputPool::get().empty_cache(); }

std::vector<int64_t> cpu_cache_stats() { return OutputPool::get().stats(); }

std::vector<int64_t> cpu_set_cache_limit(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "the CPU output cache limit must be >= 0 bytes (0 turns the cache off), got ", bytes);
  OutputPool::get().set_limit(static_cast<size_t>(bytes));
  return OutputPool::get().stats();
}

}  // namespace gencore
