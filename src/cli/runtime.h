// What every `laneguard` subcommand shares: the exit statuses, the common telemetry flags, and the
// runtime they build (exporters, logger, manager, tracer, worker calls, process runner, metrics),
// taken down in the order that loses nothing.
//
// Thread safety: a Runtime is built and finished by one thread; its parts are thread-safe.
#ifndef LANEGUARD_SRC_CLI_RUNTIME_H_
#define LANEGUARD_SRC_CLI_RUNTIME_H_

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "laneguard/config.h"
#include "laneguard/exporters/otlp.h"
#include "laneguard/exporters/prometheus.h"
#include "laneguard/manager.h"
#include "laneguard/observe/json_logger.h"
#include "laneguard/process.h"
#include "laneguard/result.h"
#include "laneguard/trace/trace.h"
#include "laneguard/worker.h"

namespace laneguard::cli {

inline constexpr int kUsageError = 2;
inline constexpr int kCouldNotRun = 125;  // as timeout(1): the wrapper itself failed
// --strict-telemetry: the run went well but spans, log lines or metrics were lost. Outside the
// statuses timeout(1) and the shell give a meaning to, and rarely a command's own.
inline constexpr int kTelemetryLost = 122;

struct CommonFlags {
  std::string config_file;
  std::string spans_file;
  std::string log_file;
  std::string log_level = "info";
  std::string otlp;
  std::string metrics_file;
  std::string metrics_listen;
  std::string flush_timeout = "2s";
  bool strict_telemetry = false;
};

// --config and the telemetry flags, on a subcommand.
void AddCommonFlags(CLI::App* cmd, CommonFlags& flags);

// Everything a subprocess worker call needs, built from the flags. Finish() takes it down in the
// order that loses nothing: calls first, then spans flushed, then logs, then the metrics written.
struct Runtime {
  Config config;
  std::FILE* null_log = nullptr;  // the logger's stream when logs go only to the collector
  std::shared_ptr<BatchLogRecordProcessor> otlp_logs;
  std::shared_ptr<JsonLogger> logger;
  std::unique_ptr<ResourceBudgetManager> manager;
  std::shared_ptr<BatchSpanProcessor> file_spans, otlp_spans;
  std::unique_ptr<Tracer> tracer;
  std::unique_ptr<WorkerCalls> calls;
  std::unique_ptr<ProcessRunner> runner;
  std::shared_ptr<PrometheusCollector> metrics;
  std::unique_ptr<MetricsServer> metrics_server;
  std::string metrics_file;
  // How the loss report names each destination: "--spans x.jsonl", "--otlp http://...".
  std::string spans_label, otlp_spans_label, log_label, otlp_logs_label;
  uint64_t telemetry_lost = 0;  // spans, log lines, records and metrics files; set by Finish
  bool finished = false;

  // Returns false if the metrics file could not be written. Reports every loss in one line.
  bool Finish() {
    if (finished) return metrics_file.empty();
    finished = true;
    runner.reset();
    calls.reset();
    ShutdownExporters();
    if (tracer) tracer->Shutdown();  // its processors are shut down already
    std::string metrics_error;
    if (metrics && !metrics_file.empty()) metrics_error = WriteMetricsFile();
    if (metrics_server) metrics_server->Stop();
    ReportLosses(metrics_error);
    if (metrics_error.empty()) metrics_file.clear();
    return metrics_error.empty();
  }

  // All at once, so that the flush timeout (each processor's shutdown_timeout) bounds them
  // together rather than one after the other.
  void ShutdownExporters() {
    std::vector<std::thread> threads;
    if (file_spans) threads.emplace_back([this] { file_spans->Shutdown(); });
    if (otlp_spans) threads.emplace_back([this] { otlp_spans->Shutdown(); });
    if (otlp_logs) threads.emplace_back([this] { otlp_logs->Shutdown(); });
    for (std::thread& t : threads) t.join();
  }

  // "" when written, else why not.
  std::string WriteMetricsFile() {
    const std::string text = metrics->Serialize(ExpositionFormat::kText004);
    std::FILE* f = std::fopen(metrics_file.c_str(), "w");
    errno = 0;
    bool ok = f != nullptr && std::fwrite(text.data(), 1, text.size(), f) == text.size();
    if (f != nullptr && std::fclose(f) != 0) ok = false;
    if (ok) return "";
    return std::generic_category().message(errno != 0 ? errno : EIO);
  }

  // One line, e.g. "laneguard: telemetry lost: 200 spans (--spans x.jsonl: No space left on
  // device), 12 log lines (--log y.jsonl: No space left on device)".
  void ReportLosses(const std::string& metrics_error) {
    std::string parts;
    const auto add = [&](uint64_t n, const char* one, const char* many, const std::string& where,
                         const std::string& why) {
      if (n == 0) return;
      telemetry_lost += n;
      parts += (parts.empty() ? "" : ", ") + std::to_string(n) + " " + (n == 1 ? one : many) +
               " (" + where + ": " + (why.empty() ? "not written" : why) + ")";
    };
    const auto add_processor = [&](const auto& p, const char* one, const char* many,
                                   const std::string& where) {
      if (p == nullptr) return;
      const BatchExportStats s = p->stats();
      add(s.dropped(), one, many, where, DescribeDrops(s, p->last_export_error()));
    };
    add_processor(file_spans, "span", "spans", spans_label);
    add_processor(otlp_spans, "span", "spans", otlp_spans_label);
    if (logger && !log_label.empty())
      add(logger->write_errors(), "log line", "log lines", log_label, logger->last_write_error());
    add_processor(otlp_logs, "log record", "log records", otlp_logs_label);
    if (!metrics_error.empty())
      add(1, "metrics exposition", "", "--metrics-file " + metrics_file, metrics_error);
    if (!parts.empty()) std::fprintf(stderr, "laneguard: telemetry lost: %s\n", parts.c_str());
  }
  ~Runtime() {
    Finish();
    // Everything that may still log (the manager's timer thread, through its observer) goes
    // before the logger's stream is closed.
    metrics_server.reset();
    metrics.reset();
    tracer.reset();
    manager.reset();
    logger.reset();
    if (null_log != nullptr) std::fclose(null_log);
  }
};

void PrintWarnings(const std::vector<std::string>& warnings);
// Lines for a human that quote what the user's files hold (a key, an id, a lane name): each line
// is escaped on its own, so the newlines between them stay newlines.
void PrintEscapedLines(const std::string& text, std::FILE* out);
// The message already starts with the path (after `flag`, when one is given); the warnings
// (duplicate keys, a lane name that looks misspelled) go to stderr and the config still loads.
Result<Config> LoadConfig(const std::string& path, const std::string& flag = "--config");
// An error of the flag `flag` given as `value`: "<flag> <value>: <what went wrong>".
Error FlagError(const std::string& flag, const std::string& value, const Error& error);
// What a failed system call on `value` (a file the flag names) means for the flag.
Error FlagErrno(const std::string& flag, const std::string& value, int errno_value);

// Builds the runtime from the flags and `config`. `max_global_limit`:
// ManagerOptions::max_global_limit (serve raises limits live).
Result<std::unique_ptr<Runtime>> MakeRuntime(const CommonFlags& flags, const Config& config,
                                             int max_global_limit = 0);

}  // namespace laneguard::cli

#endif  // LANEGUARD_SRC_CLI_RUNTIME_H_
