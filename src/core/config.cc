#include "laneguard/config.h"

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "base/json_input.h"

namespace laneguard {
namespace {

using internal::JsonPreview;
using internal::Truncate;
using nlohmann::json;

// Every config error is an invalid argument. Keys and values come from the document: both are
// shortened before they reach a message.
Error KeyError(std::string key, std::string value, const std::string& why) {
  key = Truncate(key);
  std::string message = key.empty() ? why : "config key '" + key + "'";
  if (!key.empty()) {
    if (!value.empty()) message += " = " + value;
    message += ": " + why;
  }
  return Error(ErrorCode::kInvalidArgument, std::move(key), std::move(value), std::move(message));
}

template <typename T>
std::string Text(const T& v) {
  return json(v).dump();
}

// "must be within [1, 1000000]".
std::string Within(int64_t low, int64_t high) {
  return "must be within [" + std::to_string(low) + ", " + std::to_string(high) + "]";
}

// The JSON type names used in wrong-type messages.
std::string TypeName(const json& j) { return j.type_name(); }

const std::vector<std::string>& KnownKeys() {
  static const std::vector<std::string> keys = {"maxRssMb",
                                                "heapWarningMb",
                                                "laneConcurrencyLimits",
                                                "globalConcurrencyLimit",
                                                "defaultTimeoutMs",
                                                "timeoutEscalationFactor",
                                                "enableMemoryGuards",
                                                "enableSpanEmission",
                                                "spanSampleRate",
                                                "metricsCapacity",
                                                "memorySampleIntervalMs",
                                                "timerTickMs",
                                                "defaultQueueLimit",
                                                "laneQueueLimits",
                                                "queueAgingMs",
                                                "taskConcurrencyLimit",
                                                "laneTaskConcurrencyLimits",
                                                "taskQuotaAction",
                                                "laneLendablePercent",
                                                "laneBorrowingLimitPercent"};
  return keys;
}

std::optional<Error> CheckMemoryMb(const char* key, double mb) {
  if (mb > 0 && mb <= static_cast<double>(kMaxMemoryMb)) return std::nullopt;
  return KeyError(key, Text(mb),
                  "must be a number of megabytes > 0 and <= " + std::to_string(kMaxMemoryMb));
}

std::optional<Error> CheckCount(const char* key, int64_t value, int64_t max) {
  if (value >= 1 && value <= max) return std::nullopt;
  return KeyError(key, Text(value), Within(1, max));
}

// An int field with its inclusive range, checked before the value narrows to an int.
struct IntRange {
  int* field;
  int low;
  int high;
};

// The lane maps other than laneConcurrencyLimits: each names only lanes of
// laneConcurrencyLimits, with values within [low, high].
struct LaneMap {
  const char* key;
  std::map<std::string, int, std::less<>>* lanes;
  int low;
  int high;
};

std::vector<LaneMap> LaneMaps(Config& c) {
  return {
      {"laneQueueLimits", &c.lane_queue_limits, 0, kMaxQueueLimit},
      {"laneTaskConcurrencyLimits", &c.lane_task_concurrency_limits, 1, kMaxConcurrencyLimit},
      {"laneLendablePercent", &c.lane_lendable_percent, 0, 100},
      {"laneBorrowingLimitPercent", &c.lane_borrowing_limit_percent, 0, kMaxBorrowingLimitPercent}};
}

std::optional<TaskQuotaAction> TaskQuotaActionFromString(std::string_view text) {
  for (TaskQuotaAction a : {TaskQuotaAction::kRefuse, TaskQuotaAction::kQueue}) {
    if (ToString(a) == text) return a;
  }
  return std::nullopt;
}

constexpr const char* kTaskQuotaActions = "must be \"refuse\" or \"queue\"";

std::optional<Error> CheckLaneMaps(Config& c) {
  // A vector, not std::views::keys: clang 14 (the thread-safety and tidy builds) cannot compile
  // libstdc++ 12's elements_view.
  std::vector<std::string> configured;
  for (const auto& [lane, limit] : c.lane_concurrency_limits) configured.push_back(lane);
  for (const LaneMap& m : LaneMaps(c)) {
    for (const auto& [lane, value] : *m.lanes) {
      const std::string key = std::string(m.key) + "." + lane;
      if (!c.lane_concurrency_limits.contains(lane))
        return KeyError(key, Text(value),
                        "lane '" + Truncate(lane) + "' is not in laneConcurrencyLimits" +
                            internal::DidYouMean(lane, configured));
      if (value < m.low || value > m.high) return KeyError(key, Text(value), Within(m.low, m.high));
    }
  }
  return std::nullopt;
}

// Lanes the document adds that look like a typo of a known lane (the defaults and the base's).
void WarnAboutLikelyMisspelledLanes(const std::set<std::string, std::less<>>& explicit_lanes,
                                    const Config& base, std::vector<std::string>* warnings) {
  std::set<std::string, std::less<>> known;
  for (const auto& [lane, limit] : Config{}.lane_concurrency_limits) known.insert(lane);
  for (const auto& [lane, limit] : base.lane_concurrency_limits) known.insert(lane);
  for (const std::string& lane : explicit_lanes) {
    if (known.contains(lane)) continue;
    if (auto match = internal::ClosestMatch(lane, known))
      warnings->push_back("config key 'laneConcurrencyLimits." + Truncate(lane) +
                          "' adds a new lane; did you mean '" + *match + "'?");
  }
}

void WarnAboutDuplicateKeys(const internal::ParsedJson& parsed,
                            std::vector<std::string>* warnings) {
  for (const std::string& key : parsed.duplicate_keys)
    warnings->push_back("config key '" + key + "' is given more than once; the last value is used");
  if (parsed.more_duplicate_keys > 0)
    warnings->push_back("and " + std::to_string(parsed.more_duplicate_keys) +
                        " more duplicate keys");
}

// Readers of one JSON value as the type a key needs; the error names the key and the value.
Result<double> ReadNumber(const std::string& key, const json& v) {
  if (!v.is_number()) return KeyError(key, JsonPreview(v), "must be a number, got " + TypeName(v));
  return v.get<double>();
}

Result<int64_t> ReadInteger(const std::string& key, const json& v) {
  if (!v.is_number())
    return KeyError(key, JsonPreview(v), "must be an integer, got " + TypeName(v));
  auto i = internal::JsonAsInteger(v);
  if (!i)
    return KeyError(key, JsonPreview(v),
                    internal::JsonIsIntegral(v) ? "is out of range" : "must be an integer");
  return *i;
}

Result<bool> ReadBoolean(const std::string& key, const json& v) {
  if (!v.is_boolean())
    return KeyError(key, JsonPreview(v), "must be true or false, got " + TypeName(v));
  return v.get<bool>();
}

// The field a key of each group sets, or nullptr when the key is not in that group.
double* NumberField(std::string_view key, Config& c) {
  if (key == "maxRssMb") return &c.max_rss_mb;
  if (key == "heapWarningMb") return &c.heap_warning_mb;
  if (key == "timeoutEscalationFactor") return &c.timeout_escalation_factor;
  if (key == "spanSampleRate") return &c.span_sample_rate;
  return nullptr;
}

int64_t* IntegerField(std::string_view key, Config& c) {
  if (key == "defaultTimeoutMs") return &c.default_timeout_ms;
  if (key == "metricsCapacity") return &c.metrics_capacity;
  if (key == "memorySampleIntervalMs") return &c.memory_sample_interval_ms;
  if (key == "timerTickMs") return &c.timer_tick_ms;
  if (key == "queueAgingMs") return &c.queue_aging_ms;
  return nullptr;
}

std::optional<IntRange> BoundedIntField(std::string_view key, Config& c) {
  if (key == "defaultQueueLimit") return IntRange{&c.default_queue_limit, 0, kMaxQueueLimit};
  if (key == "taskConcurrencyLimit")
    return IntRange{&c.task_concurrency_limit, 0, kMaxConcurrencyLimit};
  return std::nullopt;
}

std::optional<LaneMap> LaneMapField(std::string_view key, Config& c) {
  for (const LaneMap& m : LaneMaps(c)) {
    if (key == m.key) return m;
  }
  return std::nullopt;
}

bool* BooleanField(std::string_view key, Config& c) {
  if (key == "enableMemoryGuards") return &c.enable_memory_guards;
  if (key == "enableSpanEmission") return &c.enable_span_emission;
  return nullptr;
}

// globalConcurrencyLimit is range-checked here, before it narrows to an int.
std::optional<Error> ApplyGlobalLimit(const std::string& key, const json& v, Config& c) {
  auto n = ReadInteger(key, v);
  if (!n) return n.error();
  if (*n < 1 || *n > kMaxConcurrencyLimit)
    return KeyError(key, JsonPreview(v), Within(1, kMaxConcurrencyLimit));
  c.global_concurrency_limit = static_cast<int>(*n);
  return std::nullopt;
}

// An int key is range-checked here, before it narrows to an int.
std::optional<Error> ApplyBoundedInt(const std::string& key, const json& v, IntRange range) {
  auto n = ReadInteger(key, v);
  if (!n) return n.error();
  if (*n < range.low || *n > range.high)
    return KeyError(key, JsonPreview(v), Within(range.low, range.high));
  *range.field = static_cast<int>(*n);
  return std::nullopt;
}

// A lane map other than laneConcurrencyLimits merges lane by lane over the base's. Values are
// range-checked here (they narrow to an int); whether each lane exists is left to ValidateConfig,
// which sees the merged laneConcurrencyLimits.
std::optional<Error> ApplyLaneMap(const std::string& key, const json& v, const LaneMap& m) {
  if (!v.is_object())
    return KeyError(key, JsonPreview(v),
                    "must be an object of lane name to value, got " + TypeName(v));
  for (const auto& [lane, value] : v.items()) {
    std::string lane_key = key + "." + lane;
    auto n = ReadInteger(lane_key, value);
    if (!n) return n.error();
    if (*n < m.low || *n > m.high)
      return KeyError(lane_key, JsonPreview(value), Within(m.low, m.high));
    (*m.lanes)[lane] = static_cast<int>(*n);
  }
  return std::nullopt;
}

std::optional<Error> ApplyTaskQuotaAction(const std::string& key, const json& v, Config& c) {
  if (!v.is_string())
    return KeyError(key, JsonPreview(v), std::string(kTaskQuotaActions) + ", got " + TypeName(v));
  auto action = TaskQuotaActionFromString(v.get_ref<const std::string&>());
  if (!action) return KeyError(key, JsonPreview(v), kTaskQuotaActions);
  c.task_quota_action = *action;
  return std::nullopt;
}

// laneConcurrencyLimits merges lane by lane over the base's; the lanes it names are noted in
// `explicit_lanes` (they are not clamped, and are checked for likely misspellings).
std::optional<Error> ApplyLaneLimits(const std::string& key, const json& v, Config& c,
                                     std::set<std::string, std::less<>>& explicit_lanes) {
  if (!v.is_object())
    return KeyError(key, JsonPreview(v),
                    "must be an object of lane name to limit, got " + TypeName(v));
  for (const auto& [lane, limit] : v.items()) {
    std::string lane_key = key + "." + lane;
    auto n = ReadInteger(lane_key, limit);
    if (!n) return n.error();
    if (*n < 1 || *n > kMaxConcurrencyLimit)
      return KeyError(lane_key, JsonPreview(limit),
                      "lane limit " + Within(1, kMaxConcurrencyLimit));
    c.lane_concurrency_limits[lane] = static_cast<int>(*n);
    explicit_lanes.insert(lane);
  }
  return std::nullopt;
}

// Sets the field `key` names from `v`. Range checks other than the ones that guard a narrowing
// are left to ValidateConfig, which sees the whole config.
std::optional<Error> ApplyKey(const std::string& key, const json& v, Config& c,
                              std::set<std::string, std::less<>>& explicit_lanes) {
  if (double* field = NumberField(key, c)) {
    auto n = ReadNumber(key, v);
    if (!n) return n.error();
    *field = *n;
  } else if (int64_t* field = IntegerField(key, c)) {
    auto n = ReadInteger(key, v);
    if (!n) return n.error();
    *field = *n;
  } else if (bool* field = BooleanField(key, c)) {
    auto b = ReadBoolean(key, v);
    if (!b) return b.error();
    *field = *b;
  } else if (auto range = BoundedIntField(key, c)) {
    return ApplyBoundedInt(key, v, *range);
  } else if (auto lane_map = LaneMapField(key, c)) {
    return ApplyLaneMap(key, v, *lane_map);
  } else if (key == "taskQuotaAction") {
    return ApplyTaskQuotaAction(key, v, c);
  } else if (key == "globalConcurrencyLimit") {
    return ApplyGlobalLimit(key, v, c);
  } else if (key == "laneConcurrencyLimits") {
    return ApplyLaneLimits(key, v, c, explicit_lanes);
  } else {
    return KeyError(key, JsonPreview(v), "unknown key" + internal::DidYouMean(key, KnownKeys()));
  }
  return std::nullopt;
}

// Inherited lane limits follow a lowered global limit; see config.h for why.
void ClampInheritedLanes(const std::set<std::string, std::less<>>& explicit_lanes, Config& c) {
  for (auto& [lane, limit] : c.lane_concurrency_limits) {
    if (!explicit_lanes.contains(lane) && limit > c.global_concurrency_limit)
      limit = c.global_concurrency_limit;
  }
}

}  // namespace

std::string_view ToString(TaskQuotaAction action) {
  switch (action) {
    case TaskQuotaAction::kRefuse:
      return "refuse";
    case TaskQuotaAction::kQueue:
      return "queue";
  }
  return "unknown";
}

Result<Config> ValidateConfig(Config c) {
  if (auto e = CheckMemoryMb("maxRssMb", c.max_rss_mb)) return *e;
  if (auto e = CheckMemoryMb("heapWarningMb", c.heap_warning_mb)) return *e;
  // The upper bound keeps every shard's call table within the 24 bits a Slot has for it.
  if (auto e =
          CheckCount("globalConcurrencyLimit", c.global_concurrency_limit, kMaxConcurrencyLimit))
    return *e;
  if (c.lane_concurrency_limits.empty())
    return KeyError("laneConcurrencyLimits", "{}", "must configure at least one lane");
  for (const auto& [lane, limit] : c.lane_concurrency_limits) {
    std::string key = "laneConcurrencyLimits." + lane;
    if (lane.empty()) return KeyError(key, Text(limit), "lane names must not be empty");
    if (limit < 1 || limit > kMaxConcurrencyLimit)
      return KeyError(key, Text(limit), "lane limit " + Within(1, kMaxConcurrencyLimit));
    if (limit > c.global_concurrency_limit)
      return KeyError(key, Text(limit),
                      "lane limit must not exceed globalConcurrencyLimit (" +
                          std::to_string(c.global_concurrency_limit) + ")");
  }
  if (c.default_timeout_ms <= 0 || c.default_timeout_ms > kMaxTimeoutMs)
    return KeyError(
        "defaultTimeoutMs", Text(c.default_timeout_ms),
        "must be > 0 and <= " + std::to_string(kMaxTimeoutMs) + " milliseconds (30 days)");
  if (!(c.timeout_escalation_factor >= 1 && c.timeout_escalation_factor <= kMaxEscalationFactor))
    return KeyError("timeoutEscalationFactor", Text(c.timeout_escalation_factor),
                    "must be >= 1 and <= 100");
  if (!(c.span_sample_rate >= 0 && c.span_sample_rate <= 1))
    return KeyError("spanSampleRate", Text(c.span_sample_rate), "must be within [0, 1]");
  if (auto e = CheckCount("metricsCapacity", c.metrics_capacity, kMaxMetricsCapacity)) return *e;
  if (auto e = CheckCount("memorySampleIntervalMs", c.memory_sample_interval_ms,
                          kMaxMemorySampleIntervalMs))
    return *e;
  if (auto e = CheckCount("timerTickMs", c.timer_tick_ms, kMaxTimerTickMs)) return *e;
  if (c.default_queue_limit < 0 || c.default_queue_limit > kMaxQueueLimit)
    return KeyError("defaultQueueLimit", Text(c.default_queue_limit), Within(0, kMaxQueueLimit));
  if (auto e = CheckCount("queueAgingMs", c.queue_aging_ms, kMaxTimeoutMs)) return *e;
  if (c.task_concurrency_limit < 0 || c.task_concurrency_limit > kMaxConcurrencyLimit)
    return KeyError("taskConcurrencyLimit", Text(c.task_concurrency_limit),
                    Within(0, kMaxConcurrencyLimit));
  if (c.task_quota_action != TaskQuotaAction::kRefuse &&
      c.task_quota_action != TaskQuotaAction::kQueue)
    return KeyError("taskQuotaAction", Text(static_cast<int>(c.task_quota_action)),
                    kTaskQuotaActions);
  if (auto e = CheckLaneMaps(c)) return *e;
  return c;
}

Result<Config> ParseConfigJson(std::string_view text, const Config& base,
                               std::vector<std::string>* warnings) {
  internal::ParsedJson parsed = internal::ParseJsonNotingDuplicates(text);
  if (!parsed.error.empty()) return KeyError("", "", "config is not valid JSON: " + parsed.error);
  const json& doc = parsed.value;
  if (!doc.is_object())
    return KeyError("", JsonPreview(doc),
                    "config must be a JSON object, got " + TypeName(doc) + " " + JsonPreview(doc));

  Config c = base;
  std::set<std::string, std::less<>> explicit_lanes;
  for (const auto& [key, v] : doc.items()) {
    if (auto e = ApplyKey(key, v, c, explicit_lanes)) return *e;
  }
  ClampInheritedLanes(explicit_lanes, c);
  auto result = ValidateConfig(std::move(c));
  if (result.ok() && warnings != nullptr) {
    WarnAboutDuplicateKeys(parsed, warnings);
    WarnAboutLikelyMisspelledLanes(explicit_lanes, base, warnings);
  }
  return result;
}

Result<Config> LoadConfigFile(const std::string& path, const Config& base,
                              std::vector<std::string>* warnings) {
  std::string text;
  internal::InputError error;
  // At most kMaxConfigFileBytes is read, and the error says so and names the path.
  if (!internal::ReadInputFile(path, &text, &error, internal::InputCaps{}))
    return Error(error.code, "", "", std::move(error.message));
  std::vector<std::string> own_warnings;
  auto result = ParseConfigJson(text, base, warnings != nullptr ? &own_warnings : nullptr);
  if (!result.ok()) return result.error().WithContext(path);
  for (std::string& w : own_warnings) warnings->push_back(path + ": " + std::move(w));
  return result;
}

std::string ConfigToJson(const Config& c, int indent) {
  const auto lane_object = [](const std::map<std::string, int, std::less<>>& map) {
    json object = json::object();
    for (const auto& [lane, value] : map) object[lane] = value;
    return object;
  };
  json doc = {
      {"maxRssMb", c.max_rss_mb},
      {"heapWarningMb", c.heap_warning_mb},
      {"laneConcurrencyLimits", lane_object(c.lane_concurrency_limits)},
      {"globalConcurrencyLimit", c.global_concurrency_limit},
      {"defaultTimeoutMs", c.default_timeout_ms},
      {"timeoutEscalationFactor", c.timeout_escalation_factor},
      {"enableMemoryGuards", c.enable_memory_guards},
      {"enableSpanEmission", c.enable_span_emission},
      {"spanSampleRate", c.span_sample_rate},
      {"metricsCapacity", c.metrics_capacity},
      {"memorySampleIntervalMs", c.memory_sample_interval_ms},
      {"timerTickMs", c.timer_tick_ms},
      {"defaultQueueLimit", c.default_queue_limit},
      {"laneQueueLimits", lane_object(c.lane_queue_limits)},
      {"queueAgingMs", c.queue_aging_ms},
      {"taskConcurrencyLimit", c.task_concurrency_limit},
      {"laneTaskConcurrencyLimits", lane_object(c.lane_task_concurrency_limits)},
      {"taskQuotaAction", std::string(ToString(c.task_quota_action))},
      {"laneLendablePercent", lane_object(c.lane_lendable_percent)},
      {"laneBorrowingLimitPercent", lane_object(c.lane_borrowing_limit_percent)},
  };
  return doc.dump(indent);
}

}  // namespace laneguard
