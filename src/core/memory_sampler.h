// MemorySampler: the memory figures admission reads. The probe is read every
// memorySampleIntervalMs by the manager's Tick() (and by SampleMemoryNow()), never by admission:
// TryAcquire only loads the atomics here, so the memory guard costs no syscall.
//
// Thread safety: every method is safe from any thread. The figures admission reads are atomics
// (relaxed: each is a self-contained number, nothing is published through them); the full
// snapshot is under a mutex.
#ifndef LANEGUARD_SRC_CORE_MEMORY_SAMPLER_H_
#define LANEGUARD_SRC_CORE_MEMORY_SAMPLER_H_

#include <atomic>
#include <cstdint>
#include <memory>

#include "laneguard/internal/mutex.h"
#include "laneguard/internal/thread_annotations.h"
#include "laneguard/memory.h"

namespace laneguard::internal {

class MemorySampler {
 public:
  // `unix_offset` turns the manager's monotonic time into wall time for the snapshot's stamp.
  MemorySampler(std::unique_ptr<MemoryProbe> probe, int64_t sample_interval_ms,
                double heap_warning_mb, int64_t unix_offset);
  MemorySampler(const MemorySampler&) = delete;
  MemorySampler& operator=(const MemorySampler&) = delete;

  double rss_mb() const { return rss_mb_.load(std::memory_order_relaxed); }
  double heap_used_mb() const { return heap_used_mb_.load(std::memory_order_relaxed); }
  // True while the latest sample is above heapWarningMb and no admission has reported it yet.
  bool heap_warning_pending() const {
    return heap_warning_pending_.load(std::memory_order_relaxed);
  }
  // Claims the pending heap warning: true for exactly one caller per sample above the mark.
  bool TakeHeapWarning() {
    return heap_warning_pending_.exchange(false, std::memory_order_relaxed);
  }

  // True when the interval since the last sample has passed at `now` (monotonic nanoseconds).
  bool Due(int64_t now) const { return now >= next_sample_mono_.load(std::memory_order_relaxed); }
  // Reads the probe and publishes the figures, stamped `now`.
  MemorySnapshot Sample(int64_t now) EXCLUDES(mu_);
  MemorySnapshot Latest() const EXCLUDES(mu_);
  // Live config changes (ResourceBudgetManager::UpdateConfig): from the next sample on.
  void SetHeapWarningMb(double mb) { heap_warning_mb_.store(mb, std::memory_order_relaxed); }
  void SetSampleIntervalMs(int64_t ms) {
    interval_nanos_.store(ms * 1'000'000, std::memory_order_relaxed);
  }

 private:
  const std::unique_ptr<MemoryProbe> probe_;
  std::atomic<int64_t> interval_nanos_;
  std::atomic<double> heap_warning_mb_;
  const int64_t unix_offset_;

  std::atomic<double> rss_mb_{0};
  std::atomic<double> heap_used_mb_{0};
  std::atomic<bool> heap_warning_pending_{false};
  std::atomic<int64_t> next_sample_mono_{0};

  mutable Mutex mu_;
  MemorySnapshot snapshot_ GUARDED_BY(mu_);
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_CORE_MEMORY_SAMPLER_H_
