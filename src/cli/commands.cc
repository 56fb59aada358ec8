// The `laneguard` command: run, batch, config check, config print.
#include "cli/commands.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <system_error>
#include <thread>

#include "cli/batch.h"
#include "cli/job_file.h"
#include "cli/lease_client.h"
#include "laneguard/exporters/otlp.h"
#include "laneguard/exporters/prometheus.h"
#include "laneguard/internal/mutex.h"
#include "laneguard/observe/json_logger.h"
#include "laneguard/process.h"
#include "laneguard/trace/trace.h"
#include "laneguard/worker.h"
#include "server/http_server.h"
#include "server/lease_service.h"

namespace laneguard::cli {
namespace {

using server::HttpServer;
using server::HttpServerOptions;
using server::LeaseService;
using server::LeaseServiceOptions;

constexpr int kUsageError = 2;
constexpr int kSomeJobsFailed = 1;
constexpr int kCouldNotRun = 125;     // as timeout(1): the wrapper itself failed
constexpr int kTimedOutStatus = 124;  // as timeout(1)
constexpr char kSignalsHelp[] =
    "Signals: SIGINT, SIGTERM, SIGHUP, SIGQUIT and SIGALRM stop what is running (SIGTERM, then "
    "SIGKILL after 2 s), the summary is still printed, and laneguard exits 128+N (130, 143, 129, "
    "131, 142); SIGUSR1 prints progress now (batch: a progress line, even with --quiet; run: how "
    "long the command has run). A closed output pipe (`| head`) only stops laneguard's printing: "
    "the jobs run to their end.\n";
constexpr int64_t kMaxRssMbFlag = int64_t{1} << 30;  // ProcessSpec::max_rss_mb's bound
// --strict-telemetry: the run went well but spans, log lines or metrics were lost. Outside the
// statuses timeout(1) and the shell give a meaning to, and rarely a command's own.
constexpr int kTelemetryLost = 122;

// Signals that would kill us become a cancel request instead (SIGINT, SIGTERM, SIGHUP from a
// closed terminal or ssh session, SIGQUIT, SIGALRM), so the children are stopped through the
// escalation, spans are flushed and the summary printed; the exit status is still 128+N. SIGUSR1
// asks for a progress line. The signals are blocked in every thread (set before any thread
// starts, inherited) and taken by one thread with sigtimedwait; children get a clean mask back
// before exec (see ProcessRunner). SIGPIPE is ignored, in Main.
class SignalWatcher {
 public:
  static constexpr int kCancelSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGALRM};

  SignalWatcher() {
    sigemptyset(&set_);
    for (int sig : kCancelSignals) sigaddset(&set_, sig);
    sigaddset(&set_, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
    thread_ = std::thread([this] {
      const timespec tick{0, 100'000'000};
      while (!done_.load()) {
        const int sig = sigtimedwait(&set_, nullptr, &tick);
        if (sig == SIGUSR1) {
          internal::MutexLock lock(mu_);
          if (on_usr1_) on_usr1_();
        } else if (sig > 0 && signal_.exchange(sig) == 0) {
          stop_.request_stop();
        }
      }
    });
  }
  ~SignalWatcher() {
    done_.store(true);
    thread_.join();
    pthread_sigmask(SIG_UNBLOCK, &set_, nullptr);
  }
  std::stop_token token() const { return stop_.get_token(); }
  int signal() const { return signal_.load(); }
  // Called on the watcher's thread at each SIGUSR1 (before this, SIGUSR1 does nothing).
  void OnUsr1(std::function<void()> callback) {
    internal::MutexLock lock(mu_);
    on_usr1_ = std::move(callback);
  }

 private:
  sigset_t set_;
  std::stop_source stop_;
  std::atomic<int> signal_{0};
  std::atomic<bool> done_{false};
  internal::Mutex mu_;
  std::function<void()> on_usr1_ GUARDED_BY(mu_);
  std::thread thread_;
};

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

void AddCommonFlags(CLI::App* cmd, CommonFlags& flags) {
  cmd->add_option("--config", flags.config_file,
                  "Config file (the spec's camelCase JSON, merged over the defaults)");
  cmd->add_option("--spans", flags.spans_file,
                  "Append spans to this file as JSON lines (even when the config's "
                  "enableSpanEmission is false: the flag wins)");
  cmd->add_option("--log", flags.log_file, "Append JSON log lines to this file");
  cmd->add_option("--log-level", flags.log_level, "debug, info, warning or error (default info)")
      ->check(CLI::Validator(
          [](const std::string& level) -> std::string {
            if (ParseLogLevel(level).ok()) return "";
            return "'" + EscapeForTerminal(level) + "' is not one of debug, info, warning, error";
          },
          "LEVEL"));
  cmd->add_option("--otlp", flags.otlp,
                  "Send spans and logs to this OTLP/HTTP base URL (e.g. http://127.0.0.1:4318); "
                  "the OTEL_EXPORTER_OTLP_* variables work as well");
  cmd->add_option(
      "--metrics-file", flags.metrics_file,
      "Write the final Prometheus exposition (text 0.0.4) here when the run ends (checked "
      "before anything runs; a write that still fails at the end is reported, and the "
      "exit status stays the command's unless --strict-telemetry)");
  cmd->add_option("--metrics-listen", flags.metrics_listen,
                  "Serve /metrics on HOST:PORT while running (e.g. 127.0.0.1:9464)");
  cmd->add_option("--flush-timeout", flags.flush_timeout,
                  "At exit, wait at most this long for spans and logs to be written or sent "
                  "(default 2s); what is left is dropped and reported");
  cmd->add_flag("--strict-telemetry", flags.strict_telemetry,
                "Exit 122 instead of 0 when spans, log lines or metrics were lost (they are "
                "reported on stderr either way)");
}

// Hands each span to several processors (a spans file and an OTLP exporter, say).
class FanOutSpanProcessor final : public SpanProcessor {
 public:
  explicit FanOutSpanProcessor(std::vector<std::shared_ptr<SpanProcessor>> processors)
      : processors_(std::move(processors)) {}
  void OnEnd(SpanData&& span) override {
    for (size_t i = 0; i + 1 < processors_.size(); ++i) processors_[i]->OnEnd(SpanData(span));
    processors_.back()->OnEnd(std::move(span));
  }
  bool ForceFlush(std::chrono::milliseconds timeout) override {
    bool ok = true;
    for (auto& p : processors_) ok = p->ForceFlush(timeout) && ok;
    return ok;
  }
  void Shutdown() override {
    for (auto& p : processors_) p->Shutdown();
  }
  void SetResource(const Resource& resource) override {
    for (auto& p : processors_) p->SetResource(resource);
  }

 private:
  std::vector<std::shared_ptr<SpanProcessor>> processors_;
};

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

void PrintWarnings(const std::vector<std::string>& warnings) {
  for (const std::string& warning : warnings)
    std::fprintf(stderr, "laneguard: warning: %s\n", EscapeForTerminal(warning).c_str());
}

// Lines for a human that quote what the user's files hold (a key, an id, a lane name): each line
// is escaped on its own, so the newlines between them stay newlines.
void PrintEscapedLines(const std::string& text, std::FILE* out) {
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::fprintf(out, "%s\n", EscapeForTerminal(text.substr(start, end - start)).c_str());
    start = end + 1;
  }
}

// The message already starts with the path (after `flag`, when one is given); the warnings
// (duplicate keys, a lane name that looks misspelled) go to stderr and the config still loads.
Result<Config> LoadConfig(const std::string& path, const std::string& flag = "--config") {
  if (path.empty()) return Config{};
  std::vector<std::string> warnings;
  auto config = LoadConfigFile(path, Config{}, &warnings);
  if (!config.ok()) return flag.empty() ? config.error() : config.error().WithContext(flag);
  PrintWarnings(warnings);
  return std::move(config).value();
}

// An error of the flag `flag` given as `value`: "<flag> <value>: <what went wrong>".
Error FlagError(const std::string& flag, const std::string& value, const Error& error) {
  return Error(error.code(), flag, value, flag + " " + value + ": " + error.message());
}

// What a failed system call on `value` (a file the flag names) means for the flag.
Error FlagErrno(const std::string& flag, const std::string& value, int errno_value) {
  return Error(ErrorCodeForErrno(errno_value), flag, value,
               flag + " " + value + ": " + std::generic_category().message(errno_value));
}

// Where spans and logs go over OTLP: our config, then the OTEL_* variables, then --otlp (the
// most specific word wins). Names the destinations in `rt` for the loss report.
struct OtlpChoice {
  OtlpEnvResult otel;
  bool enabled = false;
};
OtlpChoice ChooseOtlp(const CommonFlags& flags, const Config& config,
                      std::chrono::milliseconds flush_timeout, Runtime& rt) {
  Resource resource;
  resource.service_name = "laneguard";
  const EnvLookup env = ProcessEnvironment();
  OtlpChoice choice{ReadOtlpEnvironment(OtlpSettingsFromConfig(config, resource), env)};
  OtlpSettings& settings = choice.otel.settings;
  PrintWarnings(choice.otel.warnings);
  // Export is on when the user names a collector; the default endpoint alone does not turn it on.
  const bool otel_endpoint_set = env("OTEL_EXPORTER_OTLP_ENDPOINT").has_value() ||
                                 env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").has_value() ||
                                 env("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT").has_value();
  if (!flags.otlp.empty()) {
    std::string base = flags.otlp;
    while (!base.empty() && base.back() == '/') base.pop_back();
    settings.traces.endpoint = base + "/v1/traces";
    settings.logs.endpoint = base + "/v1/logs";
  }
  choice.enabled = settings.enabled && (!flags.otlp.empty() || otel_endpoint_set);
  settings.batch.shutdown_timeout = flush_timeout;
  settings.log_batch.shutdown_timeout = flush_timeout;
  // The exporters' own warnings (one per failed batch) would go to stderr as JSON; the loss
  // report at exit says the same in one line. (They warn only: an error-level filter drops all.)
  const auto quiet =
      std::make_shared<JsonLogger>(JsonLogger::Options{.min_level = LogLevel::kError});
  settings.traces.logger = quiet;
  settings.logs.logger = quiet;
  rt.otlp_spans_label =
      flags.otlp.empty() ? "OTLP " + settings.traces.endpoint : "--otlp " + flags.otlp;
  rt.otlp_logs_label =
      flags.otlp.empty() ? "OTLP " + settings.logs.endpoint : "--otlp " + flags.otlp;
  return choice;
}

// The OTLP log exporter (when OTLP is on) and the JSON logger: to --log's file, else to
// /dev/null with the records going to the collector only, else none.
std::optional<Error> SetUpLogs(const CommonFlags& flags, const OtlpChoice& otlp, LogLevel level,
                               Runtime& rt) {
  if (otlp.enabled) {
    auto logs = OtlpHttpLogExporter::Create(otlp.otel.settings.logs);
    if (!logs.ok()) return FlagError("--otlp", flags.otlp, logs.error());
    rt.otlp_logs = std::make_shared<BatchLogRecordProcessor>(
        std::move(logs).value(), otlp.otel.settings.resource, otlp.otel.settings.log_batch);
  }
  JsonLogger::Options log_options{.min_level = level};
  log_options.sink = rt.otlp_logs;
  if (!flags.log_file.empty()) {
    auto logger = JsonLogger::OpenFile(log_options, flags.log_file);
    if (!logger.ok()) return FlagError("--log", flags.log_file, logger.error());
    rt.logger = std::move(logger).value();
    rt.log_label = "--log " + flags.log_file;
  } else if (rt.otlp_logs) {
    rt.null_log = std::fopen("/dev/null", "we");
    if (rt.null_log == nullptr) {
      const int error = errno;
      return Error(ErrorCodeForErrno(error), "", "/dev/null",
                   "/dev/null: " + std::generic_category().message(error));
    }
    rt.logger = std::make_shared<JsonLogger>(log_options, rt.null_log);
  }
  return std::nullopt;
}

// The span processors (--spans' file, OTLP) and the tracer, worker calls and process runner over
// them and the manager.
std::optional<Error> SetUpCalls(const CommonFlags& flags, const Config& config,
                                const OtlpChoice& otlp, std::chrono::milliseconds flush_timeout,
                                Runtime& rt) {
  std::vector<std::shared_ptr<SpanProcessor>> processors;
  if (!flags.spans_file.empty()) {
    auto exporter = NewJsonLinesFileSpanExporter(flags.spans_file);
    if (!exporter.ok()) return FlagError("--spans", flags.spans_file, exporter.error());
    rt.file_spans = std::make_shared<BatchSpanProcessor>(
        std::move(exporter).value(), BatchProcessorOptions{.shutdown_timeout = flush_timeout});
    rt.spans_label = "--spans " + flags.spans_file;
    processors.push_back(rt.file_spans);
  }
  if (otlp.enabled) {
    auto exporter = OtlpHttpSpanExporter::Create(otlp.otel.settings.traces);
    if (!exporter.ok()) return FlagError("--otlp", flags.otlp, exporter.error());
    rt.otlp_spans =
        std::make_shared<BatchSpanProcessor>(std::move(exporter).value(), otlp.otel.settings.batch);
    processors.push_back(rt.otlp_spans);
  }
  std::shared_ptr<SpanProcessor> processor;
  if (processors.size() == 1) processor = processors[0];
  if (processors.size() > 1) processor = std::make_shared<FanOutSpanProcessor>(processors);
  TracerOptions tracing = otlp.otel.settings.TracerOptionsWith(processor);
  // The explicit flag wins over the config's enableSpanEmission (and OTEL_SDK_DISABLED): an
  // empty spans file the user asked for would only look like a run that did nothing.
  if (!flags.spans_file.empty() && !tracing.enabled) {
    std::fprintf(stderr,
                 "laneguard: note: --spans %s: writing spans although %s (only to this file)\n",
                 EscapeForTerminal(flags.spans_file).c_str(),
                 config.enable_span_emission ? "OTEL_SDK_DISABLED is true"
                                             : "the config's enableSpanEmission is false");
    tracing.enabled = true;
  }
  tracing.enabled = tracing.enabled && processor != nullptr;  // nowhere to go: no span work
  rt.tracer = std::make_unique<Tracer>(std::move(tracing));
  rt.calls = std::make_unique<WorkerCalls>(*rt.manager, *rt.tracer, rt.logger);
  rt.runner = std::make_unique<ProcessRunner>(*rt.calls);
  return std::nullopt;
}

// The Prometheus collector (for --metrics-file or --metrics-listen) and the /metrics server.
std::optional<Error> SetUpMetrics(const CommonFlags& flags, Runtime& rt) {
  if (!flags.metrics_file.empty()) {
    // Checked now, as --spans is: finding out at the end of a long run would lose its metrics.
    const int fd = open(flags.metrics_file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return FlagErrno("--metrics-file", flags.metrics_file, errno);
    close(fd);
  }
  if (!flags.metrics_file.empty() || !flags.metrics_listen.empty()) {
    PrometheusOptions prom;
    prom.logger = rt.logger;
    const BatchSpanProcessor* counted = rt.otlp_spans ? rt.otlp_spans.get() : rt.file_spans.get();
    if (counted != nullptr) prom.span_counts = SpanCountsFrom(counted);
    auto collector = PrometheusCollector::Create(rt.manager.get(), std::move(prom));
    if (!collector.ok()) return collector.error().WithContext("metrics");
    rt.metrics = std::move(collector).value();
    rt.metrics_file = flags.metrics_file;
  }
  if (flags.metrics_listen.empty()) return std::nullopt;
  auto address = ParseListenAddress(flags.metrics_listen, "--metrics-listen");
  if (!address.ok()) return address.error();
  auto server = MetricsServer::Start(rt.metrics, *address);
  if (!server.ok()) return server.error();
  rt.metrics_server = std::move(server).value();
  // An IPv6 host goes in brackets, or the URL cannot be pasted.
  const std::string host =
      address->host.find(':') == std::string::npos ? address->host : "[" + address->host + "]";
  std::fprintf(stderr, "laneguard: serving metrics on http://%s:%d%s\n", host.c_str(),
               rt.metrics_server->port(), address->path.c_str());
  return std::nullopt;
}

// Builds the runtime in the order its parts depend on each other: exporters and logger, manager
// (observed by the logger), calls (traced), metrics (of the manager and the span counts).
// `max_global_limit`: ManagerOptions::max_global_limit (serve raises limits live).
Result<std::unique_ptr<Runtime>> MakeRuntime(const CommonFlags& flags, const Config& config,
                                             int max_global_limit = 0) {
  auto rt = std::make_unique<Runtime>();
  rt->config = config;
  auto level = ParseLogLevel(flags.log_level);
  if (!level.ok()) return level.error().WithContext("--log-level");
  auto flush_ms = ParseDurationMs(flags.flush_timeout, "--flush-timeout");
  if (!flush_ms.ok()) return flush_ms.error();
  const std::chrono::milliseconds flush_timeout(*flush_ms);

  const OtlpChoice otlp = ChooseOtlp(flags, config, flush_timeout, *rt);
  if (auto error = SetUpLogs(flags, otlp, *level, *rt)) return *std::move(error);
  ManagerOptions options;
  options.max_global_limit = max_global_limit;
  if (rt->logger) options.observers.push_back(std::make_shared<LoggingObserver>(rt->logger));
  auto manager = ResourceBudgetManager::Create(config, std::move(options));
  if (!manager.ok()) return manager.error().WithContext("config");
  rt->manager = std::move(manager).value();
  if (auto error = SetUpCalls(flags, config, otlp, flush_timeout, *rt)) return *std::move(error);
  if (auto error = SetUpMetrics(flags, *rt)) return *std::move(error);
  return rt;
}

// ---- the daemon (--server)
// --------------------------------------------------------------------------

struct ServerFlags {
  std::string url;
  std::string token_file;
  std::string wait;  // "" : the command's default
};

void AddServerFlags(CLI::App* cmd, ServerFlags& flags, const char* wait_default) {
  cmd->add_option("--server", flags.url,
                  "Take the slots from a `laneguard serve` daemon (http://HOST:PORT or "
                  "unix:/PATH) as leases, under its config (instead of --config)");
  cmd->add_option("--token-file", flags.token_file,
                  "With --server: the daemon's bearer token, read from this file");
  cmd->add_option("--wait", flags.wait,
                  std::string("With --server: how long to wait for a lease when the lane is full "
                              "(0 answers at once; ") +
                      wait_default + ")");
}

// A zero ("0", "0s", "0ms": answer at once) or a duration; errors name `flag`.
Result<int64_t> ParseWaitMs(const std::string& text, std::string_view flag) {
  const size_t digits = text.find_first_not_of("0.");
  const std::string_view unit =
      digits == std::string::npos ? "" : std::string_view(text).substr(digits);
  if (!text.empty() && text[0] == '0' &&
      (unit.empty() || unit == "ms" || unit == "s" || unit == "m" || unit == "h"))
    return int64_t{0};
  return ParseDurationMs(text, flag);
}

// What --server needs before anything runs: the address, the token, and the daemon's config
// (which replaces --config: the lanes, timeouts and escalation must be the daemon's). Prints what
// went wrong and sets *status (2 for bad flags, 125 when the daemon cannot be asked).
struct ServerSetup {
  ServerAddress address;
  std::string token;
  Config config;
};
std::optional<ServerSetup> SetUpServer(const char* command, const ServerFlags& flags,
                                       const CommonFlags& common, int* status) {
  *status = kUsageError;
  auto address = ParseServerAddress(flags.url);
  if (!address.ok()) {
    std::fprintf(stderr, "laneguard %s: %s\n", command,
                 EscapeForTerminal(address.error().message()).c_str());
    return std::nullopt;
  }
  if (!common.config_file.empty()) {
    std::fprintf(stderr,
                 "laneguard %s: --config with --server: the daemon's config is used; drop "
                 "--config\n",
                 command);
    return std::nullopt;
  }
  ServerSetup setup{*address, "", Config{}};
  if (!flags.token_file.empty()) {
    auto token = ReadTokenFile(flags.token_file);
    if (!token.ok()) {
      std::fprintf(stderr, "laneguard %s: %s\n", command,
                   EscapeForTerminal(token.error().message()).c_str());
      return std::nullopt;
    }
    setup.token = std::move(token).value();
  }
  *status = kCouldNotRun;
  LeaseClient client(setup.address, setup.token);
  auto text = client.GetConfigJson();
  if (!text.ok()) {
    std::fprintf(stderr, "laneguard %s: %s\n", command,
                 EscapeForTerminal(text.error().message()).c_str());
    return std::nullopt;
  }
  auto config = ParseConfigJson(*text);
  if (!config.ok()) {
    std::fprintf(stderr, "laneguard %s: --server %s: the daemon's config: %s\n", command,
                 EscapeForTerminal(flags.url).c_str(),
                 EscapeForTerminal(config.error().message()).c_str());
    return std::nullopt;
  }
  setup.config = std::move(config).value();
  return setup;
}

// ---- run
// -----------------------------------------------------------------------------------------

struct RunFlags {
  CommonFlags common;
  std::string lane = "tool_call";
  std::string task;
  std::string timeout;
  bool timeout_given = false;  // `--timeout ""` is an error, not the default
  std::optional<double> escalation;
  std::optional<int64_t> max_rss_mb;
  std::vector<std::string> command;
  ServerFlags server;
  std::string priority = "normal";
  std::string ttl = "15s";
  std::string traceparent;
};

std::string TaskOf(const RunFlags& flags) {
  return flags.task.empty() ? "run-" + flags.command[0] : flags.task;
}

// Checks run's flags against the config and applies --escalation to it; prints what is wrong.
bool CheckRunFlags(const RunFlags& flags, Config& config, std::optional<int64_t>* timeout_ms) {
  if (flags.escalation) {
    if (!(*flags.escalation >= 1 && *flags.escalation <= kMaxEscalationFactor)) {
      std::fprintf(stderr, "laneguard run: --escalation: %g must be within [1, %g]\n",
                   *flags.escalation, kMaxEscalationFactor);
      return false;
    }
    config.timeout_escalation_factor = *flags.escalation;
  }
  if (flags.timeout_given) {
    auto parsed = ParseDurationMs(flags.timeout, "--timeout");
    if (!parsed.ok()) {
      std::fprintf(stderr, "laneguard run: %s\n", parsed.error().message().c_str());
      return false;
    }
    *timeout_ms = *parsed;
  }
  // The runner's own bound, checked here so a bad value is a usage error, not "could not start".
  if (flags.max_rss_mb && (*flags.max_rss_mb < 1 || *flags.max_rss_mb > kMaxRssMbFlag)) {
    std::fprintf(stderr, "laneguard run: --max-rss: %lld must be within [1, %lld] MB\n",
                 static_cast<long long>(*flags.max_rss_mb), static_cast<long long>(kMaxRssMbFlag));
    return false;
  }
  if (!config.lane_concurrency_limits.count(flags.lane)) {
    std::string lanes;
    for (const auto& [lane, limit] : config.lane_concurrency_limits)
      lanes += (lanes.empty() ? "" : ", ") + lane;
    std::fprintf(stderr, "laneguard run: --lane: unknown lane '%s' (configured: %s)\n",
                 EscapeForTerminal(flags.lane).c_str(), EscapeForTerminal(lanes).c_str());
    return false;
  }
  return true;
}

// How one run differs under a lease: its span's parent, its environment, its own stop.
struct RunPlan {
  CallOptions call;
  bool traceparent_env = false;
  std::vector<std::pair<std::string, std::string>> env;
  std::stop_token cancel;  // signals.token() when not leased
};

// Runs the command as one worker call: its result, or none when refused (said on stderr).
std::optional<ProcessResult> RunOneCall(const RunFlags& flags, const RunPlan& plan, Runtime& rt,
                                        SignalWatcher& signals) {
  ProcessSpec spec;
  spec.argv = flags.command;
  spec.max_rss_mb = flags.max_rss_mb;
  spec.foreground_terminal = true;  // run from a prompt, the command may read the terminal
  spec.traceparent_env = plan.traceparent_env;
  spec.env = plan.env;
  const std::string task = TaskOf(flags);
  const auto started = std::chrono::steady_clock::now();
  signals.OnUsr1([&task, started] {
    const auto seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started);
    std::fprintf(stderr, "laneguard run: %s: running for %.1f s\n", EscapeForTerminal(task).c_str(),
                 seconds.count());
  });
  auto result = rt.runner->Run(task, spec, plan.call, plan.cancel);
  signals.OnUsr1(nullptr);
  if (!result.ok()) {
    std::fprintf(stderr, "laneguard run: refused: %s\n",
                 EscapeForTerminal(result.error().message()).c_str());
    return std::nullopt;
  }
  return std::move(result).value();
}

// The run's exit status (said on stderr when not 0). `daemon_stop`: the daemon stopped it
// (124 for the lease's time, else 125).
int RunStatus(const RunFlags& flags, const ProcessResult& result, const SignalWatcher& signals,
              std::optional<int> daemon_stop = std::nullopt) {
  int status = result.ShellStatus();
  if (result.outcome == ProcessOutcome::kCancelled) {
    if (signals.signal() != 0)
      status = 128 + signals.signal();
    else if (daemon_stop)
      status = *daemon_stop;
  }
  if (status != 0)
    std::fprintf(stderr, "laneguard run: %s: %s (exit %d)\n",
                 EscapeForTerminal(TaskOf(flags)).c_str(),
                 EscapeForTerminal(result.Reason()).c_str(), status);
  return status;
}

// --server's own flags, checked before anything runs; prints what is wrong.
struct LeaseFlags {
  int64_t wait_ms = 0;
  int64_t ttl_ms = 15000;
  Priority priority = Priority::kNormal;
  std::string traceparent;
};
std::optional<LeaseFlags> CheckLeaseFlags(const RunFlags& flags) {
  LeaseFlags lease;
  const auto fail = [](const std::string& message) {
    std::fprintf(stderr, "laneguard run: %s\n", EscapeForTerminal(message).c_str());
    return std::nullopt;
  };
  if (flags.escalation)
    return fail("--escalation with --server: the daemon's timeoutEscalationFactor applies");
  if (!flags.server.wait.empty()) {
    auto wait = ParseWaitMs(flags.server.wait, "--wait");
    if (!wait.ok()) return fail(wait.error().message());
    lease.wait_ms = *wait;
  }
  auto ttl = ParseDurationMs(flags.ttl, "--ttl");
  if (!ttl.ok()) return fail(ttl.error().message());
  if (*ttl < 100 || *ttl > 600000)
    return fail("--ttl " + flags.ttl + ": must be within [100ms, 10m]");
  lease.ttl_ms = *ttl;
  lease.priority = flags.priority == "low"    ? Priority::kLow
                   : flags.priority == "high" ? Priority::kHigh
                                              : Priority::kNormal;
  if (!flags.traceparent.empty()) {
    if (!ParseTraceparent(flags.traceparent))
      return fail("--traceparent " + flags.traceparent +
                  ": not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)");
    lease.traceparent = flags.traceparent;
  } else if (const std::optional<std::string> env = ProcessEnvironment()("TRACEPARENT");
             env && !env->empty()) {
    if (ParseTraceparent(*env))
      lease.traceparent = *env;
    else
      PrintWarnings({"TRACEPARENT='" + *env + "' is not a W3C traceparent: ignored"});
  }
  return lease;
}

// Under a lease: the daemon decides when the command may start and how long it may run; the local
// runtime runs it exactly as without, with the lease's timeout (so the local two-phase escalation
// matches the daemon's phases) and inside the lease's trace.
int RunLeased(const RunFlags& flags, const ServerSetup& server, const LeaseFlags& lease_flags,
              std::optional<int64_t> timeout_ms, Runtime& rt, SignalWatcher& signals) {
  LeaseClient client(server.address, server.token);
  LeaseRequest request{.lane = flags.lane,
                       .task_id = TaskOf(flags),
                       .timeout_ms = timeout_ms,
                       .wait_ms = lease_flags.wait_ms,
                       .priority = lease_flags.priority,
                       .ttl_ms = lease_flags.ttl_ms,
                       .metadata = {},
                       .traceparent = lease_flags.traceparent};
  auto lease = client.Acquire(request, signals.token());
  if (!lease.ok()) {
    const Error& error = lease.error();
    if (error.code() == ErrorCode::kCancelled) return 128 + signals.signal();
    const bool refused = error.field() == kLeaseRefusalField;
    std::fprintf(stderr, "laneguard run: %s%s\n", refused ? "refused: " : "",
                 EscapeForTerminal(error.message()).c_str());
    return error.code() == ErrorCode::kInvalidArgument ? kUsageError : kCouldNotRun;
  }
  std::stop_source stop;
  const std::stop_callback forward(signals.token(), [&stop] { stop.request_stop(); });
  LeaseRenewer renewer(server.address, server.token, *lease, [&stop](const std::string& reason) {
    std::fprintf(stderr, "laneguard run: stopping the command: %s\n",
                 EscapeForTerminal(reason).c_str());
    stop.request_stop();
  });
  RunPlan plan;
  plan.call.lane = flags.lane;
  plan.call.timeout_ms = lease->timeout_ms > 0 ? std::optional(lease->timeout_ms) : timeout_ms;
  // The lease's span when the daemon traces; otherwise the caller's context, so the run still
  // joins the caller's trace.
  const std::string& parent =
      lease->traceparent.empty() ? lease_flags.traceparent : lease->traceparent;
  plan.call.parent = ParseTraceparent(parent);
  plan.call.metadata = {{"leaseId", lease->id},
                        {"fencingToken", std::to_string(lease->fencing_token)}};
  // The local span's context when tracing is on (ProcessRunner sets it); the lease's otherwise.
  plan.traceparent_env = true;
  if (!parent.empty()) plan.env.emplace_back("TRACEPARENT", parent);
  plan.cancel = stop.get_token();
  const std::optional<ProcessResult> result = RunOneCall(flags, plan, rt, signals);
  renewer.Stop();
  ReleaseOutcome outcome;
  if (result) {
    outcome.success = result->success();
    outcome.error_type = std::string(result->ErrorType());
    if (result->peak_rss_bytes > 0)
      outcome.rss_mb = static_cast<double>(result->peak_rss_bytes) / (1 << 20);
  } else {
    outcome = {.success = false, .error_type = "refused", .rss_mb = std::nullopt};
  }
  if (!renewer.gone()) {
    auto released = client.Release(lease->id, outcome);
    if (!released.ok())
      std::fprintf(stderr, "laneguard run: warning: the lease was not released: %s\n",
                   EscapeForTerminal(released.error().message()).c_str());
  }
  if (!result) return kCouldNotRun;
  std::optional<int> daemon_stop;
  if (!renewer.stop_reason().empty())
    daemon_stop = renewer.stopped_for_time() ? kTimedOutStatus : kCouldNotRun;
  return RunStatus(flags, *result, signals, daemon_stop);
}

int RunOnServer(const RunFlags& flags) {
  const std::optional<LeaseFlags> lease_flags = CheckLeaseFlags(flags);
  if (!lease_flags) return kUsageError;
  int status = 0;
  std::optional<ServerSetup> server = SetUpServer("run", flags.server, flags.common, &status);
  if (!server) return status;
  std::optional<int64_t> timeout_ms;
  if (!CheckRunFlags(flags, server->config, &timeout_ms)) return kUsageError;
  SignalWatcher signals;
  auto rt = MakeRuntime(flags.common, server->config);
  if (!rt.ok()) {
    std::fprintf(stderr, "laneguard run: %s\n", rt.error().message().c_str());
    return kUsageError;
  }
  status = RunLeased(flags, *server, *lease_flags, timeout_ms, **rt, signals);
  (*rt)->Finish();
  if (flags.common.strict_telemetry && (*rt)->telemetry_lost > 0 && status == 0)
    status = kTelemetryLost;
  return status;
}

int RunCommand(const RunFlags& flags) {
  if (!flags.server.url.empty()) return RunOnServer(flags);
  auto config = LoadConfig(flags.common.config_file);
  if (!config.ok()) {
    std::fprintf(stderr, "laneguard run: %s\n",
                 EscapeForTerminal(config.error().message()).c_str());
    return kUsageError;
  }
  std::optional<int64_t> timeout_ms;
  if (!CheckRunFlags(flags, *config, &timeout_ms)) return kUsageError;
  SignalWatcher signals;
  auto rt = MakeRuntime(flags.common, *config);
  if (!rt.ok()) {
    std::fprintf(stderr, "laneguard run: %s\n", rt.error().message().c_str());
    return kUsageError;
  }
  RunPlan plan;
  plan.call.lane = flags.lane;
  plan.call.timeout_ms = timeout_ms;
  plan.cancel = signals.token();
  const std::optional<ProcessResult> ran = RunOneCall(flags, plan, **rt, signals);
  if (!ran) return kCouldNotRun;
  int status = RunStatus(flags, *ran, signals);
  // A metrics file that could not be written at the end is reported by Finish (it was checked
  // before the run); the command's own status stands (--strict-telemetry: 122 instead of 0).
  (*rt)->Finish();
  if (flags.common.strict_telemetry && (*rt)->telemetry_lost > 0 && status == 0)
    status = kTelemetryLost;
  return status;
}

// ---- batch
// ---------------------------------------------------------------------------------------

struct BatchFlags {
  CommonFlags common;
  std::string jobs_file;
  std::string summary = "table";
  bool fail_fast = false;
  bool quiet = false;
  std::string output_dir;
  int stdout_lines = 0;
  ServerFlags server;
  std::string ttl = "15s";
};

// Creates the directory if need be; "" when jobs can write their output files there, else why not.
std::string PrepareOutputDir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return ec.message();
  if (!std::filesystem::is_directory(dir, ec)) return "not a directory";
  if (access(dir.c_str(), W_OK | X_OK) != 0) return std::generic_category().message(errno);
  return "";
}

// batch --server's lease options, with the daemon's config in *config; prints what is wrong.
std::optional<BatchOptions::Leases> SetUpBatchLeases(const BatchFlags& flags, Config* config,
                                                     int* status) {
  *status = kUsageError;
  BatchOptions::Leases leases;
  if (!flags.server.wait.empty()) {
    auto wait = ParseWaitMs(flags.server.wait, "--wait");
    if (!wait.ok()) {
      std::fprintf(stderr, "laneguard batch: %s\n", wait.error().message().c_str());
      return std::nullopt;
    }
    leases.wait_ms = *wait;
  }
  auto ttl = ParseDurationMs(flags.ttl, "--ttl");
  if (!ttl.ok() || *ttl < 100 || *ttl > 600000) {
    std::fprintf(stderr, "laneguard batch: --ttl %s: must be within [100ms, 10m]\n",
                 EscapeForTerminal(flags.ttl).c_str());
    return std::nullopt;
  }
  leases.ttl_ms = *ttl;
  std::optional<ServerSetup> server = SetUpServer("batch", flags.server, flags.common, status);
  if (!server) return std::nullopt;
  leases.address = server->address;
  leases.token = server->token;
  *config = server->config;
  return leases;
}

int BatchCommand(const BatchFlags& flags) {
  std::optional<BatchOptions::Leases> leases;
  Result<Config> config = Config{};
  if (!flags.server.url.empty()) {
    int status = 0;
    leases = SetUpBatchLeases(flags, &*config, &status);
    if (!leases) return status;
  } else {
    config = LoadConfig(flags.common.config_file);
  }
  if (!config.ok()) {
    std::fprintf(stderr, "laneguard batch: %s\n",
                 EscapeForTerminal(config.error().message()).c_str());
    return kUsageError;
  }
  std::vector<std::string> warnings;
  auto jobs = LoadJobFile(flags.jobs_file, *config, &warnings);
  const std::string file = flags.jobs_file == "-" ? "<stdin>" : flags.jobs_file;
  for (std::string& warning : warnings) warning = file + ": " + warning;
  PrintWarnings(warnings);
  if (!jobs.ok()) {
    // An error of the whole file (no line: an unreadable file) names the file itself.
    const bool names_file = jobs.error().size() == 1 && jobs.error()[0].field().empty() &&
                            jobs.error()[0].message().starts_with(file + ": ");
    const std::string prefix = "laneguard batch: " + (names_file ? "" : file + ": ");
    PrintEscapedLines(FormatJobErrors(jobs.error(), prefix), stderr);
    std::fprintf(stderr, "laneguard batch: nothing was run\n");
    return kUsageError;
  }
  if (!flags.output_dir.empty()) {
    const std::string error = PrepareOutputDir(flags.output_dir);
    if (!error.empty()) {
      std::fprintf(stderr, "laneguard batch: --output %s: %s\n", flags.output_dir.c_str(),
                   error.c_str());
      return kUsageError;
    }
  }
  SignalWatcher signals;
  auto rt = MakeRuntime(flags.common, *config);
  if (!rt.ok()) {
    std::fprintf(stderr, "laneguard batch: %s\n", rt.error().message().c_str());
    return kUsageError;
  }
  BatchOptions options;
  options.fail_fast = flags.fail_fast;
  options.progress = flags.quiet                  ? BatchOptions::Progress::kNone
                     : isatty(STDERR_FILENO) != 0 ? BatchOptions::Progress::kBar
                                                  : BatchOptions::Progress::kLines;
  if (options.progress == BatchOptions::Progress::kBar)
    options.progress_interval = std::chrono::milliseconds(200);
  if (PrometheusCollector* metrics = (*rt)->metrics.get())
    options.on_queue_wait = [metrics](const Job& job, double seconds) {
      metrics->ObserveQueueWait(job.lane, seconds);
    };
  options.output_dir = flags.output_dir;
  options.stdout_lines = flags.stdout_lines;
  options.leases = std::move(leases);
  BatchRunner runner(*(*rt)->runner, options);
  signals.OnUsr1([&runner] { runner.RequestProgress(); });
  BatchReport report = runner.Run(*jobs, signals.token());
  signals.OnUsr1(nullptr);
  // As in run: a lost metrics file is reported, and the jobs' status stands.
  (*rt)->Finish();
  if (flags.summary == "json")
    std::printf("%s\n", SummaryJson(report, *config).c_str());
  else
    PrintSummaryTable(report, *config, stdout);
  if (signals.signal() != 0) return 128 + signals.signal();
  if (report.failed() > 0) return kSomeJobsFailed;
  return flags.common.strict_telemetry && (*rt)->telemetry_lost > 0 ? kTelemetryLost : 0;
}

// CLI11 answers a misspelled command with "A subcommand is required": name it and the choices.
std::string UnknownCommand(const CLI::App& app, int argc, char** argv) {
  const CLI::App* current = &app;
  std::string path = "laneguard";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.empty() || arg[0] == '-') return "";
    const auto subs = current->get_subcommands([](const CLI::App*) { return true; });
    if (subs.empty()) return "";
    const CLI::App* next = nullptr;
    std::string names;
    for (const CLI::App* sub : subs) {
      if (sub->get_name() == arg) next = sub;
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (next == nullptr)
      return path + ": unknown command '" + EscapeForTerminal(arg) + "' (commands: " + names + ")";
    path += " " + arg;
    current = next;
  }
  return "";
}

// `laneguard run ls -d /tmp`: CLI11 takes -d for one of ours. When the command's words came
// without --, say where to put it, with the user's own words.
void PrintRunHint(CLI::App& run, int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) != "run") return;
  std::string options, command;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") return;  // the command is where it belongs; the error is elsewhere
    if (!command.empty() || arg.empty() || arg[0] != '-') {
      command += (command.empty() ? "" : " ") + arg;
      continue;
    }
    options += " " + arg;
    const CLI::Option* opt = run.get_option_no_throw(arg.substr(0, arg.find('=')));
    if (opt != nullptr && opt->get_type_size_min() > 0 && arg.find('=') == std::string::npos &&
        i + 1 < argc)
      options += " " + std::string(argv[++i]);
  }
  if (command.empty()) return;
  std::fprintf(stderr, "laneguard run: put the command after --: laneguard run%s -- %s\n",
               EscapeForTerminal(options).c_str(), EscapeForTerminal(command).c_str());
}

CLI::App* AddRunCommand(CLI::App& app, RunFlags& flags) {
  CLI::App* run = app.add_subcommand("run", "Run one command under a lane's budget");
  run->add_option("--lane", flags.lane, "Lane (default tool_call)");
  run->add_option("--task", flags.task, "Task id for logs and spans (default run-<cmd>)");
  run->add_option("--timeout", flags.timeout,
                  "SIGTERM after this (500ms, 30s, 1m30s, 2h; a bare number is seconds; "
                  "default: the config's defaultTimeoutMs)");
  run->add_option("--escalation", flags.escalation,
                  "SIGKILL to the whole tree at timeout x this (default: the config's, 1.5)");
  run->add_option("--max-rss", flags.max_rss_mb,
                  "Memory limit of the whole tree, in MB (1 to 1073741824)");
  AddCommonFlags(run, flags.common);
  AddServerFlags(run, flags.server, "default 0");
  run->add_option("--priority", flags.priority,
                  "With --server: the lease's queue class: low, normal (default) or high")
      ->check(CLI::IsMember({"low", "normal", "high"}));
  run->add_option("--ttl", flags.ttl,
                  "With --server: the lease's TTL (default 15s; renewed every third of it)");
  run->add_option("--traceparent", flags.traceparent,
                  "With --server: a W3C traceparent for the lease to join (default: the "
                  "TRACEPARENT variable)");
  run->add_option("command", flags.command, "The command and its arguments, after --")->required();
  run->footer(
      "Exit status: the command's; 124 when stopped for time; 137 when killed for memory; 128+N "
      "when killed by signal N; 128+N when laneguard got signal N (see Signals); 125 when refused; "
      "127 "
      "when the command could not start; 2 for bad flags; 122 with --strict-telemetry when the "
      "command succeeded but spans, log lines or metrics were lost.\n"
      "With --server URL the slot is a lease from `laneguard serve` (its config is used): refused "
      "(lane full with --wait 0, ...) or an unreachable daemon is 125; the command is stopped "
      "when a renewal says stopRequested (124 at the lease's timeout, 125 when the daemon drains), "
      "when the lease is lost, or when renewals fail for half the TTL (125); the reason is said "
      "on stderr. The run's span joins the lease's trace; the command gets TRACEPARENT.\n" +
      std::string(kSignalsHelp) +
      "Examples:\n"
      "  laneguard run --timeout 30s -- ./tool --input data.csv\n"
      "  laneguard run --server http://127.0.0.1:7878 --lane forecast_model --wait 5m -- "
      "./forecast\n"
      "  laneguard run --lane forecast_model --timeout 5m --escalation 2 --max-rss 2048 "
      "--spans spans.jsonl -- ./forecast");

  return run;
}

CLI::App* AddBatchCommand(CLI::App& app, BatchFlags& flags) {
  CLI::App* batch = app.add_subcommand("batch", "Run a JSON-lines file of jobs under the limits");
  batch
      ->add_option("jobs", flags.jobs_file,
                   "Job file: one JSON object per line (- reads standard input)")
      ->required();
  batch->add_option("--summary", flags.summary, "table (default) or json")
      ->check(CLI::IsMember({"table", "json"}));
  batch->add_flag("--fail-fast", flags.fail_fast,
                  "Stop everything at the first failure (running jobs are cancelled)");
  batch->add_flag("--quiet", flags.quiet, "No progress output");
  batch->add_option("--output", flags.output_dir,
                    "Save each job's stdout and stderr as DIR/<id>.stdout and .stderr (the "
                    "directory is created if need be)");
  batch
      ->add_option("--stdout-lines", flags.stdout_lines,
                   "Keep each job's last N lines of stdout in the JSON summary (stdoutLines)")
      ->check(CLI::Range(0, kMaxStdoutLines));
  AddCommonFlags(batch, flags.common);
  AddServerFlags(batch, flags.server, "default: until granted");
  batch->add_option("--ttl", flags.ttl,
                    "With --server: each lease's TTL (default 15s; renewed every third of it)");
  batch->footer(
      "Job line: {\"id\": \"a\", \"lane\": \"file_read\", \"cmd\": [\"cat\", \"x\"] or \"sh "
      "command\", \"timeoutMs\": 30000, \"maxRssMb\": 256, \"metadata\": {}, \"env\": {}, "
      "\"cwd\": \"/tmp\", \"priority\": \"high\" | \"normal\" | \"low\"}\n"
      "Jobs wait for a place in their lane's queue and start by priority, then in file order.\n"
      "The whole file is checked before anything runs. Exit status: 0 when every job succeeded, "
      "1 when some failed, 2 for a bad file or flags, 128+N on signal N (see Signals), 122 with "
      "--strict-telemetry when every job succeeded but spans, log lines or metrics were lost.\n"
      "Output: by default a job's stdout is discarded and its stderr kept only for the last line "
      "shown with a failure; --stdout-lines N puts its last N lines of stdout in the JSON summary; "
      "with --output DIR every job that ran gets DIR/<id>.stdout and "
      "DIR/<id>.stderr (up to 8 MB each, the rest dropped and counted as outputDroppedBytes; an "
      "id that is not a plain file name is sanitized, and the JSON summary names each job's "
      "files). Cancelled jobs (a signal, or --fail-fast) are counted apart from failed ones.\n" +
      std::string(kSignalsHelp) +
      "Examples:\n"
      "  laneguard batch examples/upgrade-jobs.jsonl --spans spans.jsonl\n"
      "  laneguard batch jobs.jsonl --otlp http://127.0.0.1:4318 --metrics-listen 127.0.0.1:9464\n"
      "  laneguard batch jobs.jsonl --summary json --fail-fast > summary.json");

  return batch;
}

int ConfigCheckCommand(const std::string& file) {
  std::vector<std::string> warnings;
  auto config = LoadConfigFile(file, Config{}, &warnings);
  if (!config.ok()) {  // the message starts with the file name
    std::fprintf(stderr, "laneguard config check: %s\n",
                 EscapeForTerminal(config.error().message()).c_str());
    return 1;
  }
  PrintWarnings(warnings);
  std::printf("%s: ok (%zu lanes, global limit %d)\n", file.c_str(),
              config->lane_concurrency_limits.size(), config->global_concurrency_limit);
  return 0;
}

int ConfigPrintCommand(const std::string& file) {
  auto config = LoadConfig(file, "");
  if (!config.ok()) {
    std::fprintf(stderr, "laneguard config print: %s\n",
                 EscapeForTerminal(config.error().message()).c_str());
    return 1;
  }
  std::printf("%s\n", ConfigToJson(*config).c_str());
  return 0;
}

// ---- serve
// ---------------------------------------------------------------------------------------

struct ServeFlags {
  CommonFlags common;
  std::vector<std::string> listen;
  std::string token_file;
  std::string drain_timeout = "30s";
};

// Room for raising the global limit live (a reload): the admission word keeps the spec's five
// lanes packed up to 1,023.
constexpr int kServeMaxGlobalLimit = 1023;

// True for a Unix socket or a loopback address (127.0.0.0/8, ::1, localhost).
bool IsLoopbackListen(const std::string& listen) {
  if (listen.starts_with("unix:")) return true;
  const std::string host = listen.substr(0, listen.rfind(':'));
  return host == "localhost" || host.starts_with("127.") || host == "[::1]";
}

Result<std::string> ReadTokenFile(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "re");
  if (f == nullptr) {
    const int error = errno;
    return Error(ErrorCodeForErrno(error), "--token-file", path,
                 "--token-file " + path + ": " + std::generic_category().message(error));
  }
  std::string token(4096, '\0');
  token.resize(std::fread(token.data(), 1, token.size(), f));
  std::fclose(f);
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
  if (token.empty() || token.find_first_of(" \t\r\n") != std::string::npos) {
    return Error(ErrorCode::kInvalidArgument, "--token-file", path,
                 "--token-file " + path + ": must hold one token (no spaces), and not be empty");
  }
  return token;
}

// SIGHUP re-reads --config and applies it live; what cannot change is refused and said.
void ReloadConfig(const ServeFlags& flags, Runtime& rt) {
  auto config = LoadConfig(flags.common.config_file);
  if (config.ok()) {
    auto applied = rt.manager->UpdateConfig(std::move(config).value());
    if (applied.ok()) {
      std::fprintf(stderr, "laneguard serve: config reloaded from %s\n",
                   EscapeForTerminal(flags.common.config_file).c_str());
      if (rt.logger) rt.logger->LogInfo("config_reloaded", {{"file", flags.common.config_file}});
      return;
    }
    config = applied.error();
  }
  std::fprintf(stderr, "laneguard serve: reload refused, the config in effect is unchanged: %s\n",
               EscapeForTerminal(config.error().message()).c_str());
  if (rt.logger) rt.logger->LogError("config_reload_failed", {{"error", config.error().message()}});
}

// Waits for SIGINT, SIGTERM or SIGQUIT (returned), reloading at each SIGHUP.
int WaitForStopSignal(const sigset_t& signals, const ServeFlags& flags, Runtime& rt) {
  for (;;) {
    const int sig = sigwaitinfo(&signals, nullptr);
    if (sig == SIGHUP) {
      ReloadConfig(flags, rt);
    } else if (sig > 0) {
      return sig;
    }
  }
}

// Drains: new leases and parked waiters are refused, held leases are served until released or
// `timeout` passes (a second signal ends it at once); then every lease still held is released.
void Drain(LeaseService& service, ResourceBudgetManager& manager, const sigset_t& signals,
           std::chrono::milliseconds timeout) {
  service.BeginDrain();
  manager.Shutdown();  // refuses the parked waiters with shutting_down
  const size_t held = service.lease_count();
  if (held > 0) {
    std::fprintf(stderr, "laneguard serve: draining: %zu leases held, waiting up to %lld ms\n",
                 held, static_cast<long long>(timeout.count()));
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const timespec poll{0, 0};
  while (!service.WaitUntilIdle(std::chrono::milliseconds(100))) {
    if (std::chrono::steady_clock::now() >= deadline) break;
    const int sig = sigtimedwait(&signals, nullptr, &poll);
    if (sig > 0 && sig != SIGHUP) break;
  }
  if (const size_t left = service.lease_count(); left > 0) {
    std::fprintf(stderr, "laneguard serve: releasing %zu leases still held\n", left);
  }
  service.ReleaseAll();
}

std::optional<Error> CheckServeFlags(const ServeFlags& flags, std::string* token,
                                     std::chrono::milliseconds* drain) {
  for (const std::string& listen : flags.listen) {
    if (!IsLoopbackListen(listen) && flags.token_file.empty()) {
      return Error(ErrorCode::kInvalidArgument, "--listen", listen,
                   "--listen " + listen +
                       ": not a loopback address; serving beyond this host requires --token-file");
    }
  }
  if (!flags.token_file.empty()) {
    auto read = ReadTokenFile(flags.token_file);
    if (!read.ok()) return read.error();
    *token = std::move(read).value();
  }
  auto drain_ms = ParseDurationMs(flags.drain_timeout, "--drain-timeout");
  if (!drain_ms.ok()) return drain_ms.error();
  *drain = std::chrono::milliseconds(*drain_ms);
  return std::nullopt;
}

// The lease service's collector: the manager's families plus the leases'.
Result<std::shared_ptr<PrometheusCollector>> ServeCollector(
    Runtime& rt, const std::shared_ptr<std::weak_ptr<LeaseService>>& service) {
  PrometheusOptions prom;
  prom.logger = rt.logger;
  const BatchSpanProcessor* counted = rt.otlp_spans ? rt.otlp_spans.get() : rt.file_spans.get();
  if (counted != nullptr) prom.span_counts = SpanCountsFrom(counted);
  prom.extra_families = [service]() -> std::vector<ExtraFamily> {
    if (const std::shared_ptr<LeaseService> s = service->lock()) return s->ExtraFamilies();
    return {};
  };
  return PrometheusCollector::Create(rt.manager.get(), std::move(prom));
}

void PrintEndpoints(const HttpServer& server) {
  for (const std::string& endpoint : server.endpoints()) {
    std::fprintf(stderr, "laneguard serve: listening on %s%s\n",
                 endpoint.starts_with("unix:") ? "" : "http://", endpoint.c_str());
  }
  std::fprintf(stderr, "laneguard serve: ready\n");
}

int ServeCommand(ServeFlags flags) {
  if (flags.listen.empty()) flags.listen.emplace_back("127.0.0.1:7878");
  auto config = LoadConfig(flags.common.config_file);
  std::string token;
  std::chrono::milliseconds drain{0};
  std::optional<Error> bad = config.ok() ? CheckServeFlags(flags, &token, &drain) : config.error();
  if (bad) {
    std::fprintf(stderr, "laneguard serve: %s\n", EscapeForTerminal(bad->message()).c_str());
    return kUsageError;
  }
  // Taken by this thread only: blocked before any thread starts, so every thread inherits it.
  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGINT, SIGTERM, SIGQUIT, SIGHUP}) sigaddset(&signals, sig);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  auto rt = MakeRuntime(flags.common, *config,
                        std::max(kServeMaxGlobalLimit, config->global_concurrency_limit));
  if (!rt.ok()) {
    std::fprintf(stderr, "laneguard serve: %s\n", rt.error().message().c_str());
    return kUsageError;
  }
  Runtime& runtime = **rt;
  auto service_ref = std::make_shared<std::weak_ptr<LeaseService>>();
  auto collector = ServeCollector(runtime, service_ref);
  if (!collector.ok()) {
    std::fprintf(stderr, "laneguard serve: %s\n", collector.error().message().c_str());
    return kUsageError;
  }
  LeaseServiceOptions options;
  options.tracer = runtime.tracer->enabled() ? runtime.tracer.get() : nullptr;
  options.logger = runtime.logger;
  options.metrics = *collector;
  ResourceBudgetManager& manager = *runtime.manager;
  options.update_config = [&manager](Config c) { return manager.UpdateConfig(std::move(c)); };
  auto service = std::make_shared<LeaseService>(manager, std::move(options));
  *service_ref = service;
  HttpServerOptions http;
  http.listen = flags.listen;
  http.bearer_token = token;
  auto server = HttpServer::Start(*service, std::move(http));
  if (!server.ok()) {
    std::fprintf(stderr, "laneguard serve: %s\n", server.error().message().c_str());
    return 1;
  }
  PrintEndpoints(**server);
  const int sig = WaitForStopSignal(signals, flags, runtime);
  std::fprintf(stderr, "laneguard serve: %s: shutting down\n",
               sig == SIGINT    ? "SIGINT"
               : sig == SIGTERM ? "SIGTERM"
                                : "SIGQUIT");
  Drain(*service, manager, signals, drain);
  // The release that ended the drain has freed its lease, but its answer may not be written yet:
  // Stop would drop it, and the client would not know its release was taken.
  (*server)->StopAccepting();
  (*server)->WaitUntilAnswered(std::chrono::seconds(1));
  (*server)->Stop();
  service.reset();
  runtime.Finish();
  return 0;
}

CLI::App* AddServeCommand(CLI::App& app, ServeFlags& flags) {
  CLI::App* serve = app.add_subcommand(
      "serve", "Serve one budget to every process over HTTP: slots as leases (docs/serve.md)");
  AddCommonFlags(serve, flags.common);
  serve
      ->add_option("--listen", flags.listen,
                   "Where to listen: HOST:PORT (default 127.0.0.1:7878; port 0 picks a free "
                   "one) or unix:PATH; repeatable")
      ->take_all();
  serve->add_option("--token-file", flags.token_file,
                    "Require 'Authorization: Bearer <token>' (the file's content); needed to "
                    "listen beyond loopback");
  serve->add_option("--drain-timeout", flags.drain_timeout,
                    "On SIGTERM or SIGINT, serve renew and release of held leases for at most "
                    "this long (default 30s)");
  serve->footer(
      "Signals: SIGTERM, SIGINT or SIGQUIT drain and stop (a second one stops at once); SIGHUP "
      "re-reads --config (limits change live, held leases are kept).\n"
      "Example: laneguard serve --config prod.json --listen 127.0.0.1:7878 --listen "
      "unix:/run/laneguard.sock");
  return serve;
}

}  // namespace

int Main(int argc, char** argv) {
  // An inherited "ignore SIGCHLD" would let the kernel reap our children: no exit statuses.
  std::signal(SIGCHLD, SIG_DFL);
  // A closed pipe on our own output (`laneguard batch jobs.jsonl 2>&1 | head -1`) must not kill us
  // and orphan the jobs: writes fail with EPIPE instead, and we stop printing. Programs we start
  // get SIGPIPE back at its default (ProcessRunner resets it before exec).
  std::signal(SIGPIPE, SIG_IGN);
  // Likewise a file-size limit (`ulimit -f`) reached by a spans or log file: the write fails with
  // EFBIG and the lines are counted as lost, rather than SIGXFSZ killing us mid-batch.
  std::signal(SIGXFSZ, SIG_IGN);
  // A batch holds a few descriptors per running job: up to the hard limit (jobs get the original
  // soft limit back). A laneguard killed with SIGKILL left its jobs running in its cgroups: they
  // are stopped now, and the user told.
  RaiseOpenFileLimit();
  if (const LeftoverCleanup cleaned = CleanUpLeftoverCgroups(); !cleaned.empty())
    std::fprintf(stderr, "laneguard: %s\n", cleaned.Describe().c_str());
  CLI::App app{
      "laneguard: run programs as budgeted worker calls (lanes, timeouts that really stop "
      "runaway work, memory limits, spans)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("laneguard ") + LANEGUARD_VERSION);
  app.footer(
      "Examples:\n"
      "  laneguard run --lane critic --timeout 10m --max-rss 512 -- python3 critic.py in.json\n"
      "  laneguard batch jobs.jsonl --config prod.json --spans spans.jsonl\n"
      "  laneguard config check prod.json");

  RunFlags run_flags;
  CLI::App* run = AddRunCommand(app, run_flags);
  BatchFlags batch_flags;
  CLI::App* batch = AddBatchCommand(app, batch_flags);
  ServeFlags serve_flags;
  CLI::App* serve = AddServeCommand(app, serve_flags);
  CLI::App* config_cmd = app.add_subcommand("config", "Check or print a config");
  config_cmd->require_subcommand(1);
  std::string check_file, print_file;
  CLI::App* check = config_cmd->add_subcommand("check", "Validate a config file");
  check->add_option("file", check_file, "Config file")->required();
  check->footer("Example: laneguard config check examples/config/production.json");
  CLI::App* print = config_cmd->add_subcommand(
      "print", "Print the effective config (defaults filled in) as JSON");
  print->add_option("file", print_file, "Config file (defaults only when omitted)");
  print->footer("Example: laneguard config print examples/config/staging.json");

  if (const std::string unknown = UnknownCommand(app, argc, argv); !unknown.empty()) {
    std::fprintf(stderr, "%s\nRun with --help for more information.\n", unknown.c_str());
    return kUsageError;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    if (code != 0) PrintRunHint(*run, argc, argv);
    return code == 0 ? 0 : kUsageError;
  }
  run_flags.timeout_given = run->count("--timeout") > 0;
  if (run->parsed()) return RunCommand(run_flags);
  if (batch->parsed()) return BatchCommand(batch_flags);
  if (serve->parsed()) return ServeCommand(std::move(serve_flags));
  if (check->parsed()) return ConfigCheckCommand(check_file);
  if (print->parsed()) return ConfigPrintCommand(print_file);
  return kUsageError;
}

}  // namespace laneguard::cli
