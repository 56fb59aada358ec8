// OTLP/JSON request bodies, written with the JSON-lines exporter's encoder (telemetry/otlp_json.h),
// so both outputs agree field for field.
#include <string>

#include "laneguard/exporters/otlp.h"
#include "trace/otlp_json.h"

namespace laneguard {

using internal::OtlpJsonWriter;

namespace {

// {"resourceX":[{"resource":...,"scopeX":[{"scope":{...},"<items>":[ -- the part before the items.
void OpenRequest(OtlpJsonWriter& w, std::string_view resource_key, std::string_view scope_key,
                 std::string_view items_key, const Resource& resource) {
  w.Raw("{");
  w.Key(resource_key);
  w.Raw("[{\"resource\":");
  w.Resource(resource);
  w.Raw(",");
  w.Key(scope_key);
  w.Raw("[{\"scope\":{\"name\":");
  w.String(kOtlpScopeName);
  w.Raw(",\"version\":");
  w.String(LaneguardVersion());
  w.Raw("},");
  w.Key(items_key);
  w.Raw("[");
}

constexpr std::string_view kCloseRequest = "]}]}]}";

}  // namespace

std::string_view LaneguardVersion() { return LANEGUARD_VERSION; }

std::string EncodeOtlpTracesJson(const std::vector<SpanData>& batch, const Resource& resource) {
  std::string out;
  out.reserve(256 + batch.size() * 1024);
  OtlpJsonWriter w(out);
  OpenRequest(w, "resourceSpans", "scopeSpans", "spans", resource);
  for (size_t i = 0; i < batch.size(); ++i) {
    w.Raw(i == 0 ? "{" : ",{");
    w.SpanFields(batch[i]);
    w.Raw("}");
  }
  w.Raw(kCloseRequest);
  return out;
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
  std::string out;
  out.reserve(256 + batch.size() * 512);
  OtlpJsonWriter w(out);
  OpenRequest(w, "resourceLogs", "scopeLogs", "logRecords", resource);
  for (size_t i = 0; i < batch.size(); ++i) {
    const LogRecord& r = batch[i];
    w.Raw(i == 0 ? "{" : ",{");
    w.Key("timeUnixNano");
    w.IntString(r.time_unix_nanos);
    w.Raw(",\"observedTimeUnixNano\":");
    w.IntString(r.time_unix_nanos);
    w.Raw(",\"severityNumber\":");
    w.Int(OtlpSeverityNumber(r.level));
    w.Raw(",\"severityText\":");
    w.String(OtlpSeverityText(r.level));
    w.Raw(",\"body\":{\"stringValue\":");
    w.String(r.message);
    w.Raw("},\"attributes\":");
    w.Attributes(r.attributes);
    // Proto3 JSON leaves out empty bytes fields; an all-zero id means "not known".
    if (r.trace_id.valid()) {
      w.Raw(",\"traceId\":");
      w.String(r.trace_id.Hex());
    }
    if (r.span_id.valid()) {
      w.Raw(",\"spanId\":");
      w.String(r.span_id.Hex());
    }
    w.Raw("}");
  }
  w.Raw(kCloseRequest);
  return out;
}

}  // namespace laneguard
