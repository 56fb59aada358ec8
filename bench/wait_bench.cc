// Waiting admission (issue #18): the blocking hand-off beside a mutex + condition-variable
// semaphore and std::counting_semaphore, waiting beside TryAcquire + back-off under overload, and
// a simulation on a ManualClock of priorities with aging in an overloaded lane.
//
// The wall-clock benchmarks use managers with the background thread (the default): the blocking
// Acquire does not need it (no wait deadline), but it is what a deployment runs, and its CPU is
// counted alike in both variants of the overload benchmark. No observers; memory guards as by
// default. The simulation is a benchmark too (one iteration, custom counters) rather than its own
// program, so `make bench` runs it and its figures land in the same bench.json as the rest.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <queue>
#include <random>
#include <semaphore>
#include <thread>
#include <utility>
#include <vector>

#include "laneguard/clock.h"
#include "laneguard/manager.h"

namespace laneguard {
namespace {

// A manager whose lane "w" has `limit` places (background thread on, defaults otherwise).
ResourceBudgetManager* NewManager(int limit) {
  Config c;
  c.lane_concurrency_limits["w"] = limit;
  return ResourceBudgetManager::Create(std::move(c)).value().release();
}

// ---- 1. Two threads ping-ponging one place --------------------------------------------------

// The baseline: a plain counting semaphore on a mutex and a condition variable. It lets the
// releasing thread take the place straight back (barging), which laneguard does not.
class CondvarSemaphore {
 public:
  explicit CondvarSemaphore(int count) : count_(count) {}
  void Acquire() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return count_ > 0; });
    --count_;
  }
  void Release() {
    {
      std::lock_guard lock(mu_);
      ++count_;
    }
    cv_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int count_;
};

// Each thread loops acquire / release. Left alone, the releasing thread mostly takes the place
// straight back before the other one even asks (a zero hold, on two cores), which measures an
// uncontended acquire, not a hand-off; and the two baselines let it barge back in even when the
// other waits. So the loop is a strict ping-pong for all three: the holder keeps the place until
// the other thread has said it is about to wait (g_waiting), and after releasing does not ask
// again until the other has had the place (g_owner). Each grant is then one hand-off to a thread
// blocked (or about to block) in the primitive, and the time reported, wall time per grant of
// both threads together, is the time per hand-off. handoff_share checks it (1: every grant went
// to the other thread than the one before). g_left frees the other thread when one leaves its
// loop (Google Benchmark gives each thread the same number of iterations).
std::atomic<int> g_owner{-1};
std::atomic<bool> g_waiting[2], g_left[2];

// Yields until `done` or the other thread has left its loop.
template <typename Done>
void YieldUntil(int other, Done&& done) {
  while (!done() && !g_left[other].load(std::memory_order_acquire)) std::this_thread::yield();
}

template <typename AcquireRelease>
void HandoffLoop(benchmark::State& state, AcquireRelease&& acquire_release) {
  const int me = state.thread_index();
  const int other = 1 - me;
  g_left[me].store(false);  // before the loop's start barrier, so the other sees it reset
  int64_t handoffs = 0, done = 0;
  for (auto _ : state) {
    g_waiting[me].store(true, std::memory_order_release);
    acquire_release([&] {
      g_waiting[me].store(false, std::memory_order_relaxed);
      if (g_owner.exchange(me, std::memory_order_relaxed) != me) ++handoffs;
      YieldUntil(other, [&] { return g_waiting[other].load(std::memory_order_acquire); });
    });
    if (++done == state.max_iterations) g_left[me].store(true, std::memory_order_release);
    YieldUntil(other, [&] { return g_owner.load(std::memory_order_relaxed) != me; });
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["handoff_share"] =
      benchmark::Counter(static_cast<double>(handoffs), benchmark::Counter::kAvgIterations);
}

void BM_WaitHandoff_Laneguard(benchmark::State& state) {
  static ResourceBudgetManager* const manager = NewManager(1);
  HandoffLoop(state, [&](auto&& held) {
    Result<Slot> slot = manager->Acquire("task-1234", "w");
    if (!slot.ok()) {
      state.SkipWithError("unexpected refusal");
      return;
    }
    held();
    slot->Release(true);
  });
}
BENCHMARK(BM_WaitHandoff_Laneguard)->Threads(2)->UseRealTime();

void BM_WaitHandoff_MutexCondvar(benchmark::State& state) {
  static CondvarSemaphore sem(1);
  HandoffLoop(state, [&](auto&& held) {
    sem.Acquire();
    held();
    sem.Release();
  });
}
BENCHMARK(BM_WaitHandoff_MutexCondvar)->Threads(2)->UseRealTime();

void BM_WaitHandoff_CountingSemaphore(benchmark::State& state) {
  static std::counting_semaphore<1> sem(1);
  HandoffLoop(state, [&](auto&& held) {
    sem.acquire();
    held();
    sem.release();
  });
}
BENCHMARK(BM_WaitHandoff_CountingSemaphore)->Threads(2)->UseRealTime();

// ---- 2. Eight threads on a lane of two places ------------------------------------------------

// The work done while holding a place: about 1 us of spinning.
void Work() {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(1);
  while (std::chrono::steady_clock::now() < until) {
  }
}

// Waiting: the blocking Acquire, no wait deadline.
void OverloadWaiting(benchmark::State& state, ResourceBudgetManager* manager, void (*hold)()) {
  for (auto _ : state) {
    Result<Slot> slot = manager->Acquire("task-1234", "w");
    if (!slot.ok()) {
      state.SkipWithError("unexpected refusal");
      break;
    }
    hold();
    slot->Release(true);
  }
  state.SetItemsProcessed(state.iterations());
}
void BM_Overload_Throughput(benchmark::State& state) {
  static ResourceBudgetManager* const manager = NewManager(2);
  OverloadWaiting(state, manager, Work);
}
BENCHMARK(BM_Overload_Throughput)->Threads(8)->MeasureProcessCPUTime()->UseRealTime();

// Polling: TryAcquire, and on a refusal sleep 1 us, 2 us, ... up to 1 ms between tries.
void OverloadBackoff(benchmark::State& state, ResourceBudgetManager* manager, void (*hold)()) {
  int64_t tries = 0;
  for (auto _ : state) {
    auto delay = std::chrono::microseconds(1);
    for (;;) {
      ++tries;
      Result<Slot> slot = manager->TryAcquire("task-1234", "w");
      if (slot.ok()) {
        hold();
        slot->Release(true);
        break;
      }
      std::this_thread::sleep_for(delay);
      delay = std::min(delay * 2, std::chrono::microseconds(1000));
    }
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["tries_per_grant"] =
      benchmark::Counter(static_cast<double>(tries), benchmark::Counter::kAvgIterations);
}
void BM_Overload_Throughput_TryAcquireBackoff(benchmark::State& state) {
  static ResourceBudgetManager* const manager = NewManager(2);
  OverloadBackoff(state, manager, Work);
}
BENCHMARK(BM_Overload_Throughput_TryAcquireBackoff)
    ->Threads(8)
    ->MeasureProcessCPUTime()
    ->UseRealTime();

// The same with an I/O-like hold: the place is held 100 us asleep (a call waiting on a socket), so
// the lane, not the CPUs, is the bottleneck and the pollers find it full.
void HoldAsleep() { std::this_thread::sleep_for(std::chrono::microseconds(100)); }

void BM_Overload_Throughput_SleepHold(benchmark::State& state) {
  static ResourceBudgetManager* const manager = NewManager(2);
  OverloadWaiting(state, manager, HoldAsleep);
}
BENCHMARK(BM_Overload_Throughput_SleepHold)->Threads(8)->MeasureProcessCPUTime()->UseRealTime();

void BM_Overload_Throughput_TryAcquireBackoff_SleepHold(benchmark::State& state) {
  static ResourceBudgetManager* const manager = NewManager(2);
  OverloadBackoff(state, manager, HoldAsleep);
}
BENCHMARK(BM_Overload_Throughput_TryAcquireBackoff_SleepHold)
    ->Threads(8)
    ->MeasureProcessCPUTime()
    ->UseRealTime();

// ---- 3. Simulation: an overloaded lane, 10 % high priority -----------------------------------

constexpr int kSimLimit = 2;                 // L
constexpr int64_t kSimHoldMs = 100;          // H, every call
constexpr int kSimQueueLimit = 4000;         // Q: above the ~2,400 the queue reaches
constexpr int64_t kSimDurationMs = 600'000;  // 10 simulated minutes of arrivals
constexpr double kSimLoad = 1.2;             // arrivals per second / capacity

struct SimResult {
  std::vector<int64_t> high_waits, low_waits;  // ns, granted requests
  int refused = 0;
};

// Poisson arrivals (a fixed seed: the same stream in both runs), 10 % of them marked high; with
// `priorities` false every request asks as normal (plain FIFO). Each grant is released H later;
// the clock jumps from event to event and the manager is ticked at each one.
SimResult Simulate(bool priorities, int64_t aging_ms) {
  ManualClock clock;
  Config c;
  c.lane_concurrency_limits["w"] = kSimLimit;
  c.lane_queue_limits["w"] = kSimQueueLimit;
  c.queue_aging_ms = aging_ms;
  ManagerOptions o;
  o.clock = &clock;
  o.start_background_thread = false;
  auto manager = ResourceBudgetManager::Create(std::move(c), std::move(o)).value();

  std::mt19937_64 rng(18);
  std::exponential_distribution<double> gap_ms(kSimLoad * kSimLimit / kSimHoldMs);
  std::bernoulli_distribution is_high(0.1);
  using Done = std::pair<int64_t, size_t>;  // release time (ns), request
  std::priority_queue<Done, std::vector<Done>, std::greater<>> releases;
  std::vector<Slot> slots;
  std::vector<bool> high;
  SimResult out;
  slots.reserve(static_cast<size_t>(kSimDurationMs * kSimLoad * kSimLimit / kSimHoldMs * 1.1));

  double next_arrival_ms = gap_ms(rng);
  while (next_arrival_ms < kSimDurationMs || !releases.empty()) {
    const auto arrival_ns = static_cast<int64_t>(next_arrival_ms * 1e6);
    const bool arrive =
        next_arrival_ms < kSimDurationMs && (releases.empty() || arrival_ns < releases.top().first);
    const int64_t at = arrive ? arrival_ns : releases.top().first;
    clock.AdvanceNanos(at - clock.MonotonicNanos());
    manager->Tick();
    if (!arrive) {  // may grant the head waiter, whose callback schedules its own release
      const size_t req = releases.top().second;
      releases.pop();
      slots[req].Release(true);
      continue;
    }
    const size_t req = slots.size();
    slots.emplace_back();
    high.push_back(is_high(rng));
    AcquireOptions options;
    options.priority = priorities && high[req] ? Priority::kHigh
                       : priorities            ? Priority::kLow
                                               : Priority::kNormal;
    manager->AcquireAsync("sim", "w", std::move(options), [&, req](Result<Slot> r) {
      if (!r.ok()) {
        ++out.refused;
        return;
      }
      (high[req] ? out.high_waits : out.low_waits).push_back(r->wait_nanos());
      releases.emplace(clock.MonotonicNanos() + kSimHoldMs * 1'000'000, req);
      slots[req] = std::move(r).value();
    });
    next_arrival_ms += gap_ms(rng);
  }
  return out;
}

double PercentileMs(std::vector<int64_t> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto rank = static_cast<size_t>(std::ceil(p * static_cast<double>(v.size()))) - 1;
  return static_cast<double>(v[std::min(rank, v.size() - 1)]) / 1e6;
}

// Arg: queueAgingMs. Counters in ms. "high" is the same 10 % of requests in both runs.
void BM_WaitSimulation_Priorities(benchmark::State& state) {
  const int64_t aging_ms = state.range(0);
  SimResult with, fifo;
  for (auto _ : state) {
    with = Simulate(/*priorities=*/true, aging_ms);
    fifo = Simulate(/*priorities=*/false, aging_ms);
  }
  const double high_p99 = PercentileMs(with.high_waits, 0.99);
  const double fifo_p99 = PercentileMs(fifo.high_waits, 0.99);
  const double low_max = PercentileMs(with.low_waits, 1.0);
  // 2 x queueAgingMs + ceil(Q / L) x H (AcquireOptions::priority).
  const double bound = 2.0 * static_cast<double>(aging_ms) +
                       std::ceil(static_cast<double>(kSimQueueLimit) / kSimLimit) * kSimHoldMs;
  state.counters["high_p99_ms"] = high_p99;
  state.counters["high_p99_fifo_ms"] = fifo_p99;
  state.counters["high_p99_ratio"] = fifo_p99 > 0 ? high_p99 / fifo_p99 : 0;
  state.counters["low_p50_ms"] = PercentileMs(with.low_waits, 0.5);
  state.counters["low_max_ms"] = low_max;
  state.counters["fifo_max_ms"] =
      std::max(PercentileMs(fifo.high_waits, 1.0), PercentileMs(fifo.low_waits, 1.0));
  state.counters["aging_bound_ms"] = bound;
  state.counters["low_max_over_bound"] = low_max / bound;
  state.counters["granted"] = static_cast<double>(with.high_waits.size() + with.low_waits.size());
  state.counters["refused"] = with.refused + fifo.refused;
}
BENCHMARK(BM_WaitSimulation_Priorities)
    ->ArgName("queue_aging_ms")
    ->Arg(1000)
    ->Arg(10000)
    ->Arg(60000)
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace laneguard
