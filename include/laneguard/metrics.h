// What the manager reports: per-call records, aggregated statistics, the concurrency status.
//
// Thread safety: all value types; the manager returns copies.
#ifndef LANEGUARD_METRICS_H_
#define LANEGUARD_METRICS_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "laneguard/error.h"

namespace laneguard {

// The spec's WorkerCallMetrics, one per released call.
struct WorkerCallMetrics {
  std::string call_id;  // "call-<n>", unique within a manager (see Slot::call_id)
  std::string task_id;
  std::string lane;
  double duration_ms = 0;
  bool success = false;
  std::string error_type;  // empty when none was given
  double rss_start_mb = 0;
  double rss_end_mb = 0;
  double rss_delta_mb = 0;
  double heap_start_mb = 0;
  double heap_end_mb = 0;
  double heap_delta_mb = 0;
  int concurrent_calls_at_start = 0;  // global active count including this call
  int concurrent_calls_at_end = 0;    // global active count including this call, before release
  bool timeout_reached = false;       // the warning deadline passed before release
  std::string timestamp;              // ISO 8601 of the call's start
  // laneguard additions.
  bool escalated = false;  // the hard deadline (timeout x escalation) passed before release
  int64_t timeout_ms = 0;
  int64_t timestamp_unix_nanos = 0;
  double wait_ms = 0;     // time spent in the lane's queue before the grant (waitMs)
  bool borrowed = false;  // the call ran on a place borrowed from other lanes (lane lending)
};

struct LaneStatistics {
  int64_t total_calls = 0;
  int64_t success_count = 0;
  int64_t failure_count = 0;
  int64_t timeout_count = 0;
  double average_duration_ms = 0;
  double p95_duration_ms = 0;  // over the calls of this lane still in the ring
  int64_t rejections = 0;
  int active = 0;
  int overrunning = 0;
  int limit = 0;
  // Waiting admission: the wait of the calls still in the ring (0 for those granted at once).
  double p50_wait_ms = 0, p95_wait_ms = 0, p99_wait_ms = 0;
  int queued = 0;  // requests waiting now
};

// The spec's statistics plus percentiles, rejections and per-lane figures. Totals and averages
// cover every call since the manager started; percentiles cover the calls still in the ring (the
// most recent metricsCapacity calls).
struct Statistics {
  int64_t total_calls = 0;
  int64_t success_count = 0;
  int64_t failure_count = 0;
  double average_duration_ms = 0;
  double average_rss_delta_mb = 0;
  int max_concurrent_calls = 0;
  int64_t timeout_count = 0;     // calls that reached their warning deadline
  int64_t escalation_count = 0;  // calls that reached their hard deadline
  double p50_duration_ms = 0;
  double p95_duration_ms = 0;
  double p99_duration_ms = 0;
  int64_t total_rejections = 0;
  std::map<std::string, int64_t, std::less<>> rejections_by_reason;  // every reason, zeros included
  int overrunning_calls = 0;  // active calls past their hard deadline
  std::map<std::string, LaneStatistics, std::less<>> lanes;
};

struct ConcurrencyCount {
  int active = 0;
  int limit = 0;
  int overrunning = 0;  // active slots past their hard deadline (still counted in active)
  int queued = 0;       // requests waiting for a place (lanes only)
  int queue_limit = 0;  // lanes only
  int borrowed = 0;     // lane lending: active places beyond the lane's limit (lanes only)
};

// The spec's getConcurrencyStatus(): {global: {active, limit}, lanes: {<lane>: {active, limit}}}.
struct ConcurrencyStatus {
  ConcurrencyCount global;
  std::map<std::string, ConcurrencyCount, std::less<>> lanes;
};

}  // namespace laneguard

#endif  // LANEGUARD_METRICS_H_
