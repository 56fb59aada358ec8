#include "trace/otlp_json.h"

#include <charconv>
#include <cmath>
#include <type_traits>

namespace laneguard::internal {

namespace {

// Length of the valid UTF-8 sequence starting at s[i], or 0 if it is not one (overlong forms,
// surrogates and code points past U+10FFFF included).
size_t Utf8Length(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  size_t n;
  uint32_t cp;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
    cp = c & 0x1f;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    cp = c & 0x0f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xc0) != 0x80) return 0;
    cp = cp << 6 | (b(k) & 0x3f);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
      (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return n;
}

}  // namespace

void OtlpJsonWriter::String(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out_ += '"';
  size_t run = 0;  // start of the pending run of bytes copied as they are
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
      ++i;
      continue;
    }
    if (c >= 0x80) {
      if (const size_t n = Utf8Length(s, i)) {
        i += n;
        continue;
      }
    }
    out_.append(s.data() + run, i - run);
    switch (c) {
      case '"':
        out_ += "\\\"";
        break;
      case '\\':
        out_ += "\\\\";
        break;
      case '\n':
        out_ += "\\n";
        break;
      case '\r':
        out_ += "\\r";
        break;
      case '\t':
        out_ += "\\t";
        break;
      default:
        if (c < 0x20) {
          out_ += "\\u00";
          out_ += kHex[c >> 4];
          out_ += kHex[c & 15];
        } else {
          out_ += "\xef\xbf\xbd";  // U+FFFD for a byte that starts no valid sequence
        }
    }
    run = ++i;
  }
  out_.append(s.data() + run, s.size() - run);
  out_ += '"';
}

void OtlpJsonWriter::Key(std::string_view key) {
  String(key);
  out_ += ':';
}

void OtlpJsonWriter::Int(int64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out_.append(buf, end);
}

void OtlpJsonWriter::IntString(int64_t v) {
  out_ += '"';
  Int(v);
  out_ += '"';
}

void OtlpJsonWriter::Value(const AttributeValue& value) {
  std::visit(
      [this](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) {
          out_ += v ? "{\"boolValue\":true}" : "{\"boolValue\":false}";
        } else if constexpr (std::is_same_v<T, int64_t>) {
          out_ += "{\"intValue\":";
          IntString(v);
          out_ += '}';
        } else if constexpr (std::is_same_v<T, double>) {
          // Non-finite doubles as the proto3 JSON strings.
          if (std::isnan(v)) {
            out_ += "{\"doubleValue\":\"NaN\"}";
          } else if (std::isinf(v)) {
            out_ += v > 0 ? "{\"doubleValue\":\"Infinity\"}" : "{\"doubleValue\":\"-Infinity\"}";
          } else {
            char buf[32];
            auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);  // shortest round trip
            out_ += "{\"doubleValue\":";
            out_.append(buf, end);
            // "2" would read back as an integer in readers that tell them apart.
            if (std::string_view(buf, end - buf).find_first_of(".e") == std::string_view::npos)
              out_ += ".0";
            out_ += '}';
          }
        } else {
          out_ += "{\"stringValue\":";
          String(v);
          out_ += '}';
        }
      },
      value);
}

void OtlpJsonWriter::Attributes(const laneguard::Attributes& attributes) {
  out_ += '[';
  bool first = true;
  for (const Attribute& a : attributes) {
    if (!first) out_ += ',';
    first = false;
    out_ += "{\"key\":";
    String(a.key);
    out_ += ",\"value\":";
    Value(a.value);
    out_ += '}';
  }
  out_ += ']';
}

void OtlpJsonWriter::Resource(const laneguard::Resource& resource) {
  laneguard::Attributes attributes;
  attributes.reserve(3 + resource.extra.size());
  if (!resource.service_name.empty()) attributes.push_back({"service.name", resource.service_name});
  if (!resource.service_version.empty())
    attributes.push_back({"service.version", resource.service_version});
  if (!resource.deployment_environment.empty())
    attributes.push_back({"deployment.environment", resource.deployment_environment});
  attributes.insert(attributes.end(), resource.extra.begin(), resource.extra.end());
  out_ += "{\"attributes\":";
  Attributes(attributes);
  out_ += '}';
}

void OtlpJsonWriter::SpanFields(const SpanData& span) {
  out_ += "\"traceId\":\"";
  out_ += span.trace_id.Hex();
  out_ += "\",\"spanId\":\"";
  out_ += span.span_id.Hex();
  out_ += "\",\"parentSpanId\":\"";
  if (span.parent_span_id.valid()) out_ += span.parent_span_id.Hex();
  out_ += "\",\"name\":";
  String(span.name);
  out_ += ",\"kind\":";
  Int(static_cast<int>(span.kind));
  out_ += ",\"startTimeUnixNano\":";
  IntString(span.start_unix_nanos);
  out_ += ",\"endTimeUnixNano\":";
  IntString(span.end_unix_nanos);
  out_ += ",\"attributes\":";
  Attributes(span.attributes);
  out_ += ",\"events\":[";
  bool first = true;
  for (const SpanEvent& e : span.events) {
    if (!first) out_ += ',';
    first = false;
    out_ += "{\"timeUnixNano\":";
    IntString(e.time_unix_nanos);
    out_ += ",\"name\":";
    String(e.name);
    out_ += ",\"attributes\":";
    Attributes(e.attributes);
    out_ += ",\"droppedAttributesCount\":";
    Int(e.dropped_attributes_count);
    out_ += '}';
  }
  out_ += "],\"status\":{\"code\":";
  Int(static_cast<int>(span.status));
  out_ += ",\"message\":";
  String(span.status_message);
  out_ += "},\"droppedAttributesCount\":";
  Int(span.dropped_attributes_count);
  out_ += ",\"droppedEventsCount\":";
  Int(span.dropped_events_count);
}

}  // namespace laneguard::internal
