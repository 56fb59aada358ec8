#include "server/json_writer.h"

#include <charconv>
#include <cmath>
#include <utility>

namespace laneguard::server {

namespace {

// JSON string escaping (RFC 8259: the quote, the backslash and control characters).
void AppendQuoted(std::string& out, std::string_view s) {
  out += '"';
  for (const char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          constexpr char kHex[] = "0123456789abcdef";
          out += "\\u00";
          out += kHex[(c >> 4) & 0xf];
          out += kHex[c & 0xf];
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

}  // namespace

void ObjectWriter::Key(std::string_view key) {
  if (text_.size() > 1) text_ += ',';
  AppendQuoted(text_, key);
  text_ += ':';
}

ObjectWriter& ObjectWriter::Str(std::string_view key, std::string_view value) {
  Key(key);
  AppendQuoted(text_, value);
  return *this;
}

ObjectWriter& ObjectWriter::Int(std::string_view key, int64_t value) {
  Key(key);
  char buf[24];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value);
  text_.append(buf, end);
  return *this;
}

ObjectWriter& ObjectWriter::Num(std::string_view key, double value) {
  Key(key);
  if (!std::isfinite(value)) {
    text_ += "null";
    return *this;
  }
  char buf[32];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value);
  text_.append(buf, end);
  return *this;
}

ObjectWriter& ObjectWriter::Bool(std::string_view key, bool value) {
  Key(key);
  text_ += value ? "true" : "false";
  return *this;
}

std::string ObjectWriter::Finish() && {
  text_ += "}\n";
  return std::move(text_);
}

}  // namespace laneguard::server
