#include "laneguard/config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace laneguard {
namespace {

using nlohmann::json;

ConfigError Error(std::string key, std::string value, const std::string& why) {
  std::string message = key.empty() ? why : "config key '" + key + "'";
  if (!key.empty()) {
    if (!value.empty()) message += " = " + value;
    message += ": " + why;
  }
  return ConfigError{std::move(key), std::move(value), std::move(message)};
}

template <typename T>
std::string Text(const T& v) {
  return json(v).dump();
}

// The JSON type names used in wrong-type messages.
std::string TypeName(const json& j) { return j.type_name(); }

// Reads a number that must be an integer (1 and 1.0 are accepted, 1.5 is not). Integers outside
// int64_t are rejected (an unsigned value above INT64_MAX must not wrap to a negative one).
std::optional<int64_t> AsInteger(const json& j) {
  if (j.is_number_unsigned() &&
      j.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return std::nullopt;
  if (j.is_number_integer()) return j.get<int64_t>();
  if (j.is_number_float()) {
    double d = j.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15)
      return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

}  // namespace

Result<Config, ConfigError> ValidateConfig(Config c) {
  if (!(c.max_rss_mb > 0))
    return Error("maxRssMb", Text(c.max_rss_mb), "must be a number of megabytes > 0");
  if (!(c.heap_warning_mb > 0))
    return Error("heapWarningMb", Text(c.heap_warning_mb), "must be a number of megabytes > 0");
  // The upper bound keeps every shard's call table within the 24 bits a Slot has for it.
  if (c.global_concurrency_limit < 1 || c.global_concurrency_limit > kMaxConcurrencyLimit)
    return Error("globalConcurrencyLimit", Text(c.global_concurrency_limit),
                 "must be within [1, " + std::to_string(kMaxConcurrencyLimit) + "]");
  if (c.lane_concurrency_limits.empty())
    return Error("laneConcurrencyLimits", "{}", "must configure at least one lane");
  for (const auto& [lane, limit] : c.lane_concurrency_limits) {
    std::string key = "laneConcurrencyLimits." + lane;
    if (lane.empty()) return Error(key, Text(limit), "lane names must not be empty");
    if (limit < 1) return Error(key, Text(limit), "lane limit must be >= 1");
    if (limit > c.global_concurrency_limit)
      return Error(key, Text(limit),
                   "lane limit must not exceed globalConcurrencyLimit (" +
                       std::to_string(c.global_concurrency_limit) + ")");
  }
  if (c.default_timeout_ms <= 0 || c.default_timeout_ms > kMaxTimeoutMs)
    return Error("defaultTimeoutMs", Text(c.default_timeout_ms),
                 "must be > 0 and <= " + std::to_string(kMaxTimeoutMs) + " milliseconds (30 days)");
  if (!(c.timeout_escalation_factor >= 1 && c.timeout_escalation_factor <= kMaxEscalationFactor))
    return Error("timeoutEscalationFactor", Text(c.timeout_escalation_factor),
                 "must be >= 1 and <= 100");
  if (!(c.span_sample_rate >= 0 && c.span_sample_rate <= 1))
    return Error("spanSampleRate", Text(c.span_sample_rate), "must be within [0, 1]");
  if (c.metrics_capacity < 1)
    return Error("metricsCapacity", Text(c.metrics_capacity), "must be >= 1");
  if (c.memory_sample_interval_ms < 1)
    return Error("memorySampleIntervalMs", Text(c.memory_sample_interval_ms), "must be >= 1");
  if (c.timer_tick_ms < 1) return Error("timerTickMs", Text(c.timer_tick_ms), "must be >= 1");
  return c;
}

Result<Config, ConfigError> ParseConfigJson(std::string_view text, const Config& base) {
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers like 1e400
    return Error("", "", std::string("config is not valid JSON: ") + e.what());
  }
  if (!doc.is_object())
    return Error("", doc.dump(),
                 "config must be a JSON object, got " + TypeName(doc) + " " + doc.dump());

  Config c = base;
  std::set<std::string, std::less<>> explicit_lanes;

  auto number = [](const std::string& key, const json& v) -> Result<double, ConfigError> {
    if (!v.is_number()) return Error(key, v.dump(), "must be a number, got " + TypeName(v));
    return v.get<double>();
  };
  auto integer = [](const std::string& key, const json& v) -> Result<int64_t, ConfigError> {
    if (!v.is_number()) return Error(key, v.dump(), "must be an integer, got " + TypeName(v));
    auto i = AsInteger(v);
    if (!i) {
      const bool integral = v.is_number_integer() || v.get<double>() == std::floor(v.get<double>());
      return Error(key, v.dump(), integral ? "is out of range" : "must be an integer");
    }
    return *i;
  };
  auto boolean = [](const std::string& key, const json& v) -> Result<bool, ConfigError> {
    if (!v.is_boolean()) return Error(key, v.dump(), "must be true or false, got " + TypeName(v));
    return v.get<bool>();
  };

  for (const auto& [key, v] : doc.items()) {
    if (key == "maxRssMb" || key == "heapWarningMb" || key == "timeoutEscalationFactor" ||
        key == "spanSampleRate") {
      auto n = number(key, v);
      if (!n) return n.error();
      double& field = key == "maxRssMb"         ? c.max_rss_mb
                      : key == "heapWarningMb"  ? c.heap_warning_mb
                      : key == "spanSampleRate" ? c.span_sample_rate
                                                : c.timeout_escalation_factor;
      field = *n;
    } else if (key == "defaultTimeoutMs" || key == "metricsCapacity" ||
               key == "memorySampleIntervalMs" || key == "timerTickMs") {
      auto n = integer(key, v);
      if (!n) return n.error();
      int64_t& field = key == "defaultTimeoutMs"  ? c.default_timeout_ms
                       : key == "metricsCapacity" ? c.metrics_capacity
                       : key == "timerTickMs"     ? c.timer_tick_ms
                                                  : c.memory_sample_interval_ms;
      field = *n;
    } else if (key == "globalConcurrencyLimit") {
      auto n = integer(key, v);
      if (!n) return n.error();
      if (*n < 1 || *n > kMaxConcurrencyLimit)
        return Error(key, v.dump(),
                     "must be within [1, " + std::to_string(kMaxConcurrencyLimit) + "]");
      c.global_concurrency_limit = static_cast<int>(*n);
    } else if (key == "enableMemoryGuards" || key == "enableSpanEmission") {
      auto b = boolean(key, v);
      if (!b) return b.error();
      (key == "enableMemoryGuards" ? c.enable_memory_guards : c.enable_span_emission) = *b;
    } else if (key == "laneConcurrencyLimits") {
      if (!v.is_object())
        return Error(key, v.dump(), "must be an object of lane name to limit, got " + TypeName(v));
      for (const auto& [lane, limit] : v.items()) {
        std::string lane_key = key + "." + lane;
        auto n = integer(lane_key, limit);
        if (!n) return n.error();
        if (*n < 1 || *n > kMaxConcurrencyLimit)
          return Error(lane_key, limit.dump(), "lane limit must be >= 1");
        c.lane_concurrency_limits[lane] = static_cast<int>(*n);
        explicit_lanes.insert(lane);
      }
    } else {
      return Error(key, v.dump(), "unknown key");
    }
  }
  // Inherited lane limits follow a lowered global limit; see config.h for why.
  for (auto& [lane, limit] : c.lane_concurrency_limits) {
    if (!explicit_lanes.contains(lane) && limit > c.global_concurrency_limit)
      limit = c.global_concurrency_limit;
  }
  return ValidateConfig(std::move(c));
}

Result<Config, ConfigError> LoadConfigFile(const std::string& path, const Config& base) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error("", "", "cannot read config file '" + path + "'");
  std::ostringstream text;
  text << in.rdbuf();
  auto result = ParseConfigJson(text.str(), base);
  if (!result.ok()) {
    ConfigError e = result.error();
    e.message = path + ": " + e.message;
    return e;
  }
  return result;
}

std::string ConfigToJson(const Config& c, int indent) {
  json lanes = json::object();
  for (const auto& [lane, limit] : c.lane_concurrency_limits) lanes[lane] = limit;
  json doc = {
      {"maxRssMb", c.max_rss_mb},
      {"heapWarningMb", c.heap_warning_mb},
      {"laneConcurrencyLimits", lanes},
      {"globalConcurrencyLimit", c.global_concurrency_limit},
      {"defaultTimeoutMs", c.default_timeout_ms},
      {"timeoutEscalationFactor", c.timeout_escalation_factor},
      {"enableMemoryGuards", c.enable_memory_guards},
      {"enableSpanEmission", c.enable_span_emission},
      {"spanSampleRate", c.span_sample_rate},
      {"metricsCapacity", c.metrics_capacity},
      {"memorySampleIntervalMs", c.memory_sample_interval_ms},
      {"timerTickMs", c.timer_tick_ms},
  };
  return doc.dump(indent);
}

}  // namespace laneguard
