#include <cerrno>
#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <system_error>
#include <type_traits>

#include "laneguard/trace.h"

namespace laneguard {

// ---- in memory ----------------------------------------------------------------------------------

bool InMemorySpanExporter::Export(const std::vector<SpanData>& batch, const Resource&) {
  std::lock_guard<std::mutex> lock(mu_);
  spans_.insert(spans_.end(), batch.begin(), batch.end());
  return true;
}

std::vector<SpanData> InMemorySpanExporter::spans() const {
  std::lock_guard<std::mutex> lock(mu_);
  return spans_;
}

void InMemorySpanExporter::Clear() {
  std::lock_guard<std::mutex> lock(mu_);
  spans_.clear();
}

// ---- JSON lines ---------------------------------------------------------------------------------

namespace {

using Json = nlohmann::ordered_json;

// OTLP/JSON's AnyValue: 64-bit integers as decimal strings (JSON numbers lose precision past
// 2^53), non-finite doubles as the proto3 JSON strings.
Json ValueJson(const AttributeValue& value) {
  return std::visit(
      [](const auto& v) -> Json {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) {
          return Json{{"boolValue", v}};
        } else if constexpr (std::is_same_v<T, int64_t>) {
          return Json{{"intValue", std::to_string(v)}};
        } else if constexpr (std::is_same_v<T, double>) {
          if (std::isnan(v)) return Json{{"doubleValue", "NaN"}};
          if (std::isinf(v)) return Json{{"doubleValue", v > 0 ? "Infinity" : "-Infinity"}};
          return Json{{"doubleValue", v}};
        } else {
          return Json{{"stringValue", v}};
        }
      },
      value);
}

Json AttributesJson(const Attributes& attributes) {
  Json out = Json::array();
  for (const Attribute& a : attributes) {
    Json entry;
    entry["key"] = a.key;
    entry["value"] = ValueJson(a.value);
    out.push_back(std::move(entry));
  }
  return out;
}

Json ResourceJson(const Resource& resource) {
  Attributes attributes;
  if (!resource.service_name.empty()) attributes.push_back({"service.name", resource.service_name});
  if (!resource.service_version.empty())
    attributes.push_back({"service.version", resource.service_version});
  if (!resource.deployment_environment.empty())
    attributes.push_back({"deployment.environment", resource.deployment_environment});
  attributes.insert(attributes.end(), resource.extra.begin(), resource.extra.end());
  Json out;
  out["attributes"] = AttributesJson(attributes);
  return out;
}

Json SpanJson(const SpanData& span, const Json& resource) {
  Json out;
  out["resource"] = resource;
  out["traceId"] = span.trace_id.Hex();
  out["spanId"] = span.span_id.Hex();
  out["parentSpanId"] = span.parent_span_id.valid() ? span.parent_span_id.Hex() : "";
  out["name"] = span.name;
  out["kind"] = static_cast<int>(span.kind);
  out["startTimeUnixNano"] = std::to_string(span.start_unix_nanos);
  out["endTimeUnixNano"] = std::to_string(span.end_unix_nanos);
  out["attributes"] = AttributesJson(span.attributes);
  Json events = Json::array();
  for (const SpanEvent& e : span.events) {
    Json event;
    event["timeUnixNano"] = std::to_string(e.time_unix_nanos);
    event["name"] = e.name;
    event["attributes"] = AttributesJson(e.attributes);
    event["droppedAttributesCount"] = e.dropped_attributes_count;
    events.push_back(std::move(event));
  }
  out["events"] = std::move(events);
  out["status"] = Json{{"code", static_cast<int>(span.status)}, {"message", span.status_message}};
  out["droppedAttributesCount"] = span.dropped_attributes_count;
  out["droppedEventsCount"] = span.dropped_events_count;
  return out;
}

class JsonLinesSpanExporter final : public SpanExporter {
 public:
  JsonLinesSpanExporter(std::FILE* stream, bool owns_stream)
      : stream_(stream), owns_stream_(owns_stream) {}
  ~JsonLinesSpanExporter() override {
    if (owns_stream_ && stream_ != nullptr) std::fclose(stream_);
  }

  bool Export(const std::vector<SpanData>& batch, const Resource& resource) override {
    try {
      const Json resource_json = ResourceJson(resource);
      std::string text;
      for (const SpanData& span : batch) {
        // Invalid UTF-8 in a name or value must not lose the span: replace it rather than throw.
        text += SpanJson(span, resource_json)
                    .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        text += '\n';
      }
      std::lock_guard<std::mutex> lock(mu_);
      if (stream_ == nullptr) return false;
      const bool written = std::fwrite(text.data(), 1, text.size(), stream_) == text.size();
      const bool flushed = std::fflush(stream_) == 0;
      return written && flushed;
    } catch (...) {
      return false;  // out of memory while formatting
    }
  }

  void Shutdown() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (stream_ != nullptr) std::fflush(stream_);
  }

 private:
  std::mutex mu_;
  std::FILE* stream_;
  const bool owns_stream_;
};

}  // namespace

std::unique_ptr<SpanExporter> NewJsonLinesSpanExporter(std::FILE* stream) {
  return std::make_unique<JsonLinesSpanExporter>(stream, /*owns_stream=*/false);
}

Result<std::unique_ptr<SpanExporter>, ConfigError> NewJsonLinesFileSpanExporter(
    const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "ae");
  if (f == nullptr) {
    const int error = errno;
    return ConfigError{"spanExportFile", nlohmann::json(path).dump(),
                       "cannot open span export file '" + path +
                           "': " + std::error_code(error, std::generic_category()).message()};
  }
  return std::unique_ptr<SpanExporter>(
      std::make_unique<JsonLinesSpanExporter>(f, /*owns_stream=*/true));
}

std::unique_ptr<SpanExporter> NewStdoutSpanExporter() { return NewJsonLinesSpanExporter(stdout); }

}  // namespace laneguard
