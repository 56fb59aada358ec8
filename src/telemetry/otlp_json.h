// OTLP/JSON encoding of spans and resources (the OTLP specification's JSON mapping of the
// protobuf messages: lowerCamelCase keys, ids as lower-case hex, enums as integers, 64-bit
// integers as decimal strings). Shared by the JSON-lines exporter and the OTLP/HTTP exporter, so
// that both write the same bytes for the same span.
//
// Thread safety: plain functions over values.
#ifndef LANEGUARD_SRC_TELEMETRY_OTLP_JSON_H_
#define LANEGUARD_SRC_TELEMETRY_OTLP_JSON_H_

#include <nlohmann/json.hpp>

#include "laneguard/trace.h"

namespace laneguard::internal {

using OtlpJson = nlohmann::ordered_json;

// AnyValue: {"stringValue" | "intValue" | "doubleValue" | "boolValue": ...}.
OtlpJson ValueJson(const AttributeValue& value);
// [{"key": ..., "value": AnyValue}, ...]
OtlpJson AttributesJson(const Attributes& attributes);
// Resource: {"attributes": [service.name, service.version, deployment.environment, extra...]}.
OtlpJson ResourceJson(const Resource& resource);
// The fields of a Span message (traceId ... droppedEventsCount), added to `out`.
void AppendSpanJson(const SpanData& span, OtlpJson& out);

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_TELEMETRY_OTLP_JSON_H_
