// JSON shapes of the daemon's API (docs/serve.md) that are plain conversions of the manager's
// values, and the strict reading of request fields: a wrong type or range is an ApiError naming
// the field and the value, never a silently used default.
//
// Thread safety: pure functions.
#ifndef LANEGUARD_SRC_SERVER_API_JSON_H_
#define LANEGUARD_SRC_SERVER_API_JSON_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "laneguard/metrics.h"
#include "server/http_server.h"
#include "server/json_writer.h"

namespace laneguard::server {

// The spec's getConcurrencyStatus(): {"global": {...}, "lanes": {"<lane>": {...}}}.
nlohmann::json StatusToJson(const ConcurrencyStatus& status);
// The spec's getStatistics(), camelCase, with the per-lane figures.
nlohmann::json StatisticsToJson(const Statistics& statistics);

// A JSON response.
HttpResponse JsonResponse(int status, const nlohmann::json& body);
// 400 {"error": "invalid_request", "field", "message"}.
HttpResponse InvalidRequest(std::string_view field, std::string_view message);
// {"error": code, "message"} with `status`.
HttpResponse ErrorResponse(int status, std::string_view code, std::string_view message);

// A request field that is wrong: the 400 to send.
struct ApiError {
  std::string field;
  std::string message;
};

// Reading an object's optional fields, each checked for type and range. An absent or null field
// gives nullopt.
class FieldReader {
 public:
  explicit FieldReader(const nlohmann::json& object) : object_(object) {}
  std::optional<std::string> String(std::string_view key, size_t max_bytes = 256);
  std::optional<int64_t> Integer(std::string_view key, int64_t min, int64_t max);
  std::optional<double> Number(std::string_view key, double min, double max);
  std::optional<bool> Bool(std::string_view key);
  // The first error met, if any; later reads then return nullopt.
  const std::optional<ApiError>& error() const { return error_; }
  // Records an error of the caller's own checks (first one wins).
  void Fail(std::string_view key, std::string message);

 private:
  const nlohmann::json* Find(std::string_view key);
  const nlohmann::json& object_;
  std::optional<ApiError> error_;
};

// The value as it appeared in the request, shortened for a message: `"abc"`, `12`, `{...}`.
std::string Shown(const nlohmann::json& value);

}  // namespace laneguard::server

#endif  // LANEGUARD_SRC_SERVER_API_JSON_H_
