// Counters that many threads bump on a hot path and a few threads read.
//
// Each thread adds to a block of its own with a plain load and store: no locked instruction (a
// `lock add` costs about 5 ns here even uncontended and drains the store buffer), and no cache
// line written by two threads (under overload every caller hammers the same full lane, and a
// shared counter would bounce between their cores on every rejection). A read sums the blocks.
// This is what Linux's percpu counters and folly's ThreadCachedInt do; no Debian package we use
// offers one, hence by hand.
//
// A thread finds its block through a one-entry thread-local cache keyed by the counters' serial
// number (never reused, unlike an address), so a thread that alternates between two managers
// takes the slow path (a mutex) on each switch; one manager per thread is the common case. A
// block lives as long as either side holds it: the counters while they exist, the thread until it
// exits. Blocks of exited threads are folded into one total the next time a thread registers, so
// memory stays in proportion to the live threads that have added.
//
// Thread safety: Increment() and Sums() are safe from any thread. Sums() sees every Increment()
// that happened-before it, and any subset of concurrent ones.
#ifndef LANEGUARD_SRC_BASE_THREAD_COUNTERS_H_
#define LANEGUARD_SRC_BASE_THREAD_COUNTERS_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "laneguard/internal/mutex.h"
#include "laneguard/internal/thread_annotations.h"

namespace laneguard::internal {

class ThreadCounters {
 public:
  explicit ThreadCounters(size_t width);
  ~ThreadCounters();
  ThreadCounters(const ThreadCounters&) = delete;
  ThreadCounters& operator=(const ThreadCounters&) = delete;

  // Adds one to counter `i` (< width).
  void Increment(size_t i) {
    const Cached& c = Cache();
    if (c.serial == serial_) [[likely]] {
      // Only this thread writes these counts, so a load and a store cannot lose an increment.
      c.counts[i].store(c.counts[i].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    } else {
      IncrementSlow(i);
    }
  }

  // Every counter, each summed over every thread that ever added to it.
  std::vector<int64_t> Sums() const EXCLUDES(mu_);

  // For tests: blocks held for threads (live ones, and exited ones not yet folded).
  size_t BlockCount() const EXCLUDES(mu_);

 private:
  struct Block;
  struct Cached {
    uint64_t serial = 0;  // 0: nothing cached
    std::atomic<int64_t>* counts = nullptr;
  };
  // Trivially destructible and constant-initialized: no guard on the fast path, and readable
  // until the thread's very end.
  static Cached& Cache() {
    thread_local Cached cached;
    return cached;
  }
  // Finds or registers this thread's block, caches it and adds.
  [[gnu::noinline]] void IncrementSlow(size_t i) EXCLUDES(mu_);

  const uint64_t serial_;
  const size_t width_;
  mutable Mutex mu_;
  std::vector<std::shared_ptr<Block>> blocks_ GUARDED_BY(mu_);
  const std::unique_ptr<int64_t[]> folded_ GUARDED_BY(mu_);  // exited threads' counts
  // Increments that found no block of their own (a thread past its thread-locals' destruction).
  std::unique_ptr<std::atomic<int64_t>[]> shared_;
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_BASE_THREAD_COUNTERS_H_
