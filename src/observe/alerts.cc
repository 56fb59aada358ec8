#include "laneguard/observe/alerts.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "laneguard/internal/mutex.h"
#include "observe/periodic_thread.h"

namespace laneguard {
namespace {

constexpr int64_t kNanosPerMs = 1'000'000;

// Cumulative counts of released calls, kept by an observer so that every call counts in exactly
// one evaluation window (the manager's statistics are cumulative too, but escalations there count
// only once the call is released; here they count when they happen).
struct WindowCounters {
  std::atomic<uint64_t> calls{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<int64_t> duration_nanos{0};
  std::atomic<uint64_t> escalations{0};
};

class WindowObserver final : public Observer {
 public:
  explicit WindowObserver(std::shared_ptr<WindowCounters> c) : c_(std::move(c)) {}
  void OnEvent(const CallEvent& event) override {
    if (event.kind == EventKind::kTimeoutEscalation) {
      c_->escalations.fetch_add(1, std::memory_order_relaxed);
    } else if (event.kind == EventKind::kReleased && event.record != nullptr) {
      c_->calls.fetch_add(1, std::memory_order_relaxed);
      if (!event.record->success) c_->errors.fetch_add(1, std::memory_order_relaxed);
      const double nanos = std::clamp(event.record->duration_ms * 1e6, 0.0, 9.0e15);
      c_->duration_nanos.fetch_add(static_cast<int64_t>(nanos), std::memory_order_relaxed);
    }
  }

 private:
  std::shared_ptr<WindowCounters> c_;
};

// Four significant digits: enough for a log line or an error, never "2.000000".
std::string Fixed(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

Error BadOption(const std::string& key, double value, const std::string& rule) {
  const std::string text = Fixed(value);
  return Error{ErrorCode::kInvalidArgument, key, text,
               "option '" + key + "' = " + text + ": " + rule};
}

}  // namespace

std::string_view ToString(AlertSeverity severity) {
  return severity == AlertSeverity::kCritical ? "critical" : "warning";
}
std::string_view ToString(AlertState state) {
  return state == AlertState::kFiring ? "firing" : "resolved";
}

struct AlertEvaluator::Impl {
  ResourceBudgetManager* manager = nullptr;
  AlertEvaluatorOptions options;
  const Clock* clock = nullptr;
  std::shared_ptr<WindowCounters> counters;

  mutable internal::Mutex mu;
  std::vector<Alert> alerts GUARDED_BY(mu);
  int64_t last_evaluation_mono GUARDED_BY(mu) = 0;
  uint64_t seen_calls GUARDED_BY(mu) = 0;
  uint64_t seen_errors GUARDED_BY(mu) = 0;
  uint64_t seen_escalations GUARDED_BY(mu) = 0;
  int64_t seen_duration_nanos GUARDED_BY(mu) = 0;
  // Of the previous window, when it had min_calls calls.
  std::optional<double> previous_mean_ms GUARDED_BY(mu);

  internal::PeriodicThread thread;

  Alert& Find(std::string_view name, std::string_view lane = {}) REQUIRES(mu) {
    for (Alert& a : alerts) {
      if (a.name == name && a.lane == lane) return a;
    }
    return alerts.front();  // unreachable: every alert is created in Create()
  }

  // Sets the alert's value and, when `firing` differs from its state, moves it and logs.
  void Update(Alert& a, std::optional<bool> firing, double value, double threshold,
              std::string summary, int64_t now_unix) REQUIRES(mu) {
    a.value = value;
    a.threshold = threshold;
    a.summary = std::move(summary);
    if (!firing.has_value() || *firing == (a.state == AlertState::kFiring)) return;
    a.state = *firing ? AlertState::kFiring : AlertState::kResolved;
    a.since_unix_nanos = now_unix;
    if (!options.logger) return;
    const LogLevel level = !*firing                                 ? LogLevel::kInfo
                           : a.severity == AlertSeverity::kCritical ? LogLevel::kError
                                                                    : LogLevel::kWarning;
    options.logger->Log(level, *firing ? "Alert firing" : "Alert resolved",
                        {{"alert", std::string_view(a.name)},
                         {"severity", ToString(a.severity)},
                         {"lane", std::string_view(a.lane)},
                         {"value", a.value},
                         {"threshold", a.threshold},
                         {"summary", std::string_view(a.summary)}});
  }

  // What the calls since the last evaluation did.
  struct Window {
    uint64_t calls = 0, errors = 0, escalations = 0;
    int64_t nanos = 0;
  };
  // The window since the last evaluation; the next one starts now.
  Window TakeWindow() REQUIRES(mu) {
    const uint64_t calls = counters->calls.load(std::memory_order_relaxed);
    const uint64_t errors = counters->errors.load(std::memory_order_relaxed);
    const uint64_t escalations = counters->escalations.load(std::memory_order_relaxed);
    const int64_t duration_nanos = counters->duration_nanos.load(std::memory_order_relaxed);
    const Window w{calls - seen_calls, errors - seen_errors, escalations - seen_escalations,
                   duration_nanos - seen_duration_nanos};
    seen_calls = calls;
    seen_errors = errors;
    seen_escalations = escalations;
    seen_duration_nanos = duration_nanos;
    return w;
  }

  void EvaluateLocked() REQUIRES(mu) {
    const int64_t now_unix = clock->UnixNanos();
    last_evaluation_mono = clock->MonotonicNanos();
    const AlertThresholds& t = options.thresholds;
    const Config& config = manager->config();
    const MemorySnapshot memory = manager->GetMemorySnapshot();
    const ConcurrencyStatus status = manager->GetConcurrencyStatus();
    const Window w = TakeWindow();
    const uint64_t window_calls = w.calls;
    const uint64_t window_errors = w.errors;
    const uint64_t window_escalations = w.escalations;
    const bool enough_calls = window_calls >= static_cast<uint64_t>(t.min_calls);

    const double rss_threshold = t.rss_fraction * config.max_rss_mb;
    Update(
        Find("LaneguardRssNearLimit"), memory.rss_mb > rss_threshold, memory.rss_mb, rss_threshold,
        "RSS " + Fixed(memory.rss_mb) + " MB, threshold " + Fixed(rss_threshold) + " MB", now_unix);

    const double global_threshold = t.global_fraction * status.global.limit;
    Update(Find("LaneguardGlobalConcurrencyHigh"), status.global.active > global_threshold,
           status.global.active, global_threshold,
           std::to_string(status.global.active) + " of " + std::to_string(status.global.limit) +
               " global slots active",
           now_unix);

    Update(Find("LaneguardTimeoutEscalations"), window_escalations > 0,
           static_cast<double>(window_escalations), 0,
           std::to_string(window_escalations) + " timeout escalations since the last evaluation",
           now_unix);

    const double error_rate =
        window_calls > 0 ? static_cast<double>(window_errors) / static_cast<double>(window_calls)
                         : 0;
    Update(Find("LaneguardErrorRateHigh"),
           enough_calls ? std::optional<bool>(error_rate > t.error_rate) : std::nullopt, error_rate,
           t.error_rate,
           std::to_string(window_errors) + " of " + std::to_string(window_calls) +
               " calls failed since the last evaluation",
           now_unix);

    Update(Find("LaneguardHeapHigh"), memory.heap_used_mb > config.heap_warning_mb,
           memory.heap_used_mb, config.heap_warning_mb,
           "heap " + Fixed(memory.heap_used_mb) + " MB, heapWarningMb " +
               Fixed(config.heap_warning_mb),
           now_unix);

    for (const auto& [lane, count] : status.lanes) {
      const double threshold = t.lane_fraction * count.limit;
      Update(Find("LaneguardLaneConcurrencyHigh", lane), count.active > threshold, count.active,
             threshold,
             "lane " + lane + ": " + std::to_string(count.active) + " of " +
                 std::to_string(count.limit) + " slots active",
             now_unix);
    }

    UpdateDurationAlert(w, enough_calls, now_unix);
  }

  // The mean duration of this window against the previous one's (both need min_calls calls).
  void UpdateDurationAlert(const Window& w, bool enough_calls, int64_t now_unix) REQUIRES(mu) {
    const AlertThresholds& t = options.thresholds;
    Alert& duration = Find("LaneguardDurationIncreasing");
    std::optional<double> mean_ms;
    if (enough_calls) mean_ms = static_cast<double>(w.nanos) / 1e6 / static_cast<double>(w.calls);
    if (mean_ms && previous_mean_ms) {
      const double threshold = (1 + t.duration_increase) * *previous_mean_ms;
      Update(duration, *mean_ms > threshold, *mean_ms, threshold,
             "mean duration " + Fixed(*mean_ms) + " ms, previous window " +
                 Fixed(*previous_mean_ms) + " ms",
             now_unix);
    } else {
      Update(duration, std::nullopt, mean_ms.value_or(0), duration.threshold,
             "too few calls in this or the previous window to compare mean durations", now_unix);
    }
    previous_mean_ms = mean_ms;
  }
};

AlertEvaluator::AlertEvaluator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AlertEvaluator::~AlertEvaluator() { Stop(); }

Result<std::unique_ptr<AlertEvaluator>> AlertEvaluator::Create(ResourceBudgetManager* manager,
                                                               AlertEvaluatorOptions options) {
  if (manager == nullptr) {
    return Error{ErrorCode::kInvalidArgument, "manager", "null",
                 "AlertEvaluator needs a manager, got null"};
  }
  const AlertThresholds& t = options.thresholds;
  for (const auto& [key, value] : {std::pair<const char*, double>{"rssFraction", t.rss_fraction},
                                   {"globalFraction", t.global_fraction},
                                   {"laneFraction", t.lane_fraction}}) {
    if (!(value > 0)) return BadOption(key, value, "must be > 0");
  }
  if (!(t.error_rate >= 0 && t.error_rate <= 1)) {
    return BadOption("errorRate", t.error_rate, "must be within [0, 1]");
  }
  if (!(t.duration_increase >= 0)) {
    return BadOption("durationIncrease", t.duration_increase, "must be >= 0");
  }
  if (t.min_calls < 1)
    return BadOption("minCalls", static_cast<double>(t.min_calls), "must be >= 1");
  if (options.interval.count() < 1) {
    return BadOption("intervalMs", static_cast<double>(options.interval.count()), "must be >= 1");
  }

  auto impl = std::make_unique<Impl>();
  impl->manager = manager;
  impl->clock = options.clock != nullptr ? options.clock : &manager->clock();
  impl->options = std::move(options);
  impl->counters = std::make_shared<WindowCounters>();
  // Not shared yet; locked for the analysis' sake (once, at creation).
  internal::MutexLock lock(impl->mu);
  impl->last_evaluation_mono = impl->clock->MonotonicNanos();
  const int64_t now_unix = impl->clock->UnixNanos();
  const auto add = [&](const char* name, AlertSeverity severity, std::string lane = {})
                       REQUIRES(impl->mu) {
                         Alert a;
                         a.name = name;
                         a.lane = std::move(lane);
                         a.severity = severity;
                         a.since_unix_nanos = now_unix;
                         impl->alerts.push_back(std::move(a));
                       };
  add("LaneguardRssNearLimit", AlertSeverity::kCritical);
  add("LaneguardGlobalConcurrencyHigh", AlertSeverity::kCritical);
  add("LaneguardTimeoutEscalations", AlertSeverity::kCritical);
  add("LaneguardErrorRateHigh", AlertSeverity::kCritical);
  add("LaneguardHeapHigh", AlertSeverity::kWarning);
  for (const auto& [lane, limit] : manager->config().lane_concurrency_limits) {
    add("LaneguardLaneConcurrencyHigh", AlertSeverity::kWarning, lane);
  }
  add("LaneguardDurationIncreasing", AlertSeverity::kWarning);
  manager->AddObserver(std::make_shared<WindowObserver>(impl->counters));
  return std::unique_ptr<AlertEvaluator>(new AlertEvaluator(std::move(impl)));
}

std::vector<Alert> AlertEvaluator::Evaluate() {
  internal::MutexLock guard(impl_->mu);
  impl_->EvaluateLocked();
  return impl_->alerts;
}

bool AlertEvaluator::Tick() {
  internal::MutexLock guard(impl_->mu);
  const int64_t due = impl_->last_evaluation_mono + impl_->options.interval.count() * kNanosPerMs;
  if (impl_->clock->MonotonicNanos() < due) return false;
  impl_->EvaluateLocked();
  return true;
}

std::vector<Alert> AlertEvaluator::GetAlerts() const {
  internal::MutexLock guard(impl_->mu);
  return impl_->alerts;
}

std::vector<Alert> AlertEvaluator::Firing() const {
  internal::MutexLock guard(impl_->mu);
  std::vector<Alert> out;
  for (const Alert& a : impl_->alerts) {
    if (a.state == AlertState::kFiring) out.push_back(a);
  }
  return out;
}

void AlertEvaluator::Start() {
  impl_->thread.Start(impl_->options.interval, [this] { Evaluate(); });
}

void AlertEvaluator::Stop() { impl_->thread.Stop(); }

}  // namespace laneguard
