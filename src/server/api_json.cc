#include "server/api_json.h"

#include <cmath>
#include <limits>
#include <utility>

namespace laneguard::server {

using json = nlohmann::json;

namespace {

json CountToJson(const ConcurrencyCount& c, bool lane) {
  json out = {{"active", c.active}, {"limit", c.limit}, {"overrunning", c.overrunning}};
  if (lane) {
    out["queued"] = c.queued;
    out["queueLimit"] = c.queue_limit;
    out["borrowed"] = c.borrowed;
  }
  return out;
}

}  // namespace

json StatusToJson(const ConcurrencyStatus& status) {
  json lanes = json::object();
  for (const auto& [name, count] : status.lanes) lanes[name] = CountToJson(count, true);
  return {{"global", CountToJson(status.global, false)}, {"lanes", std::move(lanes)}};
}

json StatisticsToJson(const Statistics& s) {
  json lanes = json::object();
  for (const auto& [name, l] : s.lanes) {
    lanes[name] = {{"totalCalls", l.total_calls},
                   {"successCount", l.success_count},
                   {"failureCount", l.failure_count},
                   {"timeoutCount", l.timeout_count},
                   {"averageDurationMs", l.average_duration_ms},
                   {"p95DurationMs", l.p95_duration_ms},
                   {"rejections", l.rejections},
                   {"active", l.active},
                   {"overrunning", l.overrunning},
                   {"limit", l.limit},
                   {"p50WaitMs", l.p50_wait_ms},
                   {"p95WaitMs", l.p95_wait_ms},
                   {"p99WaitMs", l.p99_wait_ms},
                   {"queued", l.queued}};
  }
  return {{"totalCalls", s.total_calls},
          {"successCount", s.success_count},
          {"failureCount", s.failure_count},
          {"averageDurationMs", s.average_duration_ms},
          {"averageRssDeltaMb", s.average_rss_delta_mb},
          {"maxConcurrentCalls", s.max_concurrent_calls},
          {"timeoutCount", s.timeout_count},
          {"escalationCount", s.escalation_count},
          {"p50DurationMs", s.p50_duration_ms},
          {"p95DurationMs", s.p95_duration_ms},
          {"p99DurationMs", s.p99_duration_ms},
          {"totalRejections", s.total_rejections},
          {"rejectionsByReason", s.rejections_by_reason},
          {"overrunningCalls", s.overrunning_calls},
          {"lanes", std::move(lanes)}};
}

HttpResponse JsonResponse(int status, const json& body) {
  HttpResponse response;
  response.status = status;
  // Invalid UTF-8 from a client (a task id) is replaced rather than failing the answer.
  response.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  response.body += '\n';
  return response;
}

HttpResponse InvalidRequest(std::string_view field, std::string_view message) {
  return JsonResponse(400, {{"error", "invalid_request"},
                            {"field", std::string(field)},
                            {"message", std::string(message)}});
}

HttpResponse ErrorResponse(int status, std::string_view code, std::string_view message) {
  return JsonResponse(status, {{"error", std::string(code)}, {"message", std::string(message)}});
}

std::string Shown(const json& value) {
  if (value.is_object()) return "{...}";
  if (value.is_array()) return "[...]";
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  constexpr size_t kMax = 80;
  if (text.size() > kMax) text = text.substr(0, kMax) + "...";
  return text;
}

void FieldReader::Fail(std::string_view key, std::string message) {
  if (!error_) error_ = ApiError{std::string(key), std::move(message)};
}

const json* FieldReader::Find(std::string_view key) {
  if (error_) return nullptr;
  const auto it = object_.find(key);
  if (it == object_.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<std::string> FieldReader::String(std::string_view key, size_t max_bytes) {
  const json* v = Find(key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_string()) {
    Fail(key, std::string(key) + " = " + Shown(*v) + ": must be a string");
    return std::nullopt;
  }
  const auto& s = v->get_ref<const std::string&>();
  if (s.size() > max_bytes) {
    Fail(key, std::string(key) + " = " + Shown(*v) + ": longer than " + std::to_string(max_bytes) +
                  " bytes");
    return std::nullopt;
  }
  return s;
}

std::optional<int64_t> FieldReader::Integer(std::string_view key, int64_t min, int64_t max) {
  const json* v = Find(key);
  if (v == nullptr) return std::nullopt;
  const std::string range = "[" + std::to_string(min) + ", " + std::to_string(max) + "]";
  // 1.0 is accepted as 1 (JavaScript has one number type); 1.5 is not.
  const bool whole =
      v->is_number_integer() ||
      (v->is_number_float() && std::isfinite(v->get<double>()) &&
       std::trunc(v->get<double>()) == v->get<double>() && std::fabs(v->get<double>()) < 9.0e15);
  if (!whole) {
    Fail(key, std::string(key) + " = " + Shown(*v) + ": must be an integer in " + range);
    return std::nullopt;
  }
  int64_t n = 0;
  if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    n = u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
            ? std::numeric_limits<int64_t>::max()
            : static_cast<int64_t>(u);
  } else if (v->is_number_integer()) {
    n = v->get<int64_t>();
  } else {
    n = static_cast<int64_t>(v->get<double>());
  }
  if (n < min || n > max) {
    Fail(key, std::string(key) + " = " + Shown(*v) + ": must be within " + range);
    return std::nullopt;
  }
  return n;
}

std::optional<double> FieldReader::Number(std::string_view key, double min, double max) {
  const json* v = Find(key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number() || !std::isfinite(v->get<double>()) || v->get<double>() < min ||
      v->get<double>() > max) {
    Fail(key, std::string(key) + " = " + Shown(*v) + ": must be a number within [" +
                  Shown(json(min)) + ", " + Shown(json(max)) + "]");
    return std::nullopt;
  }
  return v->get<double>();
}

std::optional<bool> FieldReader::Bool(std::string_view key) {
  const json* v = Find(key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_boolean()) {
    Fail(key, std::string(key) + " = " + Shown(*v) + ": must be true or false");
    return std::nullopt;
  }
  return v->get<bool>();
}

}  // namespace laneguard::server
