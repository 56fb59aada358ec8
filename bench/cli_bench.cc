// `laneguard batch` on 2,000 trivial jobs (`true`) against `xargs -P` with the same parallelism,
// measured in the same run. Both are whole commands started the same way, so the figures include
// laneguard's own start-up, job-file validation, slot admission, per-call cgroups, spans off.
#include <benchmark/benchmark.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace {

constexpr int kJobs = 2000;
constexpr int kParallelism = 8;

std::string Scratch() {
  static const std::string dir = [] {
    auto path = std::filesystem::temp_directory_path() /
                ("laneguard-cli-bench-" + std::to_string(getpid()));
    std::filesystem::create_directories(path);
    std::ofstream jobs(path / "jobs.jsonl");
    for (int i = 0; i < kJobs; ++i) jobs << "{\"id\": \"j" << i << "\", \"cmd\": [\"true\"]}\n";
    std::ofstream(path / "config.json")
        << "{\"globalConcurrencyLimit\": " << kParallelism
        << ", \"laneConcurrencyLimits\": {\"tool_call\": " << kParallelism << "}}";
    return path.string();
  }();
  return dir;
}

void RunShell(benchmark::State& state, const std::string& command) {
  for (auto _ : state) {
    const int status = std::system(command.c_str());
    if (status != 0) state.SkipWithError(("failed: " + command).c_str());
  }
  state.SetItemsProcessed(state.iterations() * kJobs);
}

void BM_Batch2000True_Xargs(benchmark::State& state) {
  RunShell(state, "seq " + std::to_string(kJobs) + " | xargs -P " + std::to_string(kParallelism) +
                      " -n 1 true");
}
BENCHMARK(BM_Batch2000True_Xargs)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

void BM_Batch2000True_Laneguard(benchmark::State& state) {
  const std::string dir = Scratch();
  RunShell(state, std::string(LANEGUARD_CLI_PATH) + " batch " + dir + "/jobs.jsonl --config " +
                      dir + "/config.json --quiet --summary json > /dev/null");
}
BENCHMARK(BM_Batch2000True_Laneguard)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

// Both commands in each iteration, one right after the other, so a noisy stretch of the machine
// hits both: `ratio` is laneguard's rate over xargs's (xargs time / laneguard time; the target
// is >= 0.8), with each side's milliseconds per run as counters.
void BM_Batch2000True_Ratio(benchmark::State& state) {
  const std::string dir = Scratch();
  const std::string xargs =
      "seq " + std::to_string(kJobs) + " | xargs -P " + std::to_string(kParallelism) + " -n 1 true";
  const std::string laneguard = std::string(LANEGUARD_CLI_PATH) + " batch " + dir +
                                "/jobs.jsonl --config " + dir +
                                "/config.json --quiet --summary json > /dev/null";
  double xargs_ms = 0, laneguard_ms = 0;
  auto timed = [&state](const std::string& command) {
    const auto start = std::chrono::steady_clock::now();
    if (std::system(command.c_str()) != 0) state.SkipWithError(("failed: " + command).c_str());
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
        .count();
  };
  for (auto _ : state) {
    xargs_ms += timed(xargs);
    laneguard_ms += timed(laneguard);
  }
  const double runs = static_cast<double>(state.iterations());
  state.counters["xargs_ms"] = xargs_ms / runs;
  state.counters["laneguard_ms"] = laneguard_ms / runs;
  state.counters["ratio"] = laneguard_ms > 0 ? xargs_ms / laneguard_ms : 0;
}
BENCHMARK(BM_Batch2000True_Ratio)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

}  // namespace
