// Instructions per call on the calling thread, for regressions: runs one benchmark's loop body N
// times, set up as in core_bench.cc and worker_bench.cc, inside RunLoop (never inlined), so that
//
//   valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*RunLoop*' \
//       laneguard_callgrind_calls <case> <N>
//
// counts only the loop: its instructions / N is the figure (bench/callgrind.sh does this). The
// Google Benchmark binary cannot give it: its iteration count is chosen at run time and its
// repeated runs each pay the setup. Cases: try_acquire_release, reject, spans_off,
// sampled_in_batch.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "discard_exporter.h"
#include "laneguard/worker.h"

namespace laneguard {
namespace {

template <typename Body>
[[gnu::noinline]] void RunLoop(long n, Body&& body) {
  for (long i = 0; i < n; ++i) body();
}

int Run(std::string_view name, long n) {
  auto manager = ResourceBudgetManager::Create(Config{}).value();
  const bool spans = name == "sampled_in_batch";
  TracerOptions o;
  o.enabled = spans;
  o.sample_rate = 1.0;
  if (spans)
    o.processor = std::make_shared<BatchSpanProcessor>(std::make_unique<DiscardExporter>());
  Tracer tracer(std::move(o));
  WorkerCalls calls(*manager, tracer);
  // Warm the call slab, the metrics ring and the span pool, as the benchmarks' first iterations do.
  for (int i = 0; i < 64; ++i) calls.Call("task-1234", [] {});
  if (name == "try_acquire_release") {
    RunLoop(n, [&] { manager->TryAcquire("task-1234", "tool_call")->Release(true); });
  } else if (name == "reject") {
    Slot held = manager->TryAcquire("holder", "forecast_model").value();  // limit 1
    RunLoop(n, [&] {
      auto r = manager->TryAcquire("task-1234", "forecast_model");
      if (r.ok()) std::abort();
    });
  } else if (name == "spans_off" || name == "sampled_in_batch") {
    RunLoop(n, [&] { calls.Call("task-1234", [] {}); });
    tracer.ForceFlush();
  } else {
    std::fprintf(stderr, "unknown case '%.*s'\n", static_cast<int>(name.size()), name.data());
    return 2;
  }
  return 0;
}

}  // namespace
}  // namespace laneguard

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <case> <iterations>\n", argv[0]);
    return 2;
  }
  return laneguard::Run(argv[1], std::strtol(argv[2], nullptr, 10));
}
