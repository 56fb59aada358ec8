// The OTLP export thread's throughput: spans encoded and posted to a receiver on 127.0.0.1,
// beside encoding alone (the baseline) in the same run, and end to end through the batch
// processor, where callers only queue. BENCHMARK_MAIN is in core_bench.cc.
#include <benchmark/benchmark.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "laneguard/exporters/otlp.h"

namespace laneguard {
namespace {

// What a worker_call span carries: the spec's attributes and two events.
SpanData WorkerCallSpan() {
  SpanData s;
  s.name = "worker_call:tool_call";
  s.trace_id = NewTraceId();
  s.span_id = NewSpanId();
  s.parent_span_id = NewSpanId();
  s.start_unix_nanos = 1767225600000000000;
  s.end_unix_nanos = 1767225600012345678;
  s.attributes = {{"taskId", std::string("task-123456")},
                  {"lane", std::string("tool_call")},
                  {"timeoutMs", int64_t{300000}},
                  {"globalConcurrency", int64_t{4}},
                  {"laneConcurrency", int64_t{2}},
                  {"success", true},
                  {"durationMs", 12.345678},
                  {"rssDeltaMb", 0.5}};
  s.events = {{"acquired_slot", 1767225600000100000, {{"globalConcurrency", int64_t{4}}}, 0},
              {"released", 1767225600012345678, {{"success", true}}, 0}};
  return s;
}

std::vector<SpanData> Batch(size_t n) {
  std::vector<SpanData> out;
  for (size_t i = 0; i < n; ++i) out.push_back(WorkerCallSpan());
  return out;
}

const Resource kResource{
    .service_name = "bench", .service_version = "1.0.0", .deployment_environment = "bench"};

// Answers every POST with 200 and an empty partialSuccess, as a collector does.
class Receiver {
 public:
  Receiver() {
    // Nagle on the reply would hold its body for the client's delayed ACK (40 ms a request);
    // collectors set TCP_NODELAY too.
    server_.set_tcp_nodelay(true);
    server_.Post("/v1/traces", [this](const httplib::Request& req, httplib::Response& res) {
      bytes_.fetch_add(req.body.size(), std::memory_order_relaxed);
      res.set_content("{}", "application/json");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~Receiver() {
    server_.stop();
    thread_.join();
  }
  std::string Url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/v1/traces"; }
  uint64_t bytes() const { return bytes_.load(); }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::atomic<uint64_t> bytes_{0};
};

std::unique_ptr<OtlpHttpSpanExporter> Exporter(const Receiver& r) {
  OtlpHttpExporterOptions o;
  o.endpoint = r.Url();
  o.retry.max_attempts = 1;
  return std::move(OtlpHttpSpanExporter::Create(o).value());
}

// Baseline: the JSON encoding alone.
void BM_OtlpEncodeOnly(benchmark::State& state) {
  const std::vector<SpanData> batch = Batch(static_cast<size_t>(state.range(0)));
  size_t bytes = 0;
  for (auto _ : state) {
    std::string body = EncodeOtlpTracesJson(batch, kResource);
    bytes = body.size();
    benchmark::DoNotOptimize(body);
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.counters["body_bytes"] = static_cast<double>(bytes);
}
BENCHMARK(BM_OtlpEncodeOnly)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();

// What the export thread does per batch: encode, POST, read the reply (one kept-alive connection).
void BM_OtlpExportToLocalReceiver(benchmark::State& state) {
  Receiver receiver;
  auto exporter = Exporter(receiver);
  const std::vector<SpanData> batch = Batch(static_cast<size_t>(state.range(0)));
  for (auto _ : state) {
    if (exporter->ExportWithResult(batch, kResource).code != ExportResult::Code::kSuccess) {
      state.SkipWithError("export failed");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_OtlpExportToLocalReceiver)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();

// End to end: the caller queues 8192 spans (timed separately: what a worker call pays), the
// processor's thread exports them in batches of 512; an iteration ends when all are delivered.
void BM_OtlpBatchProcessorEndToEnd(benchmark::State& state) {
  constexpr size_t kSpans = 8192;
  Receiver receiver;
  BatchSpanProcessor processor(Exporter(receiver),
                               {.max_queue_size = kSpans,
                                .max_export_batch_size = 512,
                                .schedule_delay = std::chrono::milliseconds(5)});
  processor.SetResource(kResource);
  const std::vector<SpanData> templ = Batch(kSpans);
  double caller_ns = 0;
  for (auto _ : state) {
    state.PauseTiming();
    std::vector<SpanData> spans = templ;
    state.ResumeTiming();
    const auto t0 = std::chrono::steady_clock::now();
    for (SpanData& s : spans) processor.OnEnd(std::move(s));
    caller_ns +=
        std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    if (!processor.ForceFlush(std::chrono::seconds(60))) {
      state.SkipWithError("flush timed out");
      break;
    }
  }
  const BatchExportStats s = processor.stats();
  state.SetItemsProcessed(state.iterations() * kSpans);
  state.counters["caller_ns_per_span"] =
      caller_ns / static_cast<double>(std::max<int64_t>(state.iterations(), 1) * kSpans);
  state.counters["dropped"] = static_cast<double>(s.dropped());
}
BENCHMARK(BM_OtlpBatchProcessorEndToEnd)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace laneguard
