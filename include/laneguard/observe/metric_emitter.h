// The spec's "Emit Metrics to External Systems": a callback fed periodically with a flat map of
// the manager's figures, for monitoring systems that take name/value pairs (StatsD, a push API).
//
//   auto emitter = laneguard::MetricEmitter::Create(manager.get(),
//       [](const laneguard::FlatMetrics& m) { Send(m); }, {.interval = std::chrono::seconds(30)});
//   emitter->Start();
//
// Thread safety: all methods are thread-safe. Emissions are serialized: the callback never runs
// twice at once; it runs on the background thread (Start()) or the thread calling EmitNow()/Tick().
#ifndef LANEGUARD_OBSERVE_METRIC_EMITTER_H_
#define LANEGUARD_OBSERVE_METRIC_EMITTER_H_

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "laneguard/clock.h"
#include "laneguard/manager.h"
#include "laneguard/result.h"

namespace laneguard {

// The spec's keys, from GetStatistics(), GetMemorySnapshot() and GetConcurrencyStatus():
//   worker.calls.total, worker.calls.success, worker.calls.failure, worker.calls.timeout,
//   worker.duration.avg_ms, memory.rss_mb, memory.heap_used_mb, concurrency.global.active,
//   concurrency.global.limit, and for each configured lane concurrency.lane.<lane>.active and
//   concurrency.lane.<lane>.limit.
using FlatMetrics = std::map<std::string, double, std::less<>>;
FlatMetrics CollectFlatMetrics(const ResourceBudgetManager& manager);

struct MetricEmitterOptions {
  std::chrono::milliseconds interval{30000};  // the spec's 30 s; must be >= 1 ms
  const Clock* clock = nullptr;               // Tick()'s schedule; the manager's clock when null
};

class MetricEmitter {
 public:
  using Callback = std::function<void(const FlatMetrics&)>;
  // `manager` must outlive the emitter; `callback` must not be empty. Errors name the option.
  static Result<std::unique_ptr<MetricEmitter>> Create(const ResourceBudgetManager* manager,
                                                       Callback callback,
                                                       MetricEmitterOptions options = {});
  ~MetricEmitter();  // Stop()
  MetricEmitter(const MetricEmitter&) = delete;
  MetricEmitter& operator=(const MetricEmitter&) = delete;

  // Collects and calls the callback now.
  void EmitNow();
  // Emits if `interval` has passed on the clock since the last emission (or creation).
  bool Tick();
  // A background thread emitting every interval (real time). Idempotent.
  void Start();
  // Stops the thread; after it returns the callback is not running and will not run again from it.
  void Stop();

 private:
  struct Impl;
  explicit MetricEmitter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace laneguard

#endif  // LANEGUARD_OBSERVE_METRIC_EMITTER_H_
