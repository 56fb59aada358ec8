// OTLP/JSON request bodies. The span fields come from the JSON-lines exporter's encoder
// (telemetry/otlp_json.h), so both outputs agree field for field.
#include <nlohmann/json.hpp>
#include <string>

#include "laneguard/otlp.h"
#include "telemetry/otlp_json.h"

namespace laneguard {

using internal::OtlpJson;

namespace {

OtlpJson ScopeJson() { return OtlpJson{{"name", kOtlpScopeName}, {"version", LaneguardVersion()}}; }

// Invalid UTF-8 in a name or value must not lose the batch: replace it rather than throw.
std::string Dump(const OtlpJson& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

std::string_view LaneguardVersion() { return LANEGUARD_VERSION; }

std::string EncodeOtlpTracesJson(const std::vector<SpanData>& batch, const Resource& resource) {
  OtlpJson spans = OtlpJson::array();
  for (const SpanData& span : batch) {
    OtlpJson s = OtlpJson::object();
    internal::AppendSpanJson(span, s);
    spans.push_back(std::move(s));
  }
  OtlpJson scope_spans = OtlpJson::object();
  scope_spans["scope"] = ScopeJson();
  scope_spans["spans"] = std::move(spans);
  OtlpJson resource_spans = OtlpJson::object();
  resource_spans["resource"] = internal::ResourceJson(resource);
  resource_spans["scopeSpans"] = OtlpJson::array({std::move(scope_spans)});
  OtlpJson request = OtlpJson::object();
  request["resourceSpans"] = OtlpJson::array({std::move(resource_spans)});
  return Dump(request);
}

int OtlpSeverityNumber(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return 5;
    case LogLevel::kInfo:
      return 9;
    case LogLevel::kWarning:
      return 13;
    case LogLevel::kError:
      return 17;
  }
  return 9;
}

std::string_view OtlpSeverityText(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "DEBUG";
    case LogLevel::kInfo:
      return "INFO";
    case LogLevel::kWarning:
      return "WARN";
    case LogLevel::kError:
      return "ERROR";
  }
  return "INFO";
}

std::string EncodeOtlpLogsJson(const std::vector<LogRecord>& batch, const Resource& resource) {
  OtlpJson records = OtlpJson::array();
  for (const LogRecord& r : batch) {
    OtlpJson j = OtlpJson::object();
    j["timeUnixNano"] = std::to_string(r.time_unix_nanos);
    j["observedTimeUnixNano"] = std::to_string(r.time_unix_nanos);
    j["severityNumber"] = OtlpSeverityNumber(r.level);
    j["severityText"] = OtlpSeverityText(r.level);
    j["body"] = OtlpJson{{"stringValue", r.message}};
    j["attributes"] = internal::AttributesJson(r.attributes);
    // Proto3 JSON leaves out empty bytes fields; an all-zero id means "not known".
    if (r.trace_id.valid()) j["traceId"] = r.trace_id.Hex();
    if (r.span_id.valid()) j["spanId"] = r.span_id.Hex();
    records.push_back(std::move(j));
  }
  OtlpJson scope_logs = OtlpJson::object();
  scope_logs["scope"] = ScopeJson();
  scope_logs["logRecords"] = std::move(records);
  OtlpJson resource_logs = OtlpJson::object();
  resource_logs["resource"] = internal::ResourceJson(resource);
  resource_logs["scopeLogs"] = OtlpJson::array({std::move(scope_logs)});
  OtlpJson request = OtlpJson::object();
  request["resourceLogs"] = OtlpJson::array({std::move(resource_logs)});
  return Dump(request);
}

}  // namespace laneguard
