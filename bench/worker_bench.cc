// with_worker_call around an empty function: spans off, sampled out, sampled in to a batch
// processor whose exporter discards; beside the bare try_acquire+release it is built on.
// BENCHMARK_MAIN is in core_bench.cc.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "alloc_counter.h"
#include "discard_exporter.h"
#include "laneguard/worker.h"

namespace laneguard {
namespace {

// A "_min" row beside Google Benchmark's mean, median and stddev when repeated: on a shared VM the
// noise only ever adds time, so the fastest repetition is the steadiest figure of what the code
// costs (the median says what a typical run sees).
double Fastest(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

struct Runtime {
  explicit Runtime(bool enabled, double rate, bool batch, Config config = {}) {
    manager = ResourceBudgetManager::Create(std::move(config)).value();
    TracerOptions o;
    o.enabled = enabled;
    o.sample_rate = rate;
    if (batch)
      o.processor = std::make_shared<BatchSpanProcessor>(std::make_unique<DiscardExporter>());
    tracer = std::make_unique<Tracer>(std::move(o));
    calls = std::make_unique<WorkerCalls>(*manager, *tracer);
  }
  std::unique_ptr<ResourceBudgetManager> manager;
  std::unique_ptr<Tracer> tracer;
  std::unique_ptr<WorkerCalls> calls;
};

void BM_Baseline_TryAcquireRelease(benchmark::State& state) {
  Runtime rt(false, 0, false);
  AllocCounter allocs(state);
  for (auto _ : state) rt.manager->TryAcquire("task-1234", "tool_call")->Release(true);
}
BENCHMARK(BM_Baseline_TryAcquireRelease)->ComputeStatistics("min", Fastest);

void BM_WithWorkerCall_SpansOff(benchmark::State& state) {
  Runtime rt(false, 1.0, false);
  AllocCounter allocs(state);
  for (auto _ : state) rt.calls->Call("task-1234", [] {});
}
BENCHMARK(BM_WithWorkerCall_SpansOff)->ComputeStatistics("min", Fastest);

void BM_WithWorkerCall_SampledOut(benchmark::State& state) {
  Runtime rt(true, 0.0, true);
  AllocCounter allocs(state);
  for (auto _ : state) rt.calls->Call("task-1234", [] {});
}
BENCHMARK(BM_WithWorkerCall_SampledOut)->ComputeStatistics("min", Fastest);

// The spec's four events (acquired_slot, execution_started, execution_succeeded, call_completed)
// on a recording span handed to the batch processor.
void BM_WithWorkerCall_SampledInBatch(benchmark::State& state) {
  Runtime rt(true, 1.0, true);
  AllocCounter allocs(state);
  for (auto _ : state) rt.calls->Call("task-1234", [] {});
  rt.tracer->ForceFlush();
}
BENCHMARK(BM_WithWorkerCall_SampledInBatch)->ComputeStatistics("min", Fastest);

// The same span with no processor (sampled, recorded, then dropped): what recording costs the
// caller, without the hand-over to the batch processor and its export thread.
void BM_WithWorkerCall_SampledInSimple(benchmark::State& state) {
  Runtime rt(true, 1.0, false);
  AllocCounter allocs(state);
  for (auto _ : state) rt.calls->Call("task-1234", [] {});
}
BENCHMARK(BM_WithWorkerCall_SampledInSimple)->ComputeStatistics("min", Fastest);

// CallAsync, spans off, 64 calls started and then waited for per iteration (time per call is the
// time shown / 64; items_per_second counts calls): a new thread per call (std::async) against
// tasks on a 2-thread ThreadPool.
constexpr int kAsyncBatch = 64;

// Room for the whole batch at once: 64 threads started together may all hold a slot (with the
// default tool_call limit of 8 a loaded machine overlaps more than 8, and the refusal throws).
Config RoomForTheBatch() {
  Config c;
  c.global_concurrency_limit = kAsyncBatch;
  c.lane_concurrency_limits["tool_call"] = kAsyncBatch;
  return c;
}

void BM_CallAsync_ThreadPerCall(benchmark::State& state) {
  Runtime rt(false, 0, false, RoomForTheBatch());
  std::vector<std::future<void>> futures(kAsyncBatch);
  for (auto _ : state) {
    for (auto& f : futures) f = rt.calls->CallAsync("task-1234", [] {});
    for (auto& f : futures) f.get();
  }
  state.SetItemsProcessed(state.iterations() * kAsyncBatch);
}
BENCHMARK(BM_CallAsync_ThreadPerCall)->UseRealTime();

void BM_CallAsync_ThreadPool(benchmark::State& state) {
  Runtime rt(false, 0, false, RoomForTheBatch());
  ThreadPool pool(2);
  std::vector<std::future<void>> futures(kAsyncBatch);
  for (auto _ : state) {
    for (auto& f : futures) f = rt.calls->CallAsync(pool, "task-1234", [] {});
    for (auto& f : futures) f.get();
  }
  state.SetItemsProcessed(state.iterations() * kAsyncBatch);
}
BENCHMARK(BM_CallAsync_ThreadPool)->UseRealTime();

}  // namespace
}  // namespace laneguard
