// Counts every heap allocation of the benchmark process, so a benchmark can state "0 allocations
// per call" as a measured fact: AllocCounter reports allocs_per_op for the loop it spans.
#ifndef LANEGUARD_BENCH_ALLOC_COUNTER_H_
#define LANEGUARD_BENCH_ALLOC_COUNTER_H_

#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdint>

namespace laneguard {

extern std::atomic<uint64_t> g_allocations;  // defined with operator new in alloc_counter.cc

class AllocCounter {
 public:
  explicit AllocCounter(benchmark::State& state) : state_(state), start_(g_allocations.load()) {}
  ~AllocCounter() {
    state_.counters["allocs_per_op"] = benchmark::Counter(
        static_cast<double>(g_allocations.load() - start_), benchmark::Counter::kAvgIterations);
  }

 private:
  benchmark::State& state_;
  uint64_t start_;
};

}  // namespace laneguard

#endif  // LANEGUARD_BENCH_ALLOC_COUNTER_H_
