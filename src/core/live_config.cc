#include "core/live_config.h"

#include <nlohmann/json.hpp>
#include <string>
#include <utility>

namespace laneguard::internal {
namespace {

template <typename T>
std::string Text(const T& value) {
  return nlohmann::json(value).dump();
}

// Invalid argument, as ValidateConfig's errors are: a reload that asks for the impossible is the
// caller's mistake whatever the manager's state, and the daemon answers it the same way (400).
Error LiveError(std::string key, std::string value, const std::string& why) {
  std::string message = "config key '" + key + "' = " + value + ": " + why;
  return Error(ErrorCode::kInvalidArgument, std::move(key), std::move(value), std::move(message));
}

std::string LaneList(const Config& c) {
  std::string out;
  for (const auto& [lane, limit] : c.lane_concurrency_limits) {
    if (!out.empty()) out += ", ";
    out += lane;
  }
  return out;
}

std::optional<Error> CheckLanes(const Config& from, const Config& to) {
  for (const auto& [lane, limit] : to.lane_concurrency_limits) {
    if (!from.lane_concurrency_limits.contains(lane))
      return LiveError("laneConcurrencyLimits", Text(lane),
                       "lane '" + lane + "' cannot be added while running (the lanes are " +
                           LaneList(from) + "); restart to add it");
  }
  for (const auto& [lane, limit] : from.lane_concurrency_limits) {
    if (!to.lane_concurrency_limits.contains(lane))
      return LiveError("laneConcurrencyLimits", Text(lane),
                       "lane '" + lane + "' cannot be removed while running (the lanes are " +
                           LaneList(from) + "); restart to remove it");
  }
  return std::nullopt;
}

template <typename T>
std::optional<Error> CheckFixed(const char* key, const T& from, const T& to) {
  if (from == to) return std::nullopt;
  return LiveError(key, Text(to),
                   "cannot change while running (it is " + Text(from) + "); restart to change it");
}

}  // namespace

std::optional<Error> CheckLiveChange(const Config& from, const Config& to, int max_global_limit) {
  if (auto e = CheckLanes(from, to)) return e;
  if (to.global_concurrency_limit > max_global_limit)
    return LiveError("globalConcurrencyLimit", Text(to.global_concurrency_limit),
                     "above " + std::to_string(max_global_limit) +
                         ", the most this manager was started for (it is " +
                         Text(from.global_concurrency_limit) +
                         "; ManagerOptions::max_global_limit"
                         "); restart to raise it past " +
                         std::to_string(max_global_limit));
  if (auto e = CheckFixed("metricsCapacity", from.metrics_capacity, to.metrics_capacity)) return e;
  if (auto e = CheckFixed("timerTickMs", from.timer_tick_ms, to.timer_tick_ms)) return e;
  if (auto e = CheckFixed("enableSpanEmission", from.enable_span_emission, to.enable_span_emission))
    return e;
  if (auto e = CheckFixed("spanSampleRate", from.span_sample_rate, to.span_sample_rate)) return e;
  return std::nullopt;
}

}  // namespace laneguard::internal
