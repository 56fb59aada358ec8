// Admission and timer costs, each beside the baseline it should be judged against, in one binary
// so the ratios come from the same run on the same machine. Every benchmark also reports
// allocs_per_op, counted by the replacement operator new below.
#include <benchmark/benchmark.h>

#include <atomic>
#include <fstream>
#include <random>
#include <semaphore>
#include <string>

#include "alloc_counter.h"
#include "core/timer_queue.h"
#include "laneguard/clock.h"
#include "laneguard/manager.h"

namespace laneguard {
namespace {

// (a) The floor: a lane counter and a global counter taken and given back, nothing else.
std::atomic<int> g_lane{0}, g_global{0};
void BM_Floor_AtomicPair(benchmark::State& state) {
  AllocCounter allocs(state);
  for (auto _ : state) {
    bool ok = g_lane.fetch_add(1, std::memory_order_acq_rel) < 8;
    ok = g_global.fetch_add(1, std::memory_order_acq_rel) < 32 && ok;
    benchmark::DoNotOptimize(ok);
    g_global.fetch_sub(1, std::memory_order_acq_rel);
    g_lane.fetch_sub(1, std::memory_order_acq_rel);
  }
}
BENCHMARK(BM_Floor_AtomicPair);
BENCHMARK(BM_Floor_AtomicPair)->Threads(2)->UseRealTime();

// (b) std::counting_semaphore, succeeding and failing.
std::counting_semaphore<64> g_sem(8);
void BM_CountingSemaphore_TryAcquireRelease(benchmark::State& state) {
  AllocCounter allocs(state);
  for (auto _ : state) {
    if (g_sem.try_acquire()) g_sem.release();
  }
}
BENCHMARK(BM_CountingSemaphore_TryAcquireRelease);

void BM_CountingSemaphore_TryAcquireFail(benchmark::State& state) {
  std::counting_semaphore<1> empty(0);
  AllocCounter allocs(state);
  for (auto _ : state) benchmark::DoNotOptimize(empty.try_acquire());
}
BENCHMARK(BM_CountingSemaphore_TryAcquireFail);

std::unique_ptr<ResourceBudgetManager> MakeManager() {
  Config c;  // defaults: memory guard on, 300 s timeout armed per call
  return ResourceBudgetManager::Create(c).value();
}

// (c) Our try_acquire + release, uncontended: the default clock (FastClock), a timer armed and
// cancelled, a record written into the metrics ring, the memory guard checked.
void AcquireReleaseLoop(benchmark::State& state, ResourceBudgetManager* manager) {
  // Warm the call slab and the ring so the loop measures the steady state.
  for (int i = 0; i < 16; ++i) manager->TryAcquire("task-1234", "tool_call")->Release(true);
  AllocCounter allocs(state);
  for (auto _ : state) {
    auto slot = manager->TryAcquire("task-1234", "tool_call");
    if (!slot.ok()) state.SkipWithError("unexpected rejection");
    slot->Release(true);
  }
}

void BM_TryAcquireRelease(benchmark::State& state) {
  // Shared by the threads of the 2-thread run; a function static is initialized exactly once.
  static ResourceBudgetManager* const manager = MakeManager().release();
  AcquireReleaseLoop(state, manager);
}
BENCHMARK(BM_TryAcquireRelease);
BENCHMARK(BM_TryAcquireRelease)->Threads(2)->UseRealTime();

// The part of (c) that is the clock: a call's duration needs a monotonic reading at acquire and at
// release. steady_clock (vDSO) and FastClock (TSC, the manager's default where safe).
void TwoClockReads(benchmark::State& state, const Clock& clock) {
  for (auto _ : state) {
    benchmark::DoNotOptimize(clock.MonotonicNanos());
    benchmark::DoNotOptimize(clock.MonotonicNanos());
  }
}
void BM_Floor_TwoClockReads_Steady(benchmark::State& state) {
  TwoClockReads(state, SystemClock::Get());
}
BENCHMARK(BM_Floor_TwoClockReads_Steady);
void BM_Floor_TwoClockReads_Fast(benchmark::State& state) {
  TwoClockReads(state, FastClock::Get());
  state.counters["uses_tsc"] = FastClock::Get().uses_tsc();
}
BENCHMARK(BM_Floor_TwoClockReads_Fast);

// (c) without the clock: a ManualClock reads an atomic instead of the vDSO.
void BM_TryAcquireRelease_ManualClock(benchmark::State& state) {
  static ManualClock clock;
  static ResourceBudgetManager* const manager = [] {
    ManagerOptions o;
    o.clock = &clock;
    return ResourceBudgetManager::Create(Config{}, std::move(o)).value().release();
  }();
  AcquireReleaseLoop(state, manager);
}
BENCHMARK(BM_TryAcquireRelease_ManualClock);
BENCHMARK(BM_TryAcquireRelease_ManualClock)->Threads(2)->UseRealTime();

// (d) The rejection path: the lane is full. With 2 threads, both are refused on the same lane,
// as every caller is under overload.
void BM_Reject(benchmark::State& state) {
  struct Full {  // shared by the threads of the 2-thread run, never destroyed
    std::unique_ptr<ResourceBudgetManager> manager = MakeManager();
    Slot held = manager->TryAcquire("holder", "forecast_model").value();  // limit 1
  };
  static ResourceBudgetManager* const manager = (new Full)->manager.get();
  AllocCounter allocs(state);
  for (auto _ : state) {
    auto r = manager->TryAcquire("task-1234", "forecast_model");
    benchmark::DoNotOptimize(r.ok());
  }
}
BENCHMARK(BM_Reject);
BENCHMARK(BM_Reject)->Threads(2)->UseRealTime();

// (e) Timer arm + cancel with 10,000 other timers armed.
void BM_TimerArmCancel_10kArmed(benchmark::State& state) {
  TimerQueue timers;
  std::mt19937_64 rng(1);
  for (int i = 0; i < 10000; ++i) timers.Arm(static_cast<int64_t>(rng() % 1'000'000'000), i);
  int64_t deadline = 500'000'000;
  AllocCounter allocs(state);
  for (auto _ : state) {
    auto h = timers.Arm(deadline, 1);
    benchmark::DoNotOptimize(timers.Cancel(h));
    deadline += 997;
    if (deadline > 1'000'000'000) deadline = 0;
  }
}
BENCHMARK(BM_TimerArmCancel_10kArmed);

// The same with the cancel in random order, as when calls finish out of order.
void BM_TimerArmCancel_10kArmed_RandomOrder(benchmark::State& state) {
  TimerQueue timers;
  std::mt19937_64 rng(2);
  std::vector<TimerQueue::Handle> handles;
  for (int i = 0; i < 10000; ++i)
    handles.push_back(timers.Arm(static_cast<int64_t>(rng() % 1'000'000'000), i));
  AllocCounter allocs(state);
  for (auto _ : state) {
    size_t victim = rng() % handles.size();
    timers.Cancel(handles[victim]);
    handles[victim] = timers.Arm(static_cast<int64_t>(rng() % 1'000'000'000), victim);
  }
}
BENCHMARK(BM_TimerArmCancel_10kArmed_RandomOrder);

}  // namespace
}  // namespace laneguard

// BENCHMARK_MAIN, plus the machine facts the figures depend on in the run's context: which clock
// the kernel keeps (the manager's clock reads the TSC only when it is "tsc"), and the CPU.
int main(int argc, char** argv) {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0 && line.find(": ") != std::string::npos) {
      benchmark::AddCustomContext("cpu_model", line.substr(line.find(": ") + 2));
      break;
    }
  }
  const std::string source = laneguard::internal::CurrentClocksource();
  benchmark::AddCustomContext("clocksource", source.empty() ? "unknown" : source);
  benchmark::AddCustomContext("fast_clock",
                              laneguard::FastClock::Get().uses_tsc() ? "tsc" : "steady_clock");
  ::benchmark::Initialize(&argc, argv);
  if (::benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  ::benchmark::RunSpecifiedBenchmarks();
  ::benchmark::Shutdown();
  return 0;
}
