// Sends fixed spans and log records through the OTLP/HTTP exporters to the base URL given as
// argv[1] (the Node receiver, otlp_node/receiver.js), then prints on stdout what it sent, as
// plain values taken from the SpanData and LogRecord objects rather than from the encoder, so
// the receiver can check the decoded messages against them.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "laneguard/exporters/otlp.h"

namespace {

using laneguard::Attributes;
using laneguard::AttributeValue;
using Json = nlohmann::ordered_json;

template <size_t N>
std::array<uint8_t, N> Bytes(uint8_t first) {
  std::array<uint8_t, N> b{};
  for (size_t i = 0; i < N; ++i) b[i] = static_cast<uint8_t>(first + 17 * i);
  return b;
}

// {"key": ["string"|"int"|"double"|"bool", value as the JSON mapping would read back]}
Json Expected(const Attributes& attributes) {
  Json out = Json::object();
  for (const auto& a : attributes) {
    if (const auto* s = std::get_if<std::string>(&a.value)) out[a.key] = {"string", *s};
    if (const auto* i = std::get_if<int64_t>(&a.value)) out[a.key] = {"int", std::to_string(*i)};
    if (const auto* d = std::get_if<double>(&a.value)) out[a.key] = {"double", *d};
    if (const auto* b = std::get_if<bool>(&a.value)) out[a.key] = {"bool", *b};
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s BASE_URL\n", argv[0]);
    return 2;
  }
  const std::string base = argv[1];
  laneguard::Resource resource{.service_name = "roundtrip-service",
                               .service_version = "9.8.7",
                               .deployment_environment = "test",
                               .extra = {{"host.name", std::string("builder")}}};

  std::vector<laneguard::SpanData> spans(2);
  laneguard::SpanData& root = spans[0];
  root.name = "worker_call:tool_call";
  root.trace_id.bytes = Bytes<16>(0xa1);
  root.span_id.bytes = Bytes<8>(0x0b);
  root.kind = laneguard::SpanKind::kServer;
  root.start_unix_nanos = 1767225600123456789;
  root.end_unix_nanos = 1767225600987654321;
  root.attributes = {{"lane", std::string("tool_call")},
                     {"big", int64_t{9007199254740993}},  // 2^53 + 1: a JSON number would lose it
                     {"ratio", 0.25},
                     {"success", false}};
  root.events = {{"acquired_slot", 1767225600200000000, {{"globalConcurrency", int64_t{4}}}, 0},
                 {"timeout", 1767225600300000000, {{"phase", std::string("warning")}}, 2}};
  root.status = laneguard::StatusCode::kError;
  root.status_message = "timed out";
  root.dropped_attributes_count = 3;
  laneguard::SpanData& child = spans[1];
  child.name = "child \xc3\xa9";  // UTF-8 passes through
  child.trace_id = root.trace_id;
  child.span_id.bytes = Bytes<8>(0x3c);
  child.parent_span_id = root.span_id;
  child.kind = laneguard::SpanKind::kClient;
  child.start_unix_nanos = 1767225600400000000;
  child.end_unix_nanos = 1767225600500000000;
  child.status = laneguard::StatusCode::kOk;

  laneguard::OtlpHttpExporterOptions options;
  options.endpoint = base + "/v1/traces";
  options.headers = {{"x-roundtrip", "yes"}};
  options.retry.max_attempts = 1;
  auto span_exporter = laneguard::OtlpHttpSpanExporter::Create(options);
  if (!span_exporter.ok()) return 3;
  const laneguard::ExportResult sr = (*span_exporter)->ExportWithResult(spans, resource);

  // Logs go the whole way: logger -> sink (batch processor) -> exporter.
  options.endpoint = base + "/v1/logs";
  auto log_exporter = laneguard::OtlpHttpLogExporter::Create(options);
  if (!log_exporter.ok()) return 3;
  auto processor = std::make_shared<laneguard::BatchLogRecordProcessor>(
      std::move(*log_exporter), resource, laneguard::BatchProcessorOptions{});
  laneguard::ManualClock clock;
  std::FILE* devnull = std::fopen("/dev/null", "w");
  {
    laneguard::JsonLogger logger(
        {.min_level = laneguard::LogLevel::kDebug, .clock = &clock, .sink = processor}, devnull);
    logger.LogWarning("Worker call timeout warning", {{"taskId", "task-7"},
                                                      {"timeoutMs", int64_t{30000}},
                                                      {"traceId", root.trace_id.Hex()},
                                                      {"spanId", root.span_id.Hex()}});
    clock.AdvanceMs(5);
    logger.LogDebug("plain", {{"ok", true}});
  }
  processor->Shutdown();
  std::fclose(devnull);
  const laneguard::BatchExportStats ls = processor->stats();

  Json expected;
  expected["spanExport"] = static_cast<int>(sr.code);
  expected["logsExported"] = ls.exported;
  expected["resource"] = {{"service.name", resource.service_name},
                          {"service.version", resource.service_version},
                          {"deployment.environment", resource.deployment_environment},
                          {"host.name", "builder"}};
  expected["scope"] = {{"name", laneguard::kOtlpScopeName},
                       {"version", laneguard::LaneguardVersion()}};
  Json js = Json::array();
  for (const auto& s : spans) {
    Json e;
    e["traceId"] = s.trace_id.Hex();
    e["spanId"] = s.span_id.Hex();
    e["parentSpanId"] = s.parent_span_id.valid() ? s.parent_span_id.Hex() : "";
    e["name"] = s.name;
    e["kind"] = static_cast<int>(s.kind);
    e["startTimeUnixNano"] = std::to_string(s.start_unix_nanos);
    e["endTimeUnixNano"] = std::to_string(s.end_unix_nanos);
    e["attributes"] = Expected(s.attributes);
    Json events = Json::array();
    for (const auto& ev : s.events)
      events.push_back({{"name", ev.name},
                        {"timeUnixNano", std::to_string(ev.time_unix_nanos)},
                        {"attributes", Expected(ev.attributes)},
                        {"droppedAttributesCount", ev.dropped_attributes_count}});
    e["events"] = events;
    e["status"] = {{"code", static_cast<int>(s.status)}, {"message", s.status_message}};
    e["droppedAttributesCount"] = s.dropped_attributes_count;
    js.push_back(e);
  }
  expected["spans"] = js;
  const int64_t t0 = clock.UnixNanos() - 5'000'000;
  expected["logs"] = Json::array(
      {{{"timeUnixNano", std::to_string(t0)},
        {"severityNumber", 13},  // SEVERITY_NUMBER_WARN
        {"severityText", "WARN"},
        {"body", "Worker call timeout warning"},
        {"attributes", {{"taskId", {"string", "task-7"}}, {"timeoutMs", {"int", "30000"}}}},
        {"traceId", root.trace_id.Hex()},
        {"spanId", root.span_id.Hex()}},
       {{"timeUnixNano", std::to_string(t0 + 5'000'000)},
        {"severityNumber", 5},  // SEVERITY_NUMBER_DEBUG
        {"severityText", "DEBUG"},
        {"body", "plain"},
        {"attributes", {{"ok", {"bool", true}}}},
        {"traceId", ""},
        {"spanId", ""}}});
  std::printf("%s\n", expected.dump().c_str());
  return sr.code == laneguard::ExportResult::Code::kSuccess && ls.exported == 2 ? 0 : 1;
}
