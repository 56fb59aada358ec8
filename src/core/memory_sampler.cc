#include "core/memory_sampler.h"

#include <utility>

#include "laneguard/clock.h"

namespace laneguard::internal {

MemorySampler::MemorySampler(std::unique_ptr<MemoryProbe> probe, int64_t sample_interval_ms,
                             double heap_warning_mb, int64_t unix_offset)
    : probe_(std::move(probe)),
      interval_nanos_(sample_interval_ms * 1'000'000),
      heap_warning_mb_(heap_warning_mb),
      unix_offset_(unix_offset) {}

MemorySnapshot MemorySampler::Sample(int64_t now) {
  MemorySnapshot s = probe_->Sample();
  s.timestamp_unix_nanos = now + unix_offset_;
  s.timestamp = FormatIso8601(s.timestamp_unix_nanos);
  rss_mb_.store(s.rss_mb, std::memory_order_relaxed);
  heap_used_mb_.store(s.heap_used_mb, std::memory_order_relaxed);
  heap_warning_pending_.store(s.heap_used_mb > heap_warning_mb_.load(std::memory_order_relaxed),
                              std::memory_order_relaxed);
  MutexLock lock(mu_);
  snapshot_ = s;
  next_sample_mono_.store(now + interval_nanos_.load(std::memory_order_relaxed),
                          std::memory_order_relaxed);
  return s;
}

MemorySnapshot MemorySampler::Latest() const {
  MutexLock lock(mu_);
  return snapshot_;
}

}  // namespace laneguard::internal
