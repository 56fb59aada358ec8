// Structured JSON-lines logging: one JSON object per line with ts, level, msg and context fields.
//
//   laneguard::JsonLogger log({.min_level = laneguard::LogLevel::kInfo});
//   log.LogInfo("Worker call slot acquired", {{"taskId", "task-1"}, {"globalConcurrency", 4}});
//   -> {"ts":"2026-...Z","level":"info","msg":"Worker call slot acquired","taskId":"task-1",...}
//
// LoggingObserver turns the manager's events into such lines (the spec's
// logInfo/logWarning/logError calls with contextId, taskId, lane, globalConcurrency, ...).
//
// The fixed keys ts, level and msg cannot be forged by context: a context field with one of those
// names is written as "ctx.<name>".
//
// Log records can also go to a LogRecordSink (Options::sink), for example a BatchLogRecordProcessor
// feeding an OTLP exporter (see otlp.h). Without a sink the line path is unchanged; with one, each
// line also becomes a LogRecord: its context fields become attributes, except string fields
// "traceId" (32 hex digits) and "spanId" (16 hex digits), which become the record's ids.
//
// Thread safety: JsonLogger, LoggingObserver and BatchLogRecordProcessor are thread-safe; lines
// from concurrent callers never interleave. Logging never throws into the caller: lost lines are
// counted (write_errors(), with last_write_error()). A sink is called on the logging thread and
// must not block.
#ifndef LANEGUARD_OBSERVE_JSON_LOGGER_H_
#define LANEGUARD_OBSERVE_JSON_LOGGER_H_

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "laneguard/clock.h"
#include "laneguard/internal/mutex.h"
#include "laneguard/observer.h"
#include "laneguard/result.h"
#include "laneguard/trace/trace.h"

namespace laneguard {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };
std::string_view ToString(LogLevel level);  // "debug", "info", "warning", "error"
// Parses "debug", "info", "warning"/"warn", "error".
Result<LogLevel> ParseLogLevel(std::string_view text);

using LogValue = std::variant<bool, int64_t, double, std::string_view>;
struct LogField {
  std::string_view key;
  LogValue value;
};
using LogFields = std::initializer_list<LogField>;

// One log line as a value, for sinks and exporters.
struct LogRecord {
  int64_t time_unix_nanos = 0;
  LogLevel level = LogLevel::kInfo;
  std::string message;
  Attributes attributes;  // the context fields
  TraceId trace_id;       // all zero when unknown
  SpanId span_id;         // all zero when unknown
};

// Receives every record the logger writes (after the level filter). OnEmit runs on the logging
// thread: it must be quick and must not log to the same logger.
class LogRecordSink {
 public:
  virtual ~LogRecordSink() = default;
  virtual void OnEmit(LogRecord&& record) = 0;
};

// Sends batches of log records somewhere; the log counterpart of SpanExporter, with the same rules
// (one Export at a time; Shutdown may be called during an Export to cancel it).
class LogRecordExporter {
 public:
  virtual ~LogRecordExporter() = default;
  virtual ExportResult Export(const std::vector<LogRecord>& batch, const Resource& resource) = 0;
  virtual void Shutdown() {}
};

// The log counterpart of BatchSpanProcessor: a bounded queue that drops (and counts) rather than
// blocks the logging thread, exported in batches on its own thread; same options and counters.
class BatchLogRecordProcessor final : public LogRecordSink {
 public:
  BatchLogRecordProcessor(std::unique_ptr<LogRecordExporter> exporter, Resource resource,
                          BatchProcessorOptions options = {});
  ~BatchLogRecordProcessor() override;  // Shutdown()
  void OnEmit(LogRecord&& record) override;
  bool ForceFlush(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  void Shutdown();  // idempotent; bounded by options.shutdown_timeout
  BatchExportStats stats() const;
  // ExportResult::error of the last failed export ("" if none failed), for DescribeDrops.
  std::string last_export_error() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class JsonLogger {
 public:
  struct Options {
    LogLevel min_level = LogLevel::kInfo;
    const Clock* clock = nullptr;  // SystemClock when null
    // Also receives every record written; see above. Must outlive the logger's last Log call.
    std::shared_ptr<LogRecordSink> sink = nullptr;
  };
  // Writes to stderr.
  explicit JsonLogger(Options options);
  // Writes to `stream`, which the caller keeps open for the logger's lifetime.
  JsonLogger(Options options, std::FILE* stream);
  // Appends to the file at `path`.
  static Result<std::unique_ptr<JsonLogger>> OpenFile(Options options, const std::string& path);
  ~JsonLogger();
  JsonLogger(const JsonLogger&) = delete;
  JsonLogger& operator=(const JsonLogger&) = delete;

  void Log(LogLevel level, std::string_view message, LogFields fields = {});
  void LogDebug(std::string_view message, LogFields fields = {}) {
    Log(LogLevel::kDebug, message, fields);
  }
  void LogInfo(std::string_view message, LogFields fields = {}) {
    Log(LogLevel::kInfo, message, fields);
  }
  void LogWarning(std::string_view message, LogFields fields = {}) {
    Log(LogLevel::kWarning, message, fields);
  }
  void LogError(std::string_view message, LogFields fields = {}) {
    Log(LogLevel::kError, message, fields);
  }
  bool Enabled(LogLevel level) const { return level >= options_.min_level; }

  uint64_t lines_written(LogLevel level) const {
    return lines_[static_cast<int>(level)].load(std::memory_order_relaxed);
  }
  // Lines lost: not written (or not formatted) in full. A line is written whole or not at all:
  // if the file fills up mid-line, it is cut back to the line before (see line_file.h).
  uint64_t write_errors() const { return write_errors_.load(std::memory_order_relaxed); }
  // Why the last line was lost ("No space left on device"); "" if none was.
  std::string last_write_error() const;

 private:
  Options options_;
  mutable internal::Mutex mu_;
  std::FILE* stream_ PT_GUARDED_BY(mu_);  // written whole lines at a time, under mu_
  bool owns_stream_ = false;
  std::atomic<uint64_t> lines_[4] = {};
  std::atomic<uint64_t> write_errors_{0};
  std::string last_write_error_ GUARDED_BY(mu_);
};

// Logs manager events: acquired, released (success) at info; rejected, timeout warning, heap
// warning and failed releases at warning; escalation at error.
class LoggingObserver final : public Observer {
 public:
  explicit LoggingObserver(std::shared_ptr<JsonLogger> logger) : logger_(std::move(logger)) {}
  void OnEvent(const CallEvent& event) override;

 private:
  std::shared_ptr<JsonLogger> logger_;
};

}  // namespace laneguard

#endif  // LANEGUARD_OBSERVE_JSON_LOGGER_H_
