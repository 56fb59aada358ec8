// Error: the one error type of laneguard, in the spirit of abseil's status codes. Every failure
// the library reports as a value (a bad config key, a missing file, a port already taken, an
// admission refusal) is an Error: a code a program can switch on, the field and value at fault,
// and a sentence for a person.
//
//   Result<Config> config = LoadConfigFile(path);
//   if (!config.ok() && config.error().code() == ErrorCode::kNotFound) { ... }
//   std::cerr << config.error().message();
//
// An admission refusal (Rejection) is an Error with a payload: rejection() returns it, and its
// message is only formatted when someone asks. Building an Error from a Rejection costs the
// Rejection plus a variant index, so it may sit on the admission path.
//
// Thread safety: plain values; distinct objects may be used from different threads freely, one
// object needs external synchronization like any std:: value type.
#ifndef LANEGUARD_ERROR_H_
#define LANEGUARD_ERROR_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace laneguard {

// What kind of failure, for a program to act on. The message says the rest.
enum class ErrorCode : uint8_t {
  // A value given by the caller is wrong whatever the system's state: a config key out of range,
  // a malformed flag, a bad job-file line, a per-call timeout <= 0.
  kInvalidArgument,
  // Something named does not exist: a file, a lane that is not configured.
  kNotFound,
  // Something to be created exists already.
  kAlreadyExists,
  // The call is valid but the state forbids it: a second GetResourceBudgetManager with a
  // different config, a path that is a directory where a file is needed.
  kFailedPrecondition,
  // A budget is used up: a lane's or the global concurrency limit, the memory limit.
  kResourceExhausted,
  // A deadline passed before the work was done.
  kDeadlineExceeded,
  // A service cannot be used now: the manager is shutting down, a port cannot be bound.
  kUnavailable,
  // The work was cancelled by its caller.
  kCancelled,
  // The system refused access (a file's permissions).
  kPermissionDenied,
  // A bug or an unexpected system failure.
  kInternal,
};
inline constexpr int kErrorCodeCount = 10;
// "invalid_argument", "not_found", "already_exists", "failed_precondition",
// "resource_exhausted", "deadline_exceeded", "unavailable", "cancelled", "permission_denied",
// "internal".
std::string_view ToString(ErrorCode code);
// The code for a failed system call's errno: ENOENT and ENOTDIR kNotFound, EACCES, EPERM and EROFS
// kPermissionDenied, EEXIST kAlreadyExists, EISDIR kFailedPrecondition, EADDRINUSE,
// EADDRNOTAVAIL, EMFILE, ENFILE and ENOSPC kUnavailable, anything else kInternal.
ErrorCode ErrorCodeForErrno(int errno_value);

// Why an acquisition was refused.
enum class RejectReason {
  kLaneLimit,       // the lane is at its concurrency limit
  kGlobalLimit,     // all lanes together are at the global limit
  kMemoryLimit,     // sampled RSS is above maxRssMb (memory guards on)
  kUnknownLane,     // the lane is not configured
  kShuttingDown,    // Shutdown() was called
  kInvalidTimeout,  // a per-call timeout <= 0 or above kMaxTimeoutMs was asked for
  // Waiting admission (ResourceBudgetManager::Acquire):
  kQueueFull,    // the lane's queue holds its queue limit already; nothing was queued
  kWaitTimeout,  // the wait asked for ran out before a place was free
  kCancelled,    // the wait's stop_token was stopped before a place was free
  kTaskQuota,    // the task id holds its quota of slots (taskConcurrencyLimit and per lane)
  kInvalidWait,  // a wait < 0 or above kMaxTimeoutMs was asked for
};
inline constexpr int kRejectReasonCount = 11;
// "lane_limit", "global_limit", "memory_limit", "unknown_lane", "shutting_down", "invalid_timeout",
// "queue_full", "wait_timeout", "cancelled", "task_quota", "invalid_wait".
std::string_view ToString(RejectReason reason);

// The code of an Error carrying a rejection for `reason`: the limits, queue_full and task_quota
// are kResourceExhausted, shutting_down kUnavailable, unknown_lane kNotFound, invalid_timeout and
// invalid_wait kInvalidArgument, wait_timeout kDeadlineExceeded, cancelled kCancelled.
constexpr ErrorCode CodeOf(RejectReason reason) {
  switch (reason) {
    case RejectReason::kLaneLimit:
    case RejectReason::kGlobalLimit:
    case RejectReason::kMemoryLimit:
    case RejectReason::kQueueFull:
    case RejectReason::kTaskQuota:
      return ErrorCode::kResourceExhausted;
    case RejectReason::kUnknownLane:
      return ErrorCode::kNotFound;
    case RejectReason::kShuttingDown:
      return ErrorCode::kUnavailable;
    case RejectReason::kInvalidTimeout:
    case RejectReason::kInvalidWait:
      return ErrorCode::kInvalidArgument;
    case RejectReason::kWaitTimeout:
      return ErrorCode::kDeadlineExceeded;
    case RejectReason::kCancelled:
      return ErrorCode::kCancelled;
  }
  return ErrorCode::kInternal;
}

// Why TryAcquire said no. The message is built on demand, so a rejection costs no formatting
// unless someone reads it.
struct Rejection {
  Rejection() = default;
  // The lane is copied straight into place: a rejection is built inside its Result, once.
  Rejection(RejectReason reason_in, std::string_view lane_in, int active_in = 0, int limit_in = 0,
            double rss_mb_in = 0, double max_rss_mb_in = 0, int64_t timeout_ms_in = 0)
      : reason(reason_in),
        lane(lane_in),
        active(active_in),
        limit(limit_in),
        rss_mb(rss_mb_in),
        max_rss_mb(max_rss_mb_in),
        timeout_ms(timeout_ms_in) {}

  RejectReason reason = RejectReason::kLaneLimit;
  std::string lane;  // as asked for
  int active = 0;  // lane_limit/global_limit: the count seen; queue_full: queued; task_quota: held
  int limit = 0;   // lane_limit/global_limit/queue_full/task_quota: the limit hit
  double rss_mb = 0, max_rss_mb = 0;  // memory_limit
  int64_t timeout_ms = 0;             // invalid_timeout; invalid_wait and wait_timeout: the wait

  // A sentence naming the reason, the lane and the numbers, e.g.
  // "lane_limit: lane 'file_write' is at its limit (4/4 active)".
  std::string message() const;
};

class Error {
 public:
  // `field`: what is at fault, "" if nothing in particular: a dotted camelCase config key
  // ("laneConcurrencyLimits.file_write"), an option ("logFile"), a flag ("--listen"), a job-file
  // position ("line 12: timeoutMs"). `value`: the offending value as written (config values as
  // JSON text), "" if none. `message`: a full sentence naming both.
  Error(ErrorCode code, std::string field, std::string value, std::string message)
      : detail_(std::in_place_type<Details>, code, std::move(field), std::move(value),
                std::move(message)) {}
  // An admission refusal is an Error with a payload.
  Error(Rejection rejection)  // NOLINT(google-explicit-constructor): implicit by design
      : detail_(std::in_place_type<Rejection>, std::move(rejection)) {}
  // The rejection built in place (the admission path: no move of its lane string).
  template <typename... A>
  explicit Error(std::in_place_type_t<Rejection> type, A&&... args)
      : detail_(type, std::forward<A>(args)...) {}

  ErrorCode code() const {
    const Rejection* r = rejection();
    return r != nullptr ? CodeOf(r->reason) : std::get<Details>(detail_).code;
  }
  // For a rejection: "timeoutMs" for invalid_timeout, "waitMs" for invalid_wait, else "lane".
  std::string_view field() const;
  // For a rejection: the timeout or wait asked for (invalid_timeout, invalid_wait), else the lane.
  // A copy, because a rejection's timeout is a number until asked for.
  std::string value() const;
  // For a rejection, Rejection::message(), built on demand.
  std::string message() const;
  // The admission refusal, or null.
  const Rejection* rejection() const { return std::get_if<Rejection>(&detail_); }

  // Prefixes the message with `context` and ": " (e.g. a file's path), keeping code, field and
  // value. A rejection becomes a plain Error with its message, code, field and value.
  Error WithContext(std::string_view context) const;

 private:
  struct Details {
    Details(ErrorCode code_in, std::string field_in, std::string value_in, std::string message_in)
        : code(code_in),
          field(std::move(field_in)),
          value(std::move(value_in)),
          message(std::move(message_in)) {}
    ErrorCode code;
    std::string field;
    std::string value;
    std::string message;
  };
  std::variant<Details, Rejection> detail_;
};

}  // namespace laneguard

#endif  // LANEGUARD_ERROR_H_
