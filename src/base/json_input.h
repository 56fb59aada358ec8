// Reading untrusted input files and JSON (config files, job files) without letting the input
// decide how much we read, print, recurse or allocate for a message. Shared by
// the config loader (core) and the job file (cli), so both report the same way.
//
// nlohmann's parser and its destructor are iterative; its dump(), copy and comparison are not.
// Nothing here dumps, copies or compares a whole value: a preview looks one level deep and stops
// after a few dozen characters.
//
// Thread safety: free functions with no shared state.
#ifndef LANEGUARD_SRC_BASE_JSON_INPUT_H_
#define LANEGUARD_SRC_BASE_JSON_INPUT_H_

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
#include <system_error>
#include <vector>

#include "laneguard/error.h"

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

// Its implicit moves are those of nlohmann::json (noexcept), std::string and std::vector;
// clang-tidy 14 follows json's into a helper that can throw, hence the NOLINT.
struct ParsedJson {      // NOLINT(bugprone-exception-escape)
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

// A config is a few hundred bytes of JSON; 1 MiB leaves room for thousands of lanes and stops
// `config check /dev/zero` (or the wrong file) from reading until memory runs out.
inline constexpr size_t kMaxConfigFileBytes = size_t{1} << 20;

// "1 MiB", "256 MiB", "64 KiB", "100 bytes": caps as a user would write them.
inline std::string ByteSize(size_t bytes) {
  if (bytes >= (size_t{1} << 20) && bytes % (size_t{1} << 20) == 0)
    return std::to_string(bytes >> 20) + " MiB";
  if (bytes >= 1024 && bytes % 1024 == 0) return std::to_string(bytes >> 10) + " KiB";
  return std::to_string(bytes) + " bytes";
}

// How much of an input is read before giving up, and what the error then says. An input may be
// a pipe, a FIFO or a character device (/dev/fd/N from `<(...)`, /dev/zero): its size is known
// only by reading, so the caps are counted while reading, never taken from stat.
struct InputCaps {
  size_t max_bytes = kMaxConfigFileBytes;  // the whole input
  std::string_view what = "config file";   // names the cap: "the limit for a <what>"
  std::string_view advice = "a config is a small JSON object; check that this is the right file";
  // One line, without its '\n' (ReadInputLines only), and what to do about a longer one.
  size_t max_line_bytes = std::numeric_limits<size_t>::max();
  std::string_view line_advice = "";
};

// Why an input could not be read: `line` > 0 when that line passed caps.max_line_bytes, and then
// `message` does not name the input (the caller prefixes it, as for other line errors); with
// `line` 0 the message starts with "<path>: ".
struct InputError {
  int line = 0;
  std::string message;
  // kNotFound, kPermissionDenied, ... from the system's errno; kFailedPrecondition for a
  // directory; kInvalidArgument for an input past a cap.
  ErrorCode code = ErrorCode::kInvalidArgument;
};

namespace json_input_detail {

// Hands what each read() returns to `on_chunk` (which returns false to stop) until end of input.
// Never asks for more than caps.max_bytes + 1 bytes in all, so an endless input costs at most
// that much reading. False with `error` set on a system error or once the cap is passed.
template <typename OnChunk>
bool ReadChunks(const std::string& path, bool allow_stdin, const InputCaps& caps, InputError* error,
                OnChunk on_chunk) {
  const bool use_stdin = allow_stdin && path == "-";
  const std::string name = use_stdin ? "<stdin>" : path;
  const int fd = use_stdin ? STDIN_FILENO : ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  auto done = [&](bool ok) {
    if (fd >= 0 && !use_stdin) ::close(fd);
    return ok;
  };
  auto fail = [&](const std::string& why, ErrorCode code = ErrorCode::kInvalidArgument) {
    *error = {0, name + ": " + why, code};
    return done(false);
  };
  auto fail_errno = [&](int errno_value) {
    return fail("cannot read: " + std::generic_category().message(errno_value),
                ErrorCodeForErrno(errno_value));
  };
  if (fd < 0) return fail_errno(errno);
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode))
    return fail("is a directory, not a file", ErrorCode::kFailedPrecondition);
  char buffer[65536];
  size_t total = 0;
  for (;;) {
    const size_t left = caps.max_bytes - total;  // one byte more tells "over the cap" from "at it"
    const size_t want = left >= sizeof buffer ? sizeof buffer : left + 1;
    const ssize_t n = ::read(fd, buffer, want);
    if (n == 0) return done(true);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail_errno(errno);
    total += static_cast<size_t>(n);
    if (total > caps.max_bytes)
      return fail("larger than " + ByteSize(caps.max_bytes) + ", the limit for a " +
                  std::string(caps.what) + " (stopped reading there): " + std::string(caps.advice));
    if (!on_chunk(std::string_view(buffer, static_cast<size_t>(n)))) return done(false);
  }
}

}  // namespace json_input_detail

// Reads the whole input at `path` (fd 0 when `path` is "-" and `allow_stdin`), at most
// caps.max_bytes of it. On failure returns false and sets `error`'s message to "<path>: <reason>":
// the system's reason (no such file, permission denied, is a directory) or the cap and what to do.
inline bool ReadInputFile(const std::string& path, std::string* text, InputError* error,
                          const InputCaps& caps = {}, bool allow_stdin = false) {
  text->clear();
  return json_input_detail::ReadChunks(path, allow_stdin, caps, error, [&](std::string_view c) {
    text->append(c);
    return true;
  });
}

// Calls `on_line(number, line)` (numbered from 1, without the '\n') for each line as it is read,
// so only one line is held at a time; on_line returns false to stop (and sets `error` itself).
// Stops with `error` set at the first read failure, once the
// input passes caps.max_bytes, or at a line longer than caps.max_line_bytes (an endless line, as
// from /dev/zero, is refused after that many bytes). A last line without '\n' counts.
template <typename OnLine>
bool ReadInputLines(const std::string& path, const InputCaps& caps, bool allow_stdin,
                    InputError* error, OnLine on_line) {
  std::string pending;  // the start of a line that a read() cut
  int number = 0;
  const bool ok =
      json_input_detail::ReadChunks(path, allow_stdin, caps, error, [&](std::string_view chunk) {
        while (!chunk.empty()) {
          const size_t eol = chunk.find('\n');
          const std::string_view part = chunk.substr(0, eol);
          if (pending.size() + part.size() > caps.max_line_bytes) {
            *error = {number + 1, "longer than " + ByteSize(caps.max_line_bytes) +
                                      ", the limit for one line of a " + std::string(caps.what) +
                                      " (stopped reading there): " + std::string(caps.line_advice)};
            return false;
          }
          if (eol == std::string_view::npos) {
            pending.append(part);
            return true;
          }
          ++number;
          if (pending.empty()) {
            if (!on_line(number, part)) return false;
          } else {
            pending.append(part);
            if (!on_line(number, std::string_view(pending))) return false;
            pending.clear();
          }
          chunk.remove_prefix(eol + 1);
        }
        return true;
      });
  if (ok && !pending.empty()) return on_line(number + 1, std::string_view(pending));
  return ok;
}

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_BASE_JSON_INPUT_H_
