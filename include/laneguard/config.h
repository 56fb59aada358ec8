// ResourceBudgetConfig: the spec's configuration, its defaults, and its JSON form.
//
// JSON uses the spec's camelCase keys, so a TypeScript orchestrator's config file loads unchanged:
//   {"maxRssMb": 1024, "globalConcurrencyLimit": 64, "laneConcurrencyLimits": {"tool_call": 16}}
// A partial document merges over a base (the defaults unless given): keys that are absent keep the
// base's value. `laneConcurrencyLimits` merges lane by lane, so {"custom_lane": 5} adds a lane and
// keeps the five default lanes; so do the other lane maps (laneQueueLimits,
// laneTaskConcurrencyLimits, laneLendablePercent, laneBorrowingLimitPercent), whose lanes must be
// lanes of the merged laneConcurrencyLimits.
//
// Lane limits above the global limit: a lane limit the document states explicitly must be <= the
// global limit (else an error). A lane limit inherited from the base that exceeds a lowered global
// limit is clamped to it, because the spec's own development example lowers the global limit to 8
// while file_read keeps its default of 16; clamping keeps that example loadable and changes nothing
// about what is admitted (the global limit binds first anyway).
//
// Thread safety: Config is a plain value type. The free functions are thread-safe.
#ifndef LANEGUARD_CONFIG_H_
#define LANEGUARD_CONFIG_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "laneguard/clock.h"
#include "laneguard/result.h"

namespace laneguard {

// kMaxTimeoutMs and kMaxEscalationFactor, the bounds of defaultTimeoutMs and
// timeoutEscalationFactor, are in laneguard/clock.h (a rejection's message names the first).
// Upper bound of globalConcurrencyLimit and of every lane limit.
inline constexpr int kMaxConcurrencyLimit = 1'000'000;
// Upper bound of maxRssMb, heapWarningMb and a job's maxRssMb: 1 PiB, beyond any machine, and far
// enough from overflow that megabytes convert to bytes (<< 20) in an int64_t.
inline constexpr int64_t kMaxMemoryMb = int64_t{1} << 30;
// Upper bound of metricsCapacity: 10x the default. Every CPU shard that records a call reserves a
// ring of this many records (about 200 bytes each), so the bound costs 20 MB a shard at most;
// 1e8 asked for 20 GB a shard and ended in bad_alloc.
inline constexpr int64_t kMaxMetricsCapacity = 100'000;
// Upper bound of memorySampleIntervalMs: an hour. A memory guard fed older samples guards nothing,
// and the interval in nanoseconds stays far from int64_t overflow.
inline constexpr int64_t kMaxMemorySampleIntervalMs = 3'600'000;
// Upper bound of timerTickMs: one second. Every timeout fires up to a tick late, so a tick of
// 100000000 ms meant timeouts never fired at all.
inline constexpr int64_t kMaxTimerTickMs = 1'000;

// Upper bound of every queue limit.
inline constexpr int kMaxQueueLimit = 1'000'000;
// Upper bound of laneBorrowingLimitPercent.
inline constexpr int kMaxBorrowingLimitPercent = 1'000;

// What a request over its task's quota gets (taskQuotaAction). JSON "refuse" | "queue".
enum class TaskQuotaAction { kRefuse, kQueue };
std::string_view ToString(TaskQuotaAction action);  // "refuse", "queue"

struct Config {
  // Admission is rejected with memory_limit while the sampled RSS is above this.
  // Within (0, kMaxMemoryMb].
  double max_rss_mb = 512;
  // Above this heap use, admission logs a warning and still admits. Within (0, kMaxMemoryMb].
  double heap_warning_mb = 400;
  // Per-lane concurrency limits. Lane names are case-sensitive.
  std::map<std::string, int, std::less<>> lane_concurrency_limits = {
      {"tool_call", 8}, {"file_read", 16}, {"file_write", 4}, {"critic", 3}, {"forecast_model", 1}};
  int global_concurrency_limit = 32;
  // Timeout used when TryAcquire is not given one. Warning phase at the timeout, escalation at
  // timeout x timeout_escalation_factor.
  // At most kMaxTimeoutMs.
  int64_t default_timeout_ms = 300000;
  // Within [1, kMaxEscalationFactor].
  double timeout_escalation_factor = 1.5;
  bool enable_memory_guards = true;
  bool enable_span_emission = true;
  double span_sample_rate = 1.0;

  // laneguard extensions (not in the spec; same camelCase convention in JSON).
  // Capacity of the ring of per-call records returned by GetMetrics().
  // Within [1, kMaxMetricsCapacity].
  int64_t metrics_capacity = 10000;
  // How often the background thread samples memory (RSS, heap, cgroup).
  // Within [1, kMaxMemorySampleIntervalMs].
  int64_t memory_sample_interval_ms = 1000;
  // Resolution of the timer thread: timeouts fire up to this late. Within [1, kMaxTimerTickMs].
  int64_t timer_tick_ms = 10;

  // --- Waiting admission ---
  // Most requests one lane keeps waiting (Acquire with a wait); one more is refused with
  // queue_full. 0: the lane never queues. Lanes not in lane_queue_limits use default_queue_limit.
  // Within [0, kMaxQueueLimit]; lane_queue_limits names only lanes of lane_concurrency_limits.
  int default_queue_limit = 1000;                             // defaultQueueLimit
  std::map<std::string, int, std::less<>> lane_queue_limits;  // laneQueueLimits
  // Aging: a waiting request gains one priority step per queue_aging_ms of waiting, so a low one
  // is served before any high one that arrived more than 2 x queue_aging_ms after it.
  // Within [1, kMaxTimeoutMs].
  int64_t queue_aging_ms = 1000;  // queueAgingMs
  // Per-task quota: most slots one task id holds at once, over all lanes (0: no quota), and per
  // task id within a lane (lanes listed only; they must be lanes of lane_concurrency_limits).
  // task_concurrency_limit within [0, kMaxConcurrencyLimit]; lane values within
  // [1, kMaxConcurrencyLimit].
  int task_concurrency_limit = 0;  // taskConcurrencyLimit
  std::map<std::string, int, std::less<>>
      lane_task_concurrency_limits;  // laneTaskConcurrencyLimits
  // What a request over its task's quota gets: refused with task_quota, or queued until the
  // task releases a slot.
  TaskQuotaAction task_quota_action = TaskQuotaAction::kRefuse;  // taskQuotaAction
  // Lane lending (off unless a lane is listed): a lane lends up to lane_lendable_percent of its
  // limit while those places are idle, and borrows up to lane_borrowing_limit_percent of its own
  // limit beyond it; the global limit always holds. Values within [0, 100] and
  // [0, kMaxBorrowingLimitPercent]; both maps name only lanes of lane_concurrency_limits.
  std::map<std::string, int, std::less<>> lane_lendable_percent;  // laneLendablePercent
  std::map<std::string, int, std::less<>>
      lane_borrowing_limit_percent;  // laneBorrowingLimitPercent

  bool operator==(const Config&) const = default;
};

// Checks every constraint and returns the first violation, or an empty optional-like ok result.
// Constraints: limits within [1, kMaxConcurrencyLimit], lane limits <= global limit,
// 0 <= spanSampleRate <= 1, timeoutEscalationFactor within [1, kMaxEscalationFactor],
// defaultTimeoutMs within [1, kMaxTimeoutMs], maxRssMb and heapWarningMb within (0, kMaxMemoryMb],
// metricsCapacity, memorySampleIntervalMs and timerTickMs within [1, their kMax...], lane names
// non-empty; defaultQueueLimit within [0, kMaxQueueLimit], queueAgingMs within [1, kMaxTimeoutMs],
// taskConcurrencyLimit within [0, kMaxConcurrencyLimit], taskQuotaAction a TaskQuotaAction;
// laneQueueLimits, laneTaskConcurrencyLimits, laneLendablePercent and laneBorrowingLimitPercent
// name only lanes of laneConcurrencyLimits, their values within [0, kMaxQueueLimit],
// [1, kMaxConcurrencyLimit], [0, 100] and [0, kMaxBorrowingLimitPercent]. Every numeric key has an
// upper bound, so a value that passes runs.
Result<Config> ValidateConfig(Config config);

// Parses `json` (an object with camelCase keys) and merges it over `base`. Errors name the key and
// the value: unknown key (with a "did you mean"), wrong type, impossible value, malformed JSON (key
// "" and the parser's position in the message). Values in messages are shortened to about 80
// characters, however long or deeply nested the input.
// Warnings (when `warnings` is given; the config still loads): a key given twice (the last value
// wins, as in JavaScript), and a lane name that looks like a misspelled known lane ("critc" would
// silently add a sixth lane).
Result<Config> ParseConfigJson(std::string_view json, const Config& base = Config{},
                               std::vector<std::string>* warnings = nullptr);

// Reads the file at `path` and parses it as above. Every error message starts with the path; an
// unreadable file (missing, no permission, a directory) is an error with key "" and the system's
// reason. Warnings are prefixed with the path too. At most 1 MiB is read (a pipe or /dev/zero
// included); a larger input is an error naming the path.
Result<Config> LoadConfigFile(const std::string& path, const Config& base = Config{},
                              std::vector<std::string>* warnings = nullptr);

// The complete config as a JSON object with camelCase keys, every field present (the effective
// config). Round trip: ParseConfigJson(ConfigToJson(c), base) == c whenever each of base's lane
// maps is a subset of c's (always true for the default base and a config built from it), because
// lane maps merge over the base rather than replace it.
std::string ConfigToJson(const Config& config, int indent = 2);

}  // namespace laneguard

#endif  // LANEGUARD_CONFIG_H_
