// Prometheus exposition of a ResourceBudgetManager: a collector, the text format 0.0.4 and
// OpenMetrics 1.0 serializers with content negotiation, a request handler to mount in your own
// HTTP server, an embeddable /metrics server, and a generator for Prometheus alerting rules.
// Library target laneguard::prometheus (find_package(laneguard COMPONENTS prometheus)).
//
//   auto collector =
//       laneguard::PrometheusCollector::Create(manager.get(), {.logger = log}).value();
//   auto server = laneguard::MetricsServer::Start(collector, {.port = 9464}).value();
//   // ... or in your own server:
//   laneguard::MetricsResponse r = collector->Handle(request_accept_header);
//
// Families, all prefixed laneguard_. Lane labels take only configured lane names (never task ids).
// - calls_total{lane,outcome}: counter of released calls. outcome is "success" (released as
//   successful), "timeout" (failed after its timeout passed) or "failure" (any other failure,
//   abandoned slots included).
// - rejections_total{lane,reason}: counter of refused acquisitions; lane="" for unknown lanes.
// - timeouts_total{lane,phase}: counter; phase "warning" (the timeout) or "escalation" (timeout x
//   escalation factor), counted when they happen, not at release.
// - call_duration_seconds{lane}: histogram of released calls' durations.
// - admission_wait_seconds{lane}: histogram of the time granted calls waited in their lane's queue
//   (ResourceBudgetManager::Acquire), 0 for a call granted at once: its count is the grants.
// - queue_wait_seconds{lane}: histogram fed by ObserveQueueWait(), for schedulers that queue calls
//   in a queue of their own before asking for a slot.
// - lane_active_calls{lane}, global_active_calls: gauges, slots held now.
// - lane_queued_requests{lane}, lane_queue_limit{lane}: gauges, requests waiting now and the most
//   a lane keeps waiting.
// - lane_borrowed_calls{lane}: gauge, slots held beyond the lane's limit (lane lending).
// - lane_concurrency_limit{lane}, global_concurrency_limit: gauges, the configured limits.
// - lane_overrunning_calls{lane}: gauge, held slots past their hard deadline.
// - rss_bytes, heap_used_bytes: gauges, the manager's latest memory sample.
// - rss_limit_bytes, heap_warning_threshold_bytes: gauges, maxRssMb and heapWarningMb.
// - spans_exported_total, spans_dropped_total{reason}: counters (only with span_counts).
// - log_lines_total{level}: counter (only with a logger).
// Counters and histograms are cumulative from the collector's creation: an observer on the manager
// counts every event (the manager's ring of records forgets old calls). Gauges are read at scrape.
//
// Thread safety: PrometheusCollector and MetricsServer are thread-safe; scrapes may run
// concurrently with each other and with worker calls, which never wait for a scrape.
#ifndef LANEGUARD_EXPORTERS_PROMETHEUS_H_
#define LANEGUARD_EXPORTERS_PROMETHEUS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "laneguard/manager.h"
#include "laneguard/observe/alerts.h"
#include "laneguard/observe/json_logger.h"
#include "laneguard/result.h"

namespace laneguard {

class BatchSpanProcessor;

// Span counts as the metrics report them (a BatchSpanProcessorStats, or an OTLP exporter's).
// The batch span processor's counts: exported, and dropped by reason (each reason a label value of
// laneguard_spans_dropped_total).
using SpanCounts = BatchExportStats;
using SpanCountsSource = std::function<SpanCounts()>;
// Reads `processor->stats()` at each scrape; the processor must outlive the collector.
SpanCountsSource SpanCountsFrom(const BatchSpanProcessor* processor);

// Families a program adds to the exposition (laneguard serve: its leases), read at each scrape.
// Names must follow Prometheus' rules and not clash with laneguard's own; a counter's name ends in
// _total. Labels stay bounded: never a task or lease id.
struct ExtraSample {
  std::vector<std::pair<std::string, std::string>> labels;
  double value = 0;
};
struct ExtraFamily {
  enum class Type { kCounter, kGauge };
  std::string name;
  std::string help;
  Type type = Type::kCounter;
  std::vector<ExtraSample> samples;
};
using ExtraFamiliesSource = std::function<std::vector<ExtraFamily>()>;

struct PrometheusOptions {
  // Log lines by level (laneguard_log_lines_total); omitted when null.
  std::shared_ptr<const JsonLogger> logger;
  // Spans exported and dropped; omitted when empty. Called at each scrape, from the scraping
  // thread.
  SpanCountsSource span_counts;
  // Called at each scrape, from the scraping thread; omitted when empty.
  ExtraFamiliesSource extra_families;
  // Upper bounds of the histogram buckets in seconds, strictly increasing, finite and > 0 (+Inf is
  // implied). Calls run for up to defaultTimeoutMs (300 s) x escalation, hence the long tail.
  std::vector<double> duration_buckets_seconds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                  2.5,   5,    10,    30,   60,  120,  300, 600};
  std::vector<double> queue_wait_buckets_seconds = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5,
                                                    1,     5,     10,   30,   60};
};

enum class ExpositionFormat {
  kText004,       // text/plain; version=0.0.4
  kOpenMetrics1,  // application/openmetrics-text; version=1.0.0
};
// The Content-Type header value for `format` (with charset=utf-8).
std::string_view ContentType(ExpositionFormat format);
// Picks the format for an HTTP Accept header: OpenMetrics when an application/openmetrics-text
// range (version 1.0.0 or unversioned) has a q-value > 0 that is at least the best q-value of
// text/plain (version 0.0.4 or unversioned), text/* and */*; text 0.0.4 otherwise, including for
// an empty or unparsable header. Prometheus 2.x asks for OpenMetrics first.
ExpositionFormat NegotiateFormat(std::string_view accept_header);

struct MetricsResponse {
  int status = 200;
  std::string content_type;
  std::string body;
};

class PrometheusCollector {
 public:
  // Registers an observer on `manager` (which must outlive the collector) and counts from now on.
  // Errors name the bad bucket list.
  static Result<std::shared_ptr<PrometheusCollector>> Create(ResourceBudgetManager* manager,
                                                             PrometheusOptions options = {});
  ~PrometheusCollector();
  PrometheusCollector(const PrometheusCollector&) = delete;
  PrometheusCollector& operator=(const PrometheusCollector&) = delete;

  // Records time a call spent waiting before it asked for a slot (a scheduler's queue). Lanes that
  // are not configured are counted under lane="" so labels stay bounded. Negative values count as
  // 0.
  void ObserveQueueWait(std::string_view lane, double seconds);

  // The whole exposition in `format`.
  std::string Serialize(ExpositionFormat format) const;
  // For an HTTP GET of /metrics: negotiates the format from the Accept header and serializes.
  MetricsResponse Handle(std::string_view accept_header) const;

 private:
  struct Impl;
  explicit PrometheusCollector(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  friend struct PrometheusCollectorAccess;
};

struct MetricsServerOptions {
  // An IPv4 or IPv6 literal, or "localhost". Loopback unless you mean to expose it.
  std::string host = "127.0.0.1";
  // 0 picks a free port; port() tells which.
  int port = 0;
  std::string path = "/metrics";
};

// Parses "HOST:PORT" or "[IPV6]:PORT" (the CLI's --metrics-listen). Errors name `key` and the
// value.
Result<MetricsServerOptions> ParseListenAddress(std::string_view text,
                                                std::string_view key = "metricsListen");

// An HTTP server answering GET and HEAD of `path` with the collector's exposition (other paths:
// 404; other methods: 405 with "Allow: GET, HEAD"). One thread serves every connection without
// ever waiting on one, so slow or idle clients cannot starve a scrape: a client has 5 s in all to
// send its request and 10 s to take the response; a request head over 8 KiB is answered 431, a
// body over 8 KiB 413, a malformed request 400. At most 16 connections per client address and 256
// in all, the oldest one still sending its request closed to make room for a new one. One request
// per connection (Connection: close). Runs until Stop() or destruction.
class MetricsServer {
 public:
  // Binds and starts serving before it returns. Errors name the host or port: not an address,
  // out of range, or the bind failed (in use, not permitted).
  static Result<std::unique_ptr<MetricsServer>> Start(
      std::shared_ptr<const PrometheusCollector> collector, MetricsServerOptions options = {});
  ~MetricsServer();  // Stop()
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  const std::string& host() const;
  int port() const;  // the bound port (the chosen one when asked for 0)
  // Stops accepting, waits for the serving thread. Idempotent.
  void Stop();

 private:
  struct Impl;
  explicit MetricsServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// How the generated rules file aggregates: rate windows and how long a condition must hold.
struct AlertRulesOptions {
  std::string group_name = "laneguard";
  std::string rate_window = "5m";  // a Prometheus duration
  std::string for_critical = "1m";
  std::string for_warning = "5m";
};
// A Prometheus rules file (YAML) with the in-process alerts (alerts.h) over the metric names above:
// the same names, severities and thresholds. examples/prometheus/laneguard-alerts.yml is this
// output for the defaults.
std::string GenerateAlertRulesYaml(const AlertThresholds& thresholds = {},
                                   const AlertRulesOptions& options = {});

}  // namespace laneguard

#endif  // LANEGUARD_EXPORTERS_PROMETHEUS_H_
