// Prometheus exposition of a manager with the default 5 lanes, in both formats, beside two
// baselines from the same run: prometheus-cpp's own path (a Registry holding the same series,
// Collect() plus its TextSerializer), and a plain append of the same bytes (the floor for building
// the body). Also the cost the collector's observer adds to each worker call.
#include <benchmark/benchmark.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <cmath>
#include <map>
#include <memory>
#include <string>

#include "alloc_counter.h"
#include "exporters/prometheus_internal.h"
#include "laneguard/exporters/prometheus.h"

namespace laneguard {
namespace {

struct Fixture {
  std::unique_ptr<ResourceBudgetManager> manager;
  std::shared_ptr<PrometheusCollector> collector;
};

// Every lane has calls, rejections and waits, so every series is non-zero.
Fixture MakeFixture() {
  ManagerOptions options;
  options.start_background_thread = false;
  Fixture f;
  f.manager = ResourceBudgetManager::Create(Config{}, std::move(options)).value();
  f.manager->SampleMemoryNow();
  PrometheusOptions prom;
  prom.span_counts = [] {
    SpanCounts c;
    c.exported = 1000;
    c.dropped_queue_full = 1;
    c.dropped_export_failed = 2;
    c.dropped_after_shutdown = 3;
    return c;
  };
  f.collector = PrometheusCollector::Create(f.manager.get(), prom).value();
  for (const auto& [lane, limit] : f.manager->config().lane_concurrency_limits) {
    for (int i = 0; i < 100; ++i) {
      f.manager->TryAcquire("bench", lane)->Release(i % 10 != 0);
      f.collector->ObserveQueueWait(lane, i * 0.01);
    }
  }
  return f;
}

void Serialize5Lanes(benchmark::State& state, ExpositionFormat format) {
  Fixture f = MakeFixture();
  AllocCounter allocs(state);
  size_t bytes = 0;
  for (auto _ : state) {
    std::string body = f.collector->Serialize(format);
    bytes = body.size();
    benchmark::DoNotOptimize(body);
  }
  state.counters["bytes"] = static_cast<double>(bytes);
}
void BM_Prometheus_Text5Lanes(benchmark::State& state) {
  Serialize5Lanes(state, ExpositionFormat::kText004);
}
void BM_Prometheus_OpenMetrics5Lanes(benchmark::State& state) {
  Serialize5Lanes(state, ExpositionFormat::kOpenMetrics1);
}
BENCHMARK(BM_Prometheus_Text5Lanes);
BENCHMARK(BM_Prometheus_OpenMetrics5Lanes);

// Collection alone (counters read, gauges read from the manager, MetricFamily values built).
void BM_Prometheus_Collect5Lanes(benchmark::State& state) {
  Fixture f = MakeFixture();
  AllocCounter allocs(state);
  for (auto _ : state) benchmark::DoNotOptimize(CollectFamilies(*f.collector));
}
BENCHMARK(BM_Prometheus_Collect5Lanes);

// Baseline: the same series in a prometheus-cpp Registry, collected and serialized by
// prometheus-cpp alone.
void BM_Baseline_PrometheusCppRegistryText(benchmark::State& state) {
  Fixture f = MakeFixture();
  prometheus::Registry registry;
  for (const prometheus::MetricFamily& family : CollectFamilies(*f.collector)) {
    for (const prometheus::ClientMetric& m : family.metric) {
      std::map<std::string, std::string> labels;
      for (const auto& l : m.label) labels[l.name] = l.value;
      switch (family.type) {
        case prometheus::MetricType::Counter:
          prometheus::BuildCounter()
              .Name(family.name)
              .Help(family.help)
              .Register(registry)
              .Add(labels)
              .Increment(m.counter.value);
          break;
        case prometheus::MetricType::Gauge:
          prometheus::BuildGauge()
              .Name(family.name)
              .Help(family.help)
              .Register(registry)
              .Add(labels)
              .Set(m.gauge.value);
          break;
        case prometheus::MetricType::Histogram: {
          prometheus::Histogram::BucketBoundaries bounds;
          std::vector<double> increments;
          uint64_t previous = 0;
          for (const auto& b : m.histogram.bucket) {
            if (!std::isinf(b.upper_bound)) bounds.push_back(b.upper_bound);
            increments.push_back(static_cast<double>(b.cumulative_count - previous));
            previous = b.cumulative_count;
          }
          prometheus::BuildHistogram()
              .Name(family.name)
              .Help(family.help)
              .Register(registry)
              .Add(labels, bounds)
              .ObserveMultiple(increments, m.histogram.sample_sum);
          break;
        }
        default:
          break;
      }
    }
  }
  const prometheus::TextSerializer serializer;
  AllocCounter allocs(state);
  size_t bytes = 0;
  for (auto _ : state) {
    std::string body = serializer.Serialize(registry.Collect());
    bytes = body.size();
    benchmark::DoNotOptimize(body);
  }
  state.counters["bytes"] = static_cast<double>(bytes);
}
BENCHMARK(BM_Baseline_PrometheusCppRegistryText);

// Baseline: copying the finished OpenMetrics body into a fresh string (the cost of producing the
// bytes with no formatting at all).
void BM_Baseline_AppendSameBytes(benchmark::State& state) {
  Fixture f = MakeFixture();
  const std::string body = f.collector->Serialize(ExpositionFormat::kOpenMetrics1);
  AllocCounter allocs(state);
  for (auto _ : state) {
    std::string out;
    out.append(body);
    benchmark::DoNotOptimize(out);
  }
  state.counters["bytes"] = static_cast<double>(body.size());
}
BENCHMARK(BM_Baseline_AppendSameBytes);

class NoopObserver final : public Observer {
 public:
  void OnEvent(const CallEvent& event) override { benchmark::DoNotOptimize(event.kind); }
};

// A worker call (acquire + release) with the collector's observer attached, beside the same call
// with no observer and with an observer that does nothing (the manager builds the released call's
// record only for observers, so that row isolates what the collector itself adds).
enum class Observed { kNone, kNoop, kCollector };
void AcquireRelease(benchmark::State& state, Observed observed) {
  ManagerOptions options;
  options.start_background_thread = false;
  auto manager = ResourceBudgetManager::Create(Config{}, std::move(options)).value();
  std::shared_ptr<PrometheusCollector> collector;
  if (observed == Observed::kCollector) {
    collector = PrometheusCollector::Create(manager.get()).value();
  } else if (observed == Observed::kNoop) {
    manager->AddObserver(std::make_shared<NoopObserver>());
  }
  for (int i = 0; i < 16; ++i) manager->TryAcquire("task-1234", "file_read")->Release(true);
  AllocCounter allocs(state);
  for (auto _ : state) {
    auto slot = manager->TryAcquire("task-1234", "file_read");
    slot->Release(true);
  }
}
void BM_AcquireRelease_NoObserver(benchmark::State& state) {
  AcquireRelease(state, Observed::kNone);
}
void BM_AcquireRelease_NoopObserver(benchmark::State& state) {
  AcquireRelease(state, Observed::kNoop);
}
void BM_AcquireRelease_WithCollector(benchmark::State& state) {
  AcquireRelease(state, Observed::kCollector);
}
BENCHMARK(BM_AcquireRelease_NoObserver);
BENCHMARK(BM_AcquireRelease_NoopObserver);
BENCHMARK(BM_AcquireRelease_WithCollector);

}  // namespace
}  // namespace laneguard
