// Reading untrusted input files and JSON (config files, job files) without letting the input
// decide how much we print, how deep we recurse or how much we allocate for a message. Shared by
// the config loader (core) and the job file (cli), so both report the same way.
//
// nlohmann's parser and its destructor are iterative; its dump(), copy and comparison are not.
// Nothing here dumps, copies or compares a whole value: a preview looks one level deep and stops
// after a few dozen characters.
//
// Thread safety: free functions with no shared state.
#ifndef LANEGUARD_SRC_CORE_JSON_INPUT_H_
#define LANEGUARD_SRC_CORE_JSON_INPUT_H_

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace laneguard::internal {

// How much of any value an error message shows.
inline constexpr size_t kPreviewChars = 80;
// How many duplicate keys one document reports (the rest are counted, not listed).
inline constexpr size_t kMaxDuplicateKeys = 10;

// At most `max` bytes of `text`, cut at a UTF-8 character boundary, with "…" when cut.
inline std::string Truncate(std::string_view text, size_t max = kPreviewChars) {
  if (text.size() <= max) return std::string(text);
  size_t cut = max;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return std::string(text.substr(0, cut)) + "…";
}

// 'text', bounded.
inline std::string QuoteBounded(std::string_view text) { return "'" + Truncate(text) + "'"; }

namespace json_input_detail {

using nlohmann::json;

// Escapes like dump() does, invalid UTF-8 replaced rather than thrown.
inline std::string DumpString(std::string_view s) {
  return json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace);
}

// A scalar's JSON text, at most about `max` characters; containers as […] / {…} (never entered).
inline std::string ShallowText(const json& v, size_t max) {
  if (v.is_array()) return v.empty() ? "[]" : "[…]";
  if (v.is_object()) return v.empty() ? "{}" : "{…}";
  if (!v.is_string()) return Truncate(v.dump(), max);  // numbers, booleans, null: short already
  const std::string& s = v.get_ref<const std::string&>();
  if (s.size() <= max) {
    std::string text = DumpString(s);
    if (text.size() <= max + 2) return text;
    return Truncate(text, max);
  }
  return Truncate(DumpString(Truncate(s, max)), max) + " (" + std::to_string(s.size()) + " bytes)";
}

}  // namespace json_input_detail

// The value as compact JSON text when short (identical to dump() then), else a prefix ending in
// "…". Looks at most one level into an array or object: nested containers show as […] and {…}.
// The first item of a container is always shown (each part at most max/2), later ones while they
// fit, so the whole stays within about max + 20 characters.
inline std::string JsonPreview(const nlohmann::json& v, size_t max = kPreviewChars) {
  using json_input_detail::DumpString;
  using json_input_detail::ShallowText;
  if (!v.is_array() && !v.is_object()) return ShallowText(v, max);
  const bool object = v.is_object();
  const char* close = object ? "}" : "]";
  std::string out = object ? "{" : "[";
  for (auto it = v.begin(); it != v.end(); ++it) {
    const bool first = it == v.begin();
    std::string item = first ? "" : ",";
    if (object) item += DumpString(Truncate(it.key(), max / 2)) + ":";
    item += ShallowText(it.value(), max / 2);
    if (!first && out.size() + item.size() > max) return out + ",…" + close;
    out += item;
  }
  return out + close;
}

// A number that must be an integer: 3 and 3.0 are accepted, 3.5 is not. Integers outside int64_t
// are rejected (an unsigned value above INT64_MAX must not wrap to a negative one).
inline std::optional<int64_t> JsonAsInteger(const nlohmann::json& j) {
  if (j.is_number_unsigned() &&
      j.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return std::nullopt;
  if (j.is_number_integer()) return j.get<int64_t>();
  if (j.is_number_float()) {
    const double d = j.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15)
      return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

// True for a number with no fractional part, however large (so "out of range" can be told apart
// from "not an integer").
inline bool JsonIsIntegral(const nlohmann::json& j) {
  if (j.is_number_integer()) return true;
  if (!j.is_number_float()) return false;
  const double d = j.get<double>();
  return std::isfinite(d) && d == std::floor(d);
}

// nlohmann's exception text with the "last read" token (which can be the whole rest of a huge
// string) shortened, and the whole bounded. Keeps the line, column and the parser's reason.
inline std::string BoundedParseError(std::string_view what) {
  constexpr std::string_view kLastRead = "; last read: '";
  constexpr std::string_view kExpected = "; expected ";
  std::string text(what);
  // "[json.exception.parse_error.101] " is nlohmann's id for the error, no help to a user.
  if (const size_t id_end = text.find("] ");
      text.starts_with("[json.exception.") && id_end != std::string::npos)
    text.erase(0, id_end + 2);
  const size_t start = text.find(kLastRead);
  if (start != std::string::npos) {
    const size_t token = start + kLastRead.size();
    size_t end = text.rfind(kExpected);
    if (end == std::string::npos || end < token) end = text.size();
    if (end > token && text[end - 1] == '\'') --end;
    text = text.substr(0, token) + Truncate(text.substr(token, end - token), 40) + text.substr(end);
  }
  return Truncate(text, 4 * kPreviewChars);
}

struct ParsedJson {
  nlohmann::json value;  // null when error is set
  std::string error;     // "" when the text parsed; else nlohmann's reason and position, bounded
  // Keys that appear more than once in the same object, as dotted paths ("lanes.critic",
  // "a[].b"), each bounded; nlohmann keeps the last value of a duplicate.
  std::vector<std::string> duplicate_keys;
  size_t more_duplicate_keys = 0;  // beyond kMaxDuplicateKeys
};

// Parses `text` like json::parse, and notes duplicate keys on the way (the DOM cannot show them).
inline ParsedJson ParseJsonNotingDuplicates(std::string_view text) {
  using json = nlohmann::json;
  struct Frame {
    bool array = false;
    std::string last_key;
    std::set<std::string, std::less<>> keys;
  };
  ParsedJson out;
  std::vector<Frame> frames;
  auto path_of = [&frames](const std::string& key) {
    std::string path;
    for (size_t i = 0; i + 1 < frames.size() && path.size() <= kPreviewChars; ++i)
      path += frames[i].array ? "[]" : (path.empty() ? "" : ".") + frames[i].last_key;
    return Truncate(path + (path.empty() || path.back() == ']' ? "" : ".") + key);
  };
  auto note = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        frames.push_back({event == json::parse_event_t::array_start, {}, {}});
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!frames.empty()) frames.pop_back();
        break;
      case json::parse_event_t::key: {
        Frame& frame = frames.back();
        frame.last_key = parsed.get<std::string>();
        if (frame.keys.insert(frame.last_key).second) break;
        if (out.duplicate_keys.size() < kMaxDuplicateKeys)
          out.duplicate_keys.push_back(path_of(frame.last_key));
        else
          ++out.more_duplicate_keys;
        break;
      }
      case json::parse_event_t::value:
        break;
    }
    return true;
  };
  try {
    out.value = json::parse(text.begin(), text.end(), note);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers like 1e400
    out.value = nullptr;
    out.error = BoundedParseError(e.what());
  }
  return out;
}

// Levenshtein distance, or `limit` + 1 as soon as it must exceed `limit` (cheap on long input).
inline size_t EditDistance(std::string_view a, std::string_view b, size_t limit) {
  if (a.size() > b.size() + limit || b.size() > a.size() + limit) return limit + 1;
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      const bool same = std::tolower(static_cast<unsigned char>(a[i - 1])) ==
                        std::tolower(static_cast<unsigned char>(b[j - 1]));
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (same ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// The candidate `word` was most likely meant to be (a typo: at most 2 edits, ignoring case, and
// fewer than a third of the word), or nullopt.
template <typename Range>
std::optional<std::string> ClosestMatch(std::string_view word, const Range& candidates) {
  const size_t limit = std::min<size_t>(2, std::max<size_t>(1, word.size() / 3));
  std::optional<std::string> best;
  size_t best_distance = limit + 1;
  for (const auto& candidate : candidates) {
    const std::string_view c(candidate);
    if (c == word) continue;
    const size_t d = EditDistance(word, c, limit);
    if (d < best_distance) best_distance = d, best = std::string(c);
  }
  return best;
}

// " (did you mean 'x'?)" or "".
template <typename Range>
std::string DidYouMean(std::string_view word, const Range& candidates) {
  auto match = ClosestMatch(word, candidates);
  return match ? "; did you mean '" + *match + "'?" : "";
}

// Reads the whole file at `path` (fd 0 when `path` is "-" and `allow_stdin`). On failure returns
// false and sets `error` to "<path>: <reason>" with the system's reason (no such file, permission
// denied, is a directory).
inline bool ReadInputFile(const std::string& path, std::string* text, std::string* error,
                          bool allow_stdin = false) {
  const bool use_stdin = allow_stdin && path == "-";
  const std::string name = use_stdin ? "<stdin>" : path;
  const int fd = use_stdin ? STDIN_FILENO : ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  auto fail = [&](const std::string& why) {
    if (fd >= 0 && !use_stdin) ::close(fd);
    *error = name + ": " + why;
    return false;
  };
  if (fd < 0) return fail(std::string("cannot read: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) return fail("is a directory, not a file");
  text->clear();
  char buffer[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n == 0) break;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(std::string("cannot read: ") + std::strerror(errno));
    text->append(buffer, static_cast<size_t>(n));
  }
  if (!use_stdin) ::close(fd);
  return true;
}

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_CORE_JSON_INPUT_H_
