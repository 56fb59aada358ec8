// A flat JSON object written straight into one string (see ObjectWriter).
//
// Thread safety: an ObjectWriter is used by one thread.
#ifndef LANEGUARD_SRC_SERVER_JSON_WRITER_H_
#define LANEGUARD_SRC_SERVER_JSON_WRITER_H_

#include <cstdint>
#include <string>
#include <string_view>

namespace laneguard::server {

// Writes a flat JSON object straight into one string. The lease answers (grant, renew, release:
// every request of a lease's life) are written this way because building them as nlohmann::json
// values and dumping them took 40% of the daemon's user-space time per request (an allocated node
// per field, then a serializer pass). Strings must be valid UTF-8: they come from a request the
// JSON parser accepted, or from the config.
class ObjectWriter {
 public:
  ObjectWriter() { text_.reserve(512); }
  ObjectWriter& Str(std::string_view key, std::string_view value);
  ObjectWriter& Int(std::string_view key, int64_t value);
  ObjectWriter& Num(std::string_view key, double value);  // shortest round-trip form
  ObjectWriter& Bool(std::string_view key, bool value);
  // The object, with a newline (as JsonResponse writes).
  std::string Finish() &&;

 private:
  void Key(std::string_view key);
  std::string text_ = "{";
};

}  // namespace laneguard::server

#endif  // LANEGUARD_SRC_SERVER_JSON_WRITER_H_
