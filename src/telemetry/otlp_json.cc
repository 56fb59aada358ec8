#include "telemetry/otlp_json.h"

#include <cmath>
#include <string>
#include <type_traits>

namespace laneguard::internal {

// 64-bit integers as decimal strings because JSON numbers lose precision past 2^53; non-finite
// doubles as the proto3 JSON strings.
OtlpJson ValueJson(const AttributeValue& value) {
  return std::visit(
      [](const auto& v) -> OtlpJson {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) {
          return OtlpJson{{"boolValue", v}};
        } else if constexpr (std::is_same_v<T, int64_t>) {
          return OtlpJson{{"intValue", std::to_string(v)}};
        } else if constexpr (std::is_same_v<T, double>) {
          if (std::isnan(v)) return OtlpJson{{"doubleValue", "NaN"}};
          if (std::isinf(v)) return OtlpJson{{"doubleValue", v > 0 ? "Infinity" : "-Infinity"}};
          return OtlpJson{{"doubleValue", v}};
        } else {
          return OtlpJson{{"stringValue", v}};
        }
      },
      value);
}

OtlpJson AttributesJson(const Attributes& attributes) {
  OtlpJson out = OtlpJson::array();
  for (const Attribute& a : attributes) {
    OtlpJson entry;
    entry["key"] = a.key;
    entry["value"] = ValueJson(a.value);
    out.push_back(std::move(entry));
  }
  return out;
}

OtlpJson ResourceJson(const Resource& resource) {
  Attributes attributes;
  if (!resource.service_name.empty()) attributes.push_back({"service.name", resource.service_name});
  if (!resource.service_version.empty())
    attributes.push_back({"service.version", resource.service_version});
  if (!resource.deployment_environment.empty())
    attributes.push_back({"deployment.environment", resource.deployment_environment});
  attributes.insert(attributes.end(), resource.extra.begin(), resource.extra.end());
  OtlpJson out;
  out["attributes"] = AttributesJson(attributes);
  return out;
}

void AppendSpanJson(const SpanData& span, OtlpJson& out) {
  out["traceId"] = span.trace_id.Hex();
  out["spanId"] = span.span_id.Hex();
  out["parentSpanId"] = span.parent_span_id.valid() ? span.parent_span_id.Hex() : "";
  out["name"] = span.name;
  out["kind"] = static_cast<int>(span.kind);
  out["startTimeUnixNano"] = std::to_string(span.start_unix_nanos);
  out["endTimeUnixNano"] = std::to_string(span.end_unix_nanos);
  out["attributes"] = AttributesJson(span.attributes);
  OtlpJson events = OtlpJson::array();
  for (const SpanEvent& e : span.events) {
    OtlpJson event;
    event["timeUnixNano"] = std::to_string(e.time_unix_nanos);
    event["name"] = e.name;
    event["attributes"] = AttributesJson(e.attributes);
    event["droppedAttributesCount"] = e.dropped_attributes_count;
    events.push_back(std::move(event));
  }
  out["events"] = std::move(events);
  out["status"] =
      OtlpJson{{"code", static_cast<int>(span.status)}, {"message", span.status_message}};
  out["droppedAttributesCount"] = span.dropped_attributes_count;
  out["droppedEventsCount"] = span.dropped_events_count;
}

}  // namespace laneguard::internal
