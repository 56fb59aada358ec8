#include "cli/runtime.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <utility>

#include "cli/batch.h"
#include "cli/job_file.h"

namespace laneguard::cli {
namespace {

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

}  // namespace

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
Result<Config> LoadConfig(const std::string& path, const std::string& flag) {
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

// Builds the runtime in the order its parts depend on each other: exporters and logger, manager
// (observed by the logger), calls (traced), metrics (of the manager and the span counts).
// `max_global_limit`: ManagerOptions::max_global_limit (serve raises limits live).
Result<std::unique_ptr<Runtime>> MakeRuntime(const CommonFlags& flags, const Config& config,
                                             int max_global_limit) {
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

}  // namespace laneguard::cli
