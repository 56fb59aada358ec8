#include "laneguard/observe/metric_emitter.h"

#include <string>
#include <utility>

#include "laneguard/internal/mutex.h"
#include "observe/periodic_thread.h"

namespace laneguard {

FlatMetrics CollectFlatMetrics(const ResourceBudgetManager& manager) {
  const Statistics stats = manager.GetStatistics();
  const MemorySnapshot memory = manager.GetMemorySnapshot();
  const ConcurrencyStatus concurrency = manager.GetConcurrencyStatus();
  FlatMetrics m;
  m["worker.calls.total"] = static_cast<double>(stats.total_calls);
  m["worker.calls.success"] = static_cast<double>(stats.success_count);
  m["worker.calls.failure"] = static_cast<double>(stats.failure_count);
  m["worker.calls.timeout"] = static_cast<double>(stats.timeout_count);
  m["worker.duration.avg_ms"] = stats.average_duration_ms;
  m["memory.rss_mb"] = memory.rss_mb;
  m["memory.heap_used_mb"] = memory.heap_used_mb;
  m["concurrency.global.active"] = concurrency.global.active;
  m["concurrency.global.limit"] = concurrency.global.limit;
  for (const auto& [lane, count] : concurrency.lanes) {
    m["concurrency.lane." + lane + ".active"] = count.active;
    m["concurrency.lane." + lane + ".limit"] = count.limit;
  }
  return m;
}

struct MetricEmitter::Impl {
  const ResourceBudgetManager* manager = nullptr;
  Callback callback;
  MetricEmitterOptions options;
  const Clock* clock = nullptr;
  internal::Mutex mu;  // serializes emissions
  int64_t last_emit_mono GUARDED_BY(mu) = 0;
  internal::PeriodicThread thread;

  void EmitLocked() REQUIRES(mu) {
    last_emit_mono = clock->MonotonicNanos();
    callback(CollectFlatMetrics(*manager));
  }
};

MetricEmitter::MetricEmitter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MetricEmitter::~MetricEmitter() { Stop(); }

Result<std::unique_ptr<MetricEmitter>> MetricEmitter::Create(const ResourceBudgetManager* manager,
                                                             Callback callback,
                                                             MetricEmitterOptions options) {
  if (manager == nullptr) {
    return Error{ErrorCode::kInvalidArgument, "manager", "null",
                 "MetricEmitter needs a manager, got null"};
  }
  if (!callback) {
    return Error{ErrorCode::kInvalidArgument, "callback", "null",
                 "MetricEmitter needs a callback, got an empty one"};
  }
  if (options.interval.count() < 1) {
    const std::string value = std::to_string(options.interval.count());
    return Error{ErrorCode::kInvalidArgument, "intervalMs", value,
                 "option 'intervalMs' = " + value + ": must be >= 1"};
  }
  auto impl = std::make_unique<Impl>();
  impl->manager = manager;
  impl->callback = std::move(callback);
  impl->clock = options.clock != nullptr ? options.clock : &manager->clock();
  impl->options = options;
  {
    internal::MutexLock lock(impl->mu);  // not shared yet; for the analysis' sake
    impl->last_emit_mono = impl->clock->MonotonicNanos();
  }
  return std::unique_ptr<MetricEmitter>(new MetricEmitter(std::move(impl)));
}

void MetricEmitter::EmitNow() {
  internal::MutexLock guard(impl_->mu);
  impl_->EmitLocked();
}

bool MetricEmitter::Tick() {
  internal::MutexLock guard(impl_->mu);
  if (impl_->clock->MonotonicNanos() - impl_->last_emit_mono <
      impl_->options.interval.count() * 1'000'000) {
    return false;
  }
  impl_->EmitLocked();
  return true;
}

void MetricEmitter::Start() {
  impl_->thread.Start(impl_->options.interval, [this] { EmitNow(); });
}

void MetricEmitter::Stop() { impl_->thread.Stop(); }

}  // namespace laneguard
