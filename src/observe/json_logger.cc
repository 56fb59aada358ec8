#include "laneguard/observe/json_logger.h"

#include <array>
#include <cerrno>
#include <nlohmann/json.hpp>
#include <system_error>
#include <type_traits>

#include "base/line_file.h"

namespace laneguard {

std::string_view ToString(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

Result<LogLevel> ParseLogLevel(std::string_view text) {
  if (text == "debug") return LogLevel::kDebug;
  if (text == "info") return LogLevel::kInfo;
  if (text == "warning" || text == "warn") return LogLevel::kWarning;
  if (text == "error") return LogLevel::kError;
  std::string value = "\"" + std::string(text) + "\"";
  return Error{ErrorCode::kInvalidArgument, "logLevel", value,
               "config key 'logLevel' = " + value + ": must be one of debug, info, warning, error"};
}

JsonLogger::JsonLogger(Options options) : JsonLogger(std::move(options), stderr) {}

JsonLogger::JsonLogger(Options options, std::FILE* stream)
    : options_(std::move(options)), stream_(stream) {
  if (options_.clock == nullptr) options_.clock = &SystemClock::Get();
}

Result<std::unique_ptr<JsonLogger>> JsonLogger::OpenFile(Options options, const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "ae");
  if (f == nullptr)
    return Error{ErrorCodeForErrno(errno), "logFile", nlohmann::json(path).dump(),
                 "cannot open log file '" + path +
                     "': " + std::error_code(errno, std::generic_category()).message()};
  auto logger = std::make_unique<JsonLogger>(std::move(options), f);
  logger->owns_stream_ = true;
  return logger;
}

JsonLogger::~JsonLogger() {
  if (owns_stream_) std::fclose(stream_);
}

namespace {

// Parses exactly 2 x N lower-case hex digits into `bytes`; false leaves them untouched.
template <size_t N>
bool ParseHexId(std::string_view text, std::array<uint8_t, N>& bytes) {
  if (text.size() != 2 * N) return false;
  std::array<uint8_t, N> out{};
  for (size_t i = 0; i < 2 * N; ++i) {
    const char c = text[i];
    int v;
    if (c >= '0' && c <= '9') {
      v = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      v = c - 'a' + 10;
    } else {
      return false;
    }
    out[i / 2] = static_cast<uint8_t>(out[i / 2] << 4 | v);
  }
  bytes = out;
  return true;
}

LogRecord MakeRecord(int64_t now, LogLevel level, std::string_view message, LogFields fields) {
  LogRecord r;
  r.time_unix_nanos = now;
  r.level = level;
  r.message = message;
  r.attributes.reserve(fields.size());
  for (const LogField& f : fields) {
    if (const auto* s = std::get_if<std::string_view>(&f.value)) {
      if (f.key == "traceId" && ParseHexId(*s, r.trace_id.bytes)) continue;
      if (f.key == "spanId" && ParseHexId(*s, r.span_id.bytes)) continue;
    }
    std::visit(
        [&](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, std::string_view>) {
            r.attributes.push_back({std::string(f.key), std::string(v)});
          } else {
            r.attributes.push_back({std::string(f.key), v});
          }
        },
        f.value);
  }
  return r;
}

}  // namespace

void JsonLogger::Log(LogLevel level, std::string_view message, LogFields fields) {
  if (!Enabled(level)) return;
  try {
    const int64_t now = options_.clock->UnixNanos();
    if (options_.sink) options_.sink->OnEmit(MakeRecord(now, level, message, fields));
    nlohmann::ordered_json line;
    line["ts"] = FormatIso8601(now);
    line["level"] = ToString(level);
    line["msg"] = message;
    for (const LogField& f : fields) {
      std::string key(f.key);
      // A context field cannot forge the fixed keys; see json_logger.h.
      if (key == "ts" || key == "level" || key == "msg") key = "ctx." + key;
      std::visit([&](const auto& v) { line[key] = v; }, f.value);
    }
    // Invalid UTF-8 in a task id must not lose the line: replace it rather than throw.
    std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    text += '\n';
    internal::MutexLock guard(mu_);
    // Whole or not at all: a line cut by a full disk would make the file invalid JSON lines.
    const internal::AppendResult written = internal::AppendLines(stream_, text);
    if (written.error != 0) {
      write_errors_.fetch_add(1, std::memory_order_relaxed);
      last_write_error_ = std::error_code(written.error, std::generic_category()).message();
      return;
    }
    lines_[static_cast<int>(level)].fetch_add(1, std::memory_order_relaxed);
  } catch (...) {
    // Out of memory while formatting: logging never throws into the caller.
    write_errors_.fetch_add(1, std::memory_order_relaxed);
  }
}

std::string JsonLogger::last_write_error() const {
  internal::MutexLock guard(mu_);
  return last_write_error_;
}

void LoggingObserver::OnEvent(const CallEvent& e) {
  const std::string context_id = e.call_id != 0 ? "call-" + std::to_string(e.call_id) : "";
  switch (e.kind) {
    case EventKind::kAcquired:
      logger_->LogInfo("Worker call slot acquired",
                       {{"contextId", context_id},
                        {"taskId", e.task_id},
                        {"lane", e.lane},
                        {"globalConcurrency", int64_t{e.global_active}},
                        {"laneConcurrency", int64_t{e.lane_active}},
                        {"timeoutMs", e.timeout_ms},
                        {"waitMs", static_cast<double>(e.wait_ns) / 1e6},
                        {"borrowed", e.borrowed}});
      break;
    case EventKind::kRejected:
      logger_->LogWarning("Worker call rejected", {{"taskId", e.task_id},
                                                   {"lane", e.lane},
                                                   {"reason", ToString(e.reason)},
                                                   {"detail", e.message},
                                                   {"globalConcurrency", int64_t{e.global_active}},
                                                   {"laneConcurrency", int64_t{e.lane_active}}});
      break;
    case EventKind::kReleased: {
      const WorkerCallMetrics& r = *e.record;
      logger_->Log(r.success ? LogLevel::kInfo : LogLevel::kWarning,
                   r.success ? "Worker call completed" : "Worker call failed",
                   {{"contextId", r.call_id},
                    {"taskId", r.task_id},
                    {"lane", r.lane},
                    {"success", r.success},
                    {"errorType", r.error_type},
                    {"durationMs", r.duration_ms},
                    {"timeoutReached", r.timeout_reached},
                    {"rssDeltaMb", r.rss_delta_mb},
                    {"waitMs", r.wait_ms},
                    {"globalConcurrency", int64_t{e.global_active}}});
      break;
    }
    case EventKind::kTimeoutWarning:
    case EventKind::kTimeoutEscalation:
      logger_->Log(e.kind == EventKind::kTimeoutWarning ? LogLevel::kWarning : LogLevel::kError,
                   e.kind == EventKind::kTimeoutWarning ? "Worker call timeout warning"
                                                        : "Worker call timeout escalation",
                   {{"contextId", context_id},
                    {"taskId", e.task_id},
                    {"lane", e.lane},
                    {"timeoutMs", e.timeout_ms},
                    {"detail", e.message},
                    {"globalConcurrency", int64_t{e.global_active}}});
      break;
    case EventKind::kHeapWarning:
      logger_->LogWarning("Heap usage above warning threshold",
                          {{"contextId", context_id},
                           {"taskId", e.task_id},
                           {"lane", e.lane},
                           {"heapUsedMb", e.memory ? e.memory->heap_used_mb : 0.0},
                           {"detail", e.message}});
      break;
  }
}

}  // namespace laneguard
