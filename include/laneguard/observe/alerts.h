// The spec's alerting rules, evaluated in-process against a ResourceBudgetManager.
//
//   auto alerts = laneguard::AlertEvaluator::Create(manager.get(), {.logger = log}).value();
//   alerts->Start();                          // evaluates every `interval` on its own thread
//   for (const laneguard::Alert& a : alerts->GetAlerts()) ...   // or Firing()
//
// Rules, by name and severity: the value compared (> fires) with the threshold. "The window" is
// the time since the previous evaluation (with the background thread, one `interval`).
// - LaneguardRssNearLimit, critical: RSS in MB > rss_fraction (0.9) x maxRssMb.
// - LaneguardGlobalConcurrencyHigh, critical: global active slots > global_fraction (0.9) x limit.
// - LaneguardTimeoutEscalations, critical: timeout escalations in the window > 0 (counted when
//   they happen, while the call may still run).
// - LaneguardErrorRateHigh, critical: failed / released calls in the window > error_rate (0.05).
//   A window with fewer than min_calls released calls leaves the alert as it was.
// - LaneguardHeapHigh, warning: heap used in MB > heapWarningMb.
// - LaneguardLaneConcurrencyHigh, warning, one per lane: lane active > lane_fraction (0.8) x limit.
// - LaneguardDurationIncreasing, warning: the mean duration of the calls released in the window >
//   (1 + duration_increase (0.2)) x the mean of the previous window. Unless both windows have
//   min_calls calls, the alert stays as it was.
// Memory figures are the manager's latest sample (GetMemorySnapshot()). The generated Prometheus
// rules (prometheus.h, GenerateAlertRulesYaml) state the same rules over the exported metrics.
//
// Every alert starts resolved (since the evaluator's creation). A transition is logged: firing at
// error (critical) or warning level, resolved at info, with the alert, value and threshold.
//
// Thread safety: all methods are thread-safe. Evaluate() calls are serialized.
#ifndef LANEGUARD_OBSERVE_ALERTS_H_
#define LANEGUARD_OBSERVE_ALERTS_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "laneguard/clock.h"
#include "laneguard/manager.h"
#include "laneguard/observe/json_logger.h"
#include "laneguard/result.h"

namespace laneguard {

struct AlertThresholds {
  double rss_fraction = 0.9;
  double global_fraction = 0.9;
  double error_rate = 0.05;
  double lane_fraction = 0.8;
  double duration_increase = 0.2;
  int64_t min_calls = 1;
};

enum class AlertSeverity { kWarning, kCritical };
enum class AlertState { kResolved, kFiring };
std::string_view ToString(AlertSeverity severity);  // "warning", "critical"
std::string_view ToString(AlertState state);        // "resolved", "firing"

struct Alert {
  std::string name;  // e.g. "LaneguardRssNearLimit"
  std::string lane;  // LaneguardLaneConcurrencyHigh only
  AlertSeverity severity = AlertSeverity::kWarning;
  AlertState state = AlertState::kResolved;
  int64_t since_unix_nanos = 0;  // when it entered `state`
  double value = 0;              // at the latest evaluation (units as in the rule table)
  double threshold = 0;          // the value it is compared with (> fires)
  std::string summary;           // a sentence with the figures
};

struct AlertEvaluatorOptions {
  AlertThresholds thresholds;
  // Transitions are logged here; none when null.
  std::shared_ptr<JsonLogger> logger;
  // Timestamps and Tick()'s schedule; the manager's clock when null. Must outlive the evaluator.
  const Clock* clock = nullptr;
  // Period of the background thread (Start()) and of Tick(). Must be >= 1 ms.
  std::chrono::milliseconds interval{15000};
};

class AlertEvaluator {
 public:
  // Registers an observer on `manager`, which must outlive the evaluator. Errors name the bad
  // option (interval, a threshold out of range).
  static Result<std::unique_ptr<AlertEvaluator>> Create(ResourceBudgetManager* manager,
                                                        AlertEvaluatorOptions options = {});
  ~AlertEvaluator();  // Stop()
  AlertEvaluator(const AlertEvaluator&) = delete;
  AlertEvaluator& operator=(const AlertEvaluator&) = delete;

  // Evaluates every rule now, closing the current window; returns every alert.
  std::vector<Alert> Evaluate();
  // Evaluates if `interval` has passed on the clock since the last evaluation (or creation).
  // Returns whether it did.
  bool Tick();
  // Every alert (firing and resolved), in rule order, lanes by name.
  std::vector<Alert> GetAlerts() const;
  std::vector<Alert> Firing() const;

  // A background thread calling Evaluate() every interval (real time). Idempotent.
  void Start();
  void Stop();

 private:
  struct Impl;
  explicit AlertEvaluator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace laneguard

#endif  // LANEGUARD_OBSERVE_ALERTS_H_
