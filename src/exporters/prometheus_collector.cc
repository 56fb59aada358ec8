// The collector: lock-free cumulative counters fed by a manager observer, and the families built
// from them and from the manager's gauges at scrape time.
#include <prometheus/client_metric.h>
#include <prometheus/metric_family.h>
#include <prometheus/metric_type.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "exporters/prometheus_internal.h"
#include "laneguard/exporters/prometheus.h"
#include "laneguard/trace/trace.h"

namespace laneguard {
namespace {

constexpr double kBytesPerMb = 1024.0 * 1024.0;

// Outcomes of a released call; see prometheus.h.
enum Outcome { kSuccess = 0, kFailure = 1, kTimeout = 2, kOutcomeCount = 3 };
constexpr const char* kOutcomeNames[kOutcomeCount] = {"success", "failure", "timeout"};
constexpr const char* kPhaseNames[2] = {"warning", "escalation"};

// A histogram whose buckets are separate (not cumulative) atomic counts; the cumulative counts and
// the sample count are derived at scrape time, so a scrape that races an observation still sees
// a consistent histogram (count == +Inf bucket) that never goes backwards.
class AtomicHistogram {
 public:
  explicit AtomicHistogram(const std::vector<double>* bounds)
      : bounds_(bounds), buckets_(new std::atomic<uint64_t>[bounds->size() + 1]) {
    for (size_t i = 0; i <= bounds->size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
  }
  void Observe(double seconds) {
    if (!(seconds > 0)) seconds = 0;  // negatives and NaN
    const auto it = std::lower_bound(bounds_->begin(), bounds_->end(), seconds);
    buckets_[static_cast<size_t>(it - bounds_->begin())].fetch_add(1, std::memory_order_relaxed);
    // Nanoseconds in an integer: an atomic add, no compare-and-swap loop on a double.
    const double nanos = std::min(seconds * 1e9, 9.0e18);
    sum_nanos_.fetch_add(static_cast<int64_t>(nanos), std::memory_order_relaxed);
  }
  prometheus::ClientMetric::Histogram Read() const {
    prometheus::ClientMetric::Histogram h;
    uint64_t cumulative = 0;
    for (size_t i = 0; i < bounds_->size(); ++i) {
      cumulative += buckets_[i].load(std::memory_order_relaxed);
      h.bucket.push_back({cumulative, (*bounds_)[i]});
    }
    cumulative += buckets_[bounds_->size()].load(std::memory_order_relaxed);
    h.bucket.push_back({cumulative, std::numeric_limits<double>::infinity()});
    h.sample_count = cumulative;
    h.sample_sum = static_cast<double>(sum_nanos_.load(std::memory_order_relaxed)) / 1e9;
    return h;
  }

 private:
  const std::vector<double>* bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;
  std::atomic<int64_t> sum_nanos_{0};
};

// Counters of one lane (the last LaneCounters of a collector is lane "", for unknown lanes).
struct LaneCounters {
  LaneCounters(const std::vector<double>* duration_bounds, const std::vector<double>* wait_bounds)
      : duration(duration_bounds), queue_wait(wait_bounds), admission_wait(wait_bounds) {}
  std::atomic<uint64_t> calls[kOutcomeCount] = {};
  std::atomic<uint64_t> rejections[kRejectReasonCount] = {};
  std::atomic<uint64_t> timeouts[2] = {};
  AtomicHistogram duration;
  AtomicHistogram queue_wait;      // reported by a scheduler (ObserveQueueWait)
  AtomicHistogram admission_wait;  // the manager's own queue (Acquire), every grant
};

// Shared by the collector and the observer the manager keeps (the manager has no RemoveObserver,
// so the observer may outlive the collector).
struct Counters {
  std::vector<double> duration_bounds;
  std::vector<double> wait_bounds;
  std::vector<std::string> lane_names;  // configured lanes, sorted; "" is index lane_names.size()
  std::vector<std::unique_ptr<LaneCounters>> lanes;

  size_t LaneIndex(std::string_view lane) const {
    for (size_t i = 0; i < lane_names.size(); ++i) {
      if (lane_names[i] == lane) return i;
    }
    return lane_names.size();
  }
};

class CountingObserver final : public Observer {
 public:
  explicit CountingObserver(std::shared_ptr<Counters> counters) : c_(std::move(counters)) {}
  void OnEvent(const CallEvent& event) override {
    LaneCounters& lane = *c_->lanes[c_->LaneIndex(event.lane)];
    switch (event.kind) {
      case EventKind::kReleased: {
        if (event.record == nullptr) return;
        const WorkerCallMetrics& r = *event.record;
        const Outcome outcome = r.success ? kSuccess : (r.timeout_reached ? kTimeout : kFailure);
        lane.calls[outcome].fetch_add(1, std::memory_order_relaxed);
        lane.duration.Observe(r.duration_ms / 1000.0);
        return;
      }
      case EventKind::kRejected: {
        const auto reason = static_cast<size_t>(event.reason);
        if (reason < kRejectReasonCount) {
          lane.rejections[reason].fetch_add(1, std::memory_order_relaxed);
        }
        return;
      }
      case EventKind::kTimeoutWarning:
        lane.timeouts[0].fetch_add(1, std::memory_order_relaxed);
        return;
      case EventKind::kTimeoutEscalation:
        lane.timeouts[1].fetch_add(1, std::memory_order_relaxed);
        return;
      case EventKind::kAcquired:
        // Every grant, 0 for one granted at once: the histogram's count is the grants.
        lane.admission_wait.Observe(static_cast<double>(event.wait_ns) / 1e9);
        return;
      case EventKind::kHeapWarning:
        return;
    }
  }

 private:
  std::shared_ptr<Counters> c_;
};

Result<std::vector<double>> CheckBuckets(const std::vector<double>& bounds, const char* key) {
  std::string listed;
  for (double b : bounds) listed += (listed.empty() ? "" : ",") + std::to_string(b);
  const std::string value = "[" + listed + "]";
  bool ok = !bounds.empty();
  for (size_t i = 0; ok && i < bounds.size(); ++i) {
    ok = std::isfinite(bounds[i]) && bounds[i] > 0 && (i == 0 || bounds[i] > bounds[i - 1]);
  }
  if (!ok) {
    return Error{ErrorCode::kInvalidArgument, key, value,
                 std::string("option '") + key + "' = " + value +
                     ": bucket bounds must be non-empty, finite, > 0 and strictly "
                     "increasing"};
  }
  return bounds;
}

prometheus::ClientMetric Sample(std::vector<prometheus::ClientMetric::Label> labels) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  return m;
}

prometheus::MetricFamily Family(std::string name, std::string help, prometheus::MetricType type) {
  prometheus::MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

void AddGauge(prometheus::MetricFamily& f, std::vector<prometheus::ClientMetric::Label> labels,
              double value) {
  f.metric.push_back(Sample(std::move(labels)));
  f.metric.back().gauge.value = value;
}

void AddCounter(prometheus::MetricFamily& f, std::vector<prometheus::ClientMetric::Label> labels,
                double value) {
  f.metric.push_back(Sample(std::move(labels)));
  f.metric.back().counter.value = value;
}

double Load(const std::atomic<uint64_t>& a) {
  return static_cast<double>(a.load(std::memory_order_relaxed));
}

}  // namespace

struct PrometheusCollector::Impl {
  ResourceBudgetManager* manager = nullptr;
  PrometheusOptions options;
  std::shared_ptr<Counters> counters;
};

PrometheusCollector::PrometheusCollector(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PrometheusCollector::~PrometheusCollector() = default;

Result<std::shared_ptr<PrometheusCollector>> PrometheusCollector::Create(
    ResourceBudgetManager* manager, PrometheusOptions options) {
  if (manager == nullptr) {
    return Error{ErrorCode::kInvalidArgument, "manager", "null",
                 "PrometheusCollector needs a manager, got null"};
  }
  auto durations = CheckBuckets(options.duration_buckets_seconds, "durationBucketsSeconds");
  if (!durations.ok()) return durations.error();
  auto waits = CheckBuckets(options.queue_wait_buckets_seconds, "queueWaitBucketsSeconds");
  if (!waits.ok()) return waits.error();

  auto counters = std::make_shared<Counters>();
  counters->duration_bounds = options.duration_buckets_seconds;
  counters->wait_bounds = options.queue_wait_buckets_seconds;
  for (const auto& [name, limit] : manager->config().lane_concurrency_limits) {
    counters->lane_names.push_back(name);
  }
  for (size_t i = 0; i <= counters->lane_names.size(); ++i) {
    counters->lanes.push_back(
        std::make_unique<LaneCounters>(&counters->duration_bounds, &counters->wait_bounds));
  }
  auto impl = std::make_unique<Impl>();
  impl->manager = manager;
  impl->options = std::move(options);
  impl->counters = counters;
  manager->AddObserver(std::make_shared<CountingObserver>(std::move(counters)));
  return std::shared_ptr<PrometheusCollector>(new PrometheusCollector(std::move(impl)));
}

void PrometheusCollector::ObserveQueueWait(std::string_view lane, double seconds) {
  Counters& c = *impl_->counters;
  c.lanes[c.LaneIndex(lane)]->queue_wait.Observe(seconds);
}

namespace {

using prometheus::MetricType;

// Per lane: calls by outcome, rejections by reason, timeouts by phase, durations, queue waits.
void AppendCallFamilies(const Counters& c, std::vector<prometheus::MetricFamily>& out) {
  // Labels for lane i; the last index is lane "" (rejections and waits of unknown lanes only).
  const auto lane_of = [&c](size_t i) -> const std::string& {
    static const std::string kEmpty;
    return i < c.lane_names.size() ? c.lane_names[i] : kEmpty;
  };
  const size_t configured = c.lane_names.size();

  auto calls = Family("laneguard_calls_total",
                      "Released worker calls by lane and outcome (success, failure, timeout).",
                      MetricType::Counter);
  auto rejections = Family("laneguard_rejections_total",
                           "Refused slot acquisitions by lane and reason (lane is empty for lanes "
                           "that are not configured).",
                           MetricType::Counter);
  auto timeouts = Family("laneguard_timeouts_total",
                         "Calls that passed a deadline, by lane and phase (warning: the timeout; "
                         "escalation: timeout x escalation factor).",
                         MetricType::Counter);
  auto durations = Family("laneguard_call_duration_seconds", "Duration of released worker calls.",
                          MetricType::Histogram);
  auto waits = Family("laneguard_queue_wait_seconds",
                      "Time calls waited in a scheduler's queue before asking for a slot.",
                      MetricType::Histogram);
  auto admission_waits = Family("laneguard_admission_wait_seconds",
                                "Time granted calls waited in their lane's queue for a place "
                                "(0 when granted at once).",
                                MetricType::Histogram);
  for (size_t i = 0; i <= configured; ++i) {
    const LaneCounters& lc = *c.lanes[i];
    const std::string& lane = lane_of(i);
    for (int r = 0; r < kRejectReasonCount; ++r) {
      const double v = Load(lc.rejections[r]);
      // Lane "" exists only for unknown lanes; skip its impossible all-zero series.
      if (i == configured && v == 0) continue;
      AddCounter(rejections,
                 {{"lane", lane}, {"reason", std::string(ToString(static_cast<RejectReason>(r)))}},
                 v);
    }
    if (i < configured) {
      for (int o = 0; o < kOutcomeCount; ++o) {
        AddCounter(calls, {{"lane", lane}, {"outcome", kOutcomeNames[o]}}, Load(lc.calls[o]));
      }
      for (int p = 0; p < 2; ++p) {
        AddCounter(timeouts, {{"lane", lane}, {"phase", kPhaseNames[p]}}, Load(lc.timeouts[p]));
      }
      durations.metric.push_back(Sample({{"lane", lane}}));
      durations.metric.back().histogram = lc.duration.Read();
      admission_waits.metric.push_back(Sample({{"lane", lane}}));
      admission_waits.metric.back().histogram = lc.admission_wait.Read();
    }
    prometheus::ClientMetric::Histogram wait = lc.queue_wait.Read();
    if (i < configured || wait.sample_count > 0) {
      waits.metric.push_back(Sample({{"lane", lane}}));
      waits.metric.back().histogram = std::move(wait);
    }
  }

  for (auto* f : {&calls, &rejections, &timeouts, &durations, &waits, &admission_waits})
    out.push_back(std::move(*f));
}

// Slots held and limits, per lane and in all.
void AppendConcurrencyFamilies(const ResourceBudgetManager& manager,
                               std::vector<prometheus::MetricFamily>& out) {
  const ConcurrencyStatus status = manager.GetConcurrencyStatus();
  auto lane_active =
      Family("laneguard_lane_active_calls",
             "Slots held now in each lane (overrunning calls included).", MetricType::Gauge);
  auto lane_limit = Family("laneguard_lane_concurrency_limit",
                           "Configured concurrency limit of each lane.", MetricType::Gauge);
  auto lane_overrunning =
      Family("laneguard_lane_overrunning_calls",
             "Slots held now by calls past their hard deadline, whose work may still run.",
             MetricType::Gauge);
  auto lane_queued = Family("laneguard_lane_queued_requests",
                            "Requests waiting now for a place in each lane.", MetricType::Gauge);
  auto lane_queue_limit =
      Family("laneguard_lane_queue_limit",
             "Most requests each lane keeps waiting (laneQueueLimits).", MetricType::Gauge);
  auto lane_borrowed = Family("laneguard_lane_borrowed_calls",
                              "Slots held now beyond the lane's limit, borrowed from other lanes' "
                              "idle places (lane lending).",
                              MetricType::Gauge);
  for (const auto& [lane, count] : status.lanes) {
    AddGauge(lane_active, {{"lane", lane}}, count.active);
    AddGauge(lane_limit, {{"lane", lane}}, count.limit);
    AddGauge(lane_overrunning, {{"lane", lane}}, count.overrunning);
    AddGauge(lane_queued, {{"lane", lane}}, count.queued);
    AddGauge(lane_queue_limit, {{"lane", lane}}, count.queue_limit);
    AddGauge(lane_borrowed, {{"lane", lane}}, count.borrowed);
  }
  auto global_active =
      Family("laneguard_global_active_calls", "Slots held now in all lanes.", MetricType::Gauge);
  AddGauge(global_active, {}, status.global.active);
  auto global_limit = Family("laneguard_global_concurrency_limit",
                             "Configured global concurrency limit.", MetricType::Gauge);
  AddGauge(global_limit, {}, status.global.limit);

  for (auto* f : {&lane_active, &lane_limit, &lane_overrunning, &lane_queued, &lane_queue_limit,
                  &lane_borrowed, &global_active, &global_limit})
    out.push_back(std::move(*f));
}

// The latest memory sample and the limits it is held to.
void AppendMemoryFamilies(const ResourceBudgetManager& manager,
                          std::vector<prometheus::MetricFamily>& out) {
  const MemorySnapshot memory = manager.GetMemorySnapshot();
  const Config& config = manager.config();
  auto rss = Family("laneguard_rss_bytes", "Resident set size at the latest memory sample.",
                    MetricType::Gauge);
  AddGauge(rss, {}, memory.rss_mb * kBytesPerMb);
  auto heap = Family("laneguard_heap_used_bytes",
                     "Heap bytes in use (allocator's view) at the latest memory sample.",
                     MetricType::Gauge);
  AddGauge(heap, {}, memory.heap_used_mb * kBytesPerMb);
  auto rss_limit =
      Family("laneguard_rss_limit_bytes",
             "maxRssMb: admission is refused above this resident set size.", MetricType::Gauge);
  AddGauge(rss_limit, {}, config.max_rss_mb * kBytesPerMb);
  auto heap_threshold =
      Family("laneguard_heap_warning_threshold_bytes",
             "heapWarningMb: admission logs a warning above this heap use.", MetricType::Gauge);
  AddGauge(heap_threshold, {}, config.heap_warning_mb * kBytesPerMb);

  for (auto* f : {&rss, &heap, &rss_limit, &heap_threshold}) out.push_back(std::move(*f));
}

void AppendSpanFamilies(const SpanCounts& spans, std::vector<prometheus::MetricFamily>& out) {
  auto exported = Family("laneguard_spans_exported_total",
                         "Spans handed to an exporter that accepted them.", MetricType::Counter);
  AddCounter(exported, {}, static_cast<double>(spans.exported));
  auto dropped = Family("laneguard_spans_dropped_total",
                        "Spans dropped, by reason: queue_full, export_failed, rejected, "
                        "retries_exhausted, partial_success, after_shutdown, shutdown_timeout.",
                        MetricType::Counter);
  const std::pair<const char*, uint64_t> reasons[] = {
      {"queue_full", spans.dropped_queue_full},
      {"export_failed", spans.dropped_export_failed},
      {"rejected", spans.dropped_rejected},
      {"retries_exhausted", spans.dropped_retries_exhausted},
      {"partial_success", spans.dropped_partial_success},
      {"after_shutdown", spans.dropped_after_shutdown},
      {"shutdown_timeout", spans.dropped_shutdown_timeout}};
  for (const auto& [reason, count] : reasons)
    AddCounter(dropped, {{"reason", reason}}, static_cast<double>(count));
  out.push_back(std::move(exported));
  out.push_back(std::move(dropped));
}

void AppendLogFamilies(const JsonLogger& logger, std::vector<prometheus::MetricFamily>& out) {
  auto lines =
      Family("laneguard_log_lines_total", "JSON log lines written, by level.", MetricType::Counter);
  for (LogLevel level : {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarning, LogLevel::kError}) {
    AddCounter(lines, {{"level", std::string(ToString(level))}},
               static_cast<double>(logger.lines_written(level)));
  }
  out.push_back(std::move(lines));
}

void AppendExtraFamilies(const std::vector<ExtraFamily>& extra,
                         std::vector<prometheus::MetricFamily>& out) {
  for (const ExtraFamily& f : extra) {
    const bool counter = f.type == ExtraFamily::Type::kCounter;
    auto family = Family(f.name, f.help, counter ? MetricType::Counter : MetricType::Gauge);
    for (const ExtraSample& sample : f.samples) {
      std::vector<prometheus::ClientMetric::Label> labels;
      for (const auto& [name, value] : sample.labels) labels.push_back({name, value});
      if (counter) {
        AddCounter(family, std::move(labels), sample.value);
      } else {
        AddGauge(family, std::move(labels), sample.value);
      }
    }
    out.push_back(std::move(family));
  }
}

}  // namespace

std::vector<prometheus::MetricFamily> PrometheusCollectorAccess::Collect(
    const PrometheusCollector& collector) {
  const PrometheusCollector::Impl& impl = *collector.impl_;
  std::vector<prometheus::MetricFamily> out;
  out.reserve(20);
  AppendCallFamilies(*impl.counters, out);
  AppendConcurrencyFamilies(*impl.manager, out);
  AppendMemoryFamilies(*impl.manager, out);
  if (impl.options.span_counts) AppendSpanFamilies(impl.options.span_counts(), out);
  if (impl.options.logger) AppendLogFamilies(*impl.options.logger, out);
  if (impl.options.extra_families) AppendExtraFamilies(impl.options.extra_families(), out);
  return out;
}

std::vector<prometheus::MetricFamily> CollectFamilies(const PrometheusCollector& collector) {
  return PrometheusCollectorAccess::Collect(collector);
}

std::string PrometheusCollector::Serialize(ExpositionFormat format) const {
  const std::vector<prometheus::MetricFamily> families = PrometheusCollectorAccess::Collect(*this);
  return format == ExpositionFormat::kOpenMetrics1 ? SerializeOpenMetrics(families)
                                                   : SerializeText(families);
}

MetricsResponse PrometheusCollector::Handle(std::string_view accept_header) const {
  const ExpositionFormat format = NegotiateFormat(accept_header);
  MetricsResponse response;
  response.content_type = std::string(ContentType(format));
  response.body = Serialize(format);
  return response;
}

SpanCountsSource SpanCountsFrom(const BatchSpanProcessor* processor) {
  return [processor] { return processor->stats(); };
}

}  // namespace laneguard
