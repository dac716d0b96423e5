// See cpu_output_pool.h.
#include "cpu_output_pool.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
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

// Each block is [header: its byte size][kSlack bytes][nbytes]; the data starts somewhere in the first kPage bytes
// after the header, at the page offset asked for. The DataPtr context is the block.
class OutputPool {
 public:
  c10::DataPtr allocate(size_t nbytes, size_t page_offset) {
    if (nbytes < kMinPooledBytes || limit_.load() == 0) return c10::GetDefaultCPUAllocator()->allocate(nbytes);
    char* block = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(nbytes);
      if (it != free_.end() && !it->second.empty()) {
        block = static_cast<char*>(it->second.back());
        it->second.pop_back();
        cached_ -= nbytes;
      }
    }
    if (block == nullptr) {
      block = static_cast<char*>(c10::alloc_cpu(kHeader + kSlack + nbytes));
      std::memcpy(block, &nbytes, sizeof(nbytes));
    }
    const uintptr_t first = reinterpret_cast<uintptr_t>(block) + kHeader;  // kAlign-aligned
    char* data = block + kHeader + (page_offset + kPage - first % kPage) % kPage;
    return {data, block, &OutputPool::release, c10::Device(c10::DeviceType::CPU)};
  }

  int64_t empty_cache() {
    std::unordered_map<size_t, std::vector<void*>> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      drop.swap(free_);
      cached_ = 0;
    }
    int64_t released = 0;
    for (auto& [bytes, blocks] : drop) {
      for (void* b : blocks) c10::free_cpu(b);
      released += static_cast<int64_t>(bytes * blocks.size());
    }
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
  static void release(void* block) {
    size_t nbytes;
    std::memcpy(&nbytes, block, sizeof(nbytes));
    OutputPool& pool = get();
    {
      std::lock_guard<std::mutex> lock(pool.mutex_);
      if (pool.cached_ + nbytes <= pool.limit_.load()) {
        pool.free_[nbytes].push_back(block);
        pool.cached_ += nbytes;
        return;
      }
    }
    c10::free_cpu(block);
  }

  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
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

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::Tensor& like) {
  return at::detail::empty_generic(sizes, allocator_like(like), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   like.scalar_type(), std::nullopt);
}

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
