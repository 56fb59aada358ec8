// OTLP/HTTP export of spans and log records (library target laneguard::otlp; it links libcurl,
// the core library does not).
//
//   laneguard::OtlpEnvResult env = laneguard::ReadOtlpEnvironment(
//       laneguard::OtlpSettingsFromConfig(config), laneguard::ProcessEnvironment());
//   for (const std::string& w : env.warnings) log.LogWarning(w);
//   auto exporter = laneguard::OtlpHttpSpanExporter::Create(env.settings.traces);
//   if (!exporter.ok()) return exporter.error();
//   laneguard::TracerOptions o = env.settings.TracerOptionsWith(
//       std::make_shared<laneguard::BatchSpanProcessor>(std::move(*exporter), env.settings.batch));
//   laneguard::Tracer tracer(std::move(o));
//
// Wire format: OTLP/HTTP with JSON bodies (Content-Type application/json), as the OTLP
// specification maps the protobuf messages to JSON: ids as lower-case hex, enums as integers,
// lowerCamelCase keys, 64-bit integers as decimal strings. http/protobuf is not implemented.
//
// Delivery (the OTLP specification's rules): 429, 502, 503, 504, connection failures and
// timeouts are retried, after Retry-After when the response has one (delta-seconds or an
// HTTP-date), otherwise after an exponential backoff with jitter; at most retry.max_attempts
// requests per batch, and never past export_timeout. Every other status (400 and all other 4xx,
// other 5xx) is final: the batch is rejected. A 2xx with partialSuccess counts its rejected items
// (rejectedSpans / rejectedLogRecords) and logs its errorMessage. The batch processors count each
// outcome under its reason (BatchExportStats), so exported + dropped + pending == queued.
//
// Thread safety: the exporters follow SpanExporter's rules (Export from one thread at a time;
// Shutdown and stats() from any thread). The free functions are thread-safe.
#ifndef LANEGUARD_EXPORTERS_OTLP_H_
#define LANEGUARD_EXPORTERS_OTLP_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "laneguard/clock.h"
#include "laneguard/config.h"
#include "laneguard/observe/json_logger.h"
#include "laneguard/result.h"
#include "laneguard/trace/trace.h"

namespace laneguard {

// Backoff before retry n (n = 1 for the first retry): initial_backoff x multiplier^(n-1), capped
// at max_backoff, then spread by +-jitter (a fraction) so that many clients do not retry in step.
struct OtlpRetryPolicy {
  int max_attempts = 5;  // requests per batch, the first one included; values below 1 mean 1
  std::chrono::milliseconds initial_backoff{1000};
  std::chrono::milliseconds max_backoff{5000};
  double multiplier = 1.5;
  double jitter = 0.2;
};

using OtlpHeaders = std::vector<std::pair<std::string, std::string>>;

struct OtlpHttpExporterOptions {
  // The full URL requests go to, e.g. "http://127.0.0.1:4318/v1/traces". http:// or https://.
  std::string endpoint;
  OtlpHeaders headers;  // sent with every request, after Content-Type
  // One request (connect + send + response); OTEL_EXPORTER_OTLP_TIMEOUT.
  std::chrono::milliseconds timeout{10000};
  // One Export call, retries and their waits included; OTEL_BSP_EXPORT_TIMEOUT. A retry whose
  // wait would end past it is not made: the batch is counted as retries exhausted.
  std::chrono::milliseconds export_timeout{30000};
  OtlpRetryPolicy retry;
  // For tests: how the exporter waits before a retry (default: a wait that Shutdown() cuts
  // short), where jitter comes from (a value in [0, 1); default: a per-exporter generator), and
  // the clock that HTTP-date Retry-After values are read against (default: SystemClock).
  std::function<void(std::chrono::milliseconds)> sleep;
  std::function<double()> random;
  const Clock* clock = nullptr;
  // Failures and partialSuccess are logged here; null: a logger writing to stderr at warning
  // level. Not a logger whose sink exports through this same exporter (every failure would make
  // another record to export).
  std::shared_ptr<JsonLogger> logger;
};

// What one exporter has done, by request and by item. Items: spans or log records.
struct OtlpExporterStats {
  uint64_t requests = 0;                 // HTTP requests made (retries included)
  uint64_t retries = 0;                  // requests that were retries
  uint64_t items_exported = 0;           // accepted by the receiver
  uint64_t items_rejected = 0;           // in requests refused with a non-retryable status
  uint64_t items_retries_exhausted = 0;  // in batches given up after retryable failures
  uint64_t items_partial_rejected = 0;   // partialSuccess rejections in accepted requests
  uint64_t items_cancelled = 0;          // in flight when Shutdown() was called
  int last_http_status = 0;              // 0: none yet, or a connection failure
};

class OtlpHttpClient;  // private (src/export/)

// POSTs ExportTraceServiceRequest JSON to options.endpoint.
class OtlpHttpSpanExporter final : public SpanExporter {
 public:
  // Fails for an endpoint that is not an http:// or https:// URL (key "endpoint").
  static Result<std::unique_ptr<OtlpHttpSpanExporter>> Create(OtlpHttpExporterOptions options);
  ~OtlpHttpSpanExporter() override;
  bool Export(const std::vector<SpanData>& batch, const Resource& resource) override;
  ExportResult ExportWithResult(const std::vector<SpanData>& batch,
                                const Resource& resource) override;
  // Cancels a retry wait and a request in flight at once (the request's sockets are shut down,
  // which wakes libcurl); later exports fail as cancelled.
  void Shutdown() override;
  OtlpExporterStats stats() const;

 private:
  explicit OtlpHttpSpanExporter(std::unique_ptr<OtlpHttpClient> client);
  std::unique_ptr<OtlpHttpClient> client_;
};

// POSTs ExportLogsServiceRequest JSON to options.endpoint.
class OtlpHttpLogExporter final : public LogRecordExporter {
 public:
  static Result<std::unique_ptr<OtlpHttpLogExporter>> Create(OtlpHttpExporterOptions options);
  ~OtlpHttpLogExporter() override;
  ExportResult Export(const std::vector<LogRecord>& batch, const Resource& resource) override;
  void Shutdown() override;
  OtlpExporterStats stats() const;

 private:
  explicit OtlpHttpLogExporter(std::unique_ptr<OtlpHttpClient> client);
  std::unique_ptr<OtlpHttpClient> client_;
};

// ---- encoding -----------------------------------------------------------------------------------

inline constexpr std::string_view kOtlpScopeName = "laneguard";
std::string_view LaneguardVersion();  // the scope's version

// ExportTraceServiceRequest: {"resourceSpans": [{"resource": {...}, "scopeSpans": [{"scope":
// {"name": "laneguard", "version": ...}, "spans": [...]}]}]}. Invalid UTF-8 is replaced, not
// refused, so one bad attribute cannot lose a batch.
std::string EncodeOtlpTracesJson(const std::vector<SpanData>& batch, const Resource& resource);
// ExportLogsServiceRequest: resourceLogs / scopeLogs / logRecords with timeUnixNano,
// observedTimeUnixNano, severityNumber and severityText (OtlpSeverityNumber), body (the
// message), attributes (the context fields) and traceId/spanId when known.
std::string EncodeOtlpLogsJson(const std::vector<LogRecord>& batch, const Resource& resource);
// OTLP's SeverityNumber for our levels: DEBUG 5, INFO 9, WARN 13, ERROR 17.
int OtlpSeverityNumber(LogLevel level);
std::string_view OtlpSeverityText(LogLevel level);  // "DEBUG", "INFO", "WARN", "ERROR"

// ---- delivery rules -----------------------------------------------------------------------------

bool IsRetryableHttpStatus(int status);  // 429, 502, 503, 504
// The wait before retry `retry` (1 for the first retry); `random01` in [0, 1) places it within
// the jitter band: 0 at its low end, 0.5 in the middle. Never negative.
std::chrono::milliseconds OtlpBackoff(const OtlpRetryPolicy& policy, int retry, double random01);
// A Retry-After header: delta-seconds ("120") or an HTTP-date ("Wed, 21 Oct 2015 07:28:00 GMT",
// read against now_unix_seconds; a date in the past means 0). nullopt for anything else.
std::optional<std::chrono::milliseconds> ParseRetryAfter(std::string_view value,
                                                         int64_t now_unix_seconds);

// ---- configuration ------------------------------------------------------------------------------

// Everything needed to set up OTLP export: what our config says, then what the OTEL_* variables
// say (ReadOtlpEnvironment).
struct OtlpSettings {
  bool enabled = true;  // false: OTEL_SDK_DISABLED=true or enableSpanEmission false
  Resource resource;
  double sample_ratio = 1.0;
  bool sampler_parent_based = true;
  OtlpHttpExporterOptions traces;  // endpoint defaults to http://localhost:4318/v1/traces
  OtlpHttpExporterOptions logs;    // endpoint defaults to http://localhost:4318/v1/logs
  BatchProcessorOptions batch;     // spans (OpenTelemetry's BSP defaults)
  // Log records: OpenTelemetry's BLRP defaults, which flush every second rather than every five.
  BatchProcessorOptions log_batch{.schedule_delay = std::chrono::milliseconds(1000)};

  // TracerOptions with this resource, sampling and enabled flag, and the given processor.
  TracerOptions TracerOptionsWith(std::shared_ptr<SpanProcessor> processor) const;
};

// From our config: spanSampleRate (parent-based) and enableSpanEmission, with the given resource
// (the service name, version and environment the application states, as in TracerOptions);
// everything else at the OpenTelemetry defaults.
OtlpSettings OtlpSettingsFromConfig(const Config& config, Resource resource = {});

// Looks up one environment variable; nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(std::string_view name)>;
EnvLookup ProcessEnvironment();  // std::getenv

struct OtlpEnvResult {
  OtlpSettings settings;
  // One sentence per ignored value, naming the variable, the value and what is used instead.
  std::vector<std::string> warnings;
};

// Applies the OTEL_* variables over `base`. Precedence: a variable that is set (and non-empty)
// wins over our config, as OpenTelemetry SDKs let the environment configure a deployment; code
// that wants the last word changes the returned settings. A bad value is ignored with a warning:
// that setting keeps base's value (our config's, else the OpenTelemetry default).
//   OTEL_SDK_DISABLED                 "true" (any case) disables; "false" or empty leaves it.
//   OTEL_SERVICE_NAME                 resource service.name; wins over OTEL_RESOURCE_ATTRIBUTES.
//   OTEL_RESOURCE_ATTRIBUTES          key=value,... percent-decoded; service.name, service.version,
//                                     deployment.environment fill those fields, the rest go to
//                                     extra. Any malformed entry discards the whole variable.
//   OTEL_EXPORTER_OTLP_ENDPOINT       base URL; /v1/traces and /v1/logs are appended.
//   OTEL_EXPORTER_OTLP_{TRACES,LOGS}_ENDPOINT  used as given; win over the base URL.
//   OTEL_EXPORTER_OTLP_HEADERS        key=value,... percent-decoded, for both signals;
//   OTEL_EXPORTER_OTLP_{TRACES,LOGS}_HEADERS   added to those, replacing a header of the same name.
//   OTEL_EXPORTER_OTLP_TIMEOUT        milliseconds per request (> 0);
//   OTEL_EXPORTER_OTLP_{TRACES,LOGS}_TIMEOUT   the same, per signal, winning.
//   OTEL_TRACES_SAMPLER               always_on, always_off, traceidratio, parentbased_always_on,
//                                     parentbased_always_off, parentbased_traceidratio.
//   OTEL_TRACES_SAMPLER_ARG           the ratio in [0, 1] for the two traceidratio samplers.
//   OTEL_BSP_SCHEDULE_DELAY           milliseconds (>= 0) between batches of spans.
//   OTEL_BSP_EXPORT_TIMEOUT           milliseconds (> 0) for one export, retries included.
//   OTEL_BSP_MAX_QUEUE_SIZE           >= 1.
//   OTEL_BSP_MAX_EXPORT_BATCH_SIZE    >= 1 and <= the queue size (a larger value is clamped).
//   OTEL_BLRP_*                       the same four for log records (batch, logs.export_timeout).
//   OTEL_EXPORTER_OTLP[_{TRACES,LOGS}]_PROTOCOL  anything but http/json warns: only JSON is sent.
OtlpEnvResult ReadOtlpEnvironment(OtlpSettings base, const EnvLookup& env);

}  // namespace laneguard

#endif  // LANEGUARD_EXPORTERS_OTLP_H_
