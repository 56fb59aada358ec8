#include "laneguard/error.h"

#include <cerrno>
#include <string>

#include "laneguard/clock.h"

namespace laneguard {

std::string_view ToString(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
      return "invalid_argument";
    case ErrorCode::kNotFound:
      return "not_found";
    case ErrorCode::kAlreadyExists:
      return "already_exists";
    case ErrorCode::kFailedPrecondition:
      return "failed_precondition";
    case ErrorCode::kResourceExhausted:
      return "resource_exhausted";
    case ErrorCode::kDeadlineExceeded:
      return "deadline_exceeded";
    case ErrorCode::kUnavailable:
      return "unavailable";
    case ErrorCode::kCancelled:
      return "cancelled";
    case ErrorCode::kPermissionDenied:
      return "permission_denied";
    case ErrorCode::kInternal:
      return "internal";
  }
  return "unknown";
}

ErrorCode ErrorCodeForErrno(int errno_value) {
  switch (errno_value) {
    case ENOENT:
    case ENOTDIR:
      return ErrorCode::kNotFound;
    case EACCES:
    case EPERM:
    case EROFS:
      return ErrorCode::kPermissionDenied;
    case EEXIST:
      return ErrorCode::kAlreadyExists;
    case EISDIR:
      return ErrorCode::kFailedPrecondition;
    case EADDRINUSE:
    case EADDRNOTAVAIL:
    case EMFILE:
    case ENFILE:
    case ENOSPC:
      return ErrorCode::kUnavailable;
    default:
      return ErrorCode::kInternal;
  }
}

std::string_view ToString(RejectReason reason) {
  switch (reason) {
    case RejectReason::kLaneLimit:
      return "lane_limit";
    case RejectReason::kGlobalLimit:
      return "global_limit";
    case RejectReason::kMemoryLimit:
      return "memory_limit";
    case RejectReason::kUnknownLane:
      return "unknown_lane";
    case RejectReason::kShuttingDown:
      return "shutting_down";
    case RejectReason::kInvalidTimeout:
      return "invalid_timeout";
    case RejectReason::kQueueFull:
      return "queue_full";
    case RejectReason::kWaitTimeout:
      return "wait_timeout";
    case RejectReason::kCancelled:
      return "cancelled";
    case RejectReason::kTaskQuota:
      return "task_quota";
    case RejectReason::kInvalidWait:
      return "invalid_wait";
  }
  return "unknown";
}

std::string Rejection::message() const {
  std::string m(ToString(reason));
  m += ": ";
  switch (reason) {
    case RejectReason::kLaneLimit:
      m += "lane '" + lane + "' is at its limit (" + std::to_string(active) + "/" +
           std::to_string(limit) + " active)";
      break;
    case RejectReason::kGlobalLimit:
      m += "global concurrency is at its limit (" + std::to_string(active) + "/" +
           std::to_string(limit) + " active); lane '" + lane + "' has room";
      break;
    case RejectReason::kMemoryLimit:
      m += "RSS " + std::to_string(rss_mb) + " MB is above maxRssMb " + std::to_string(max_rss_mb) +
           " (lane '" + lane + "')";
      break;
    case RejectReason::kUnknownLane:
      m += "lane '" + lane + "' is not configured in laneConcurrencyLimits";
      break;
    case RejectReason::kShuttingDown:
      m += "the resource budget manager is shutting down (lane '" + lane + "')";
      break;
    case RejectReason::kInvalidTimeout:
      m += "timeoutMs must be > 0 and <= " + std::to_string(kMaxTimeoutMs) + ", got " +
           std::to_string(timeout_ms) + " (lane '" + lane + "')";
      break;
    case RejectReason::kQueueFull:
      m += "lane '" + lane + "' is full and its queue holds " + std::to_string(active) + "/" +
           std::to_string(limit) + " waiting requests";
      break;
    case RejectReason::kWaitTimeout:
      m += "no place in lane '" + lane + "' within the wait of " + std::to_string(timeout_ms) +
           " ms";
      break;
    case RejectReason::kCancelled:
      m += "the wait for lane '" + lane + "' was cancelled by its stop_token";
      break;
    case RejectReason::kTaskQuota:
      m += "the task holds " + std::to_string(active) + "/" + std::to_string(limit) +
           " slots, its quota (lane '" + lane + "')";
      break;
    case RejectReason::kInvalidWait:
      m += "waitMs must be >= 0 and <= " + std::to_string(kMaxTimeoutMs) + ", got " +
           std::to_string(timeout_ms) + " (lane '" + lane + "')";
      break;
  }
  return m;
}

std::string_view Error::field() const {
  if (const Rejection* r = rejection())
    return r->reason == RejectReason::kInvalidTimeout ? "timeoutMs"
           : r->reason == RejectReason::kInvalidWait  ? "waitMs"
                                                      : "lane";
  return std::get<Details>(detail_).field;
}

std::string Error::value() const {
  if (const Rejection* r = rejection())
    return r->reason == RejectReason::kInvalidTimeout || r->reason == RejectReason::kInvalidWait
               ? std::to_string(r->timeout_ms)
               : r->lane;
  return std::get<Details>(detail_).value;
}

std::string Error::message() const {
  if (const Rejection* r = rejection()) return r->message();
  return std::get<Details>(detail_).message;
}

Error Error::WithContext(std::string_view context) const {
  std::string prefixed(context);
  prefixed += ": ";
  prefixed += message();
  return Error(code(), std::string(field()), value(), std::move(prefixed));
}

}  // namespace laneguard
