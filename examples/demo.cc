// laneguard demo: concurrent worker calls across all five lanes under one ResourceBudgetManager.
//
//   laneguard_demo [CONFIG.json] [--log FILE] [--spans FILE]
//
// Eight worker threads issue calls on random lanes through WorkerCalls::Call. Each call takes a
// slot, "works" for a few milliseconds while watching its stop_token, and releases the slot; some
// fail, two run past their timeout (one cooperatively stops at the warning, one ignores it, is
// escalated and ends in WorkerCallTimeout). Lanes that are full refuse, and the worker backs off
// and retries. At the end the demo prints the spec's statistics, the concurrency status and the
// memory snapshot. JSON log lines go to --log (default demo-log.jsonl), spans as OTLP-shaped JSON
// lines to --spans (default demo-spans.jsonl), through the batch span processor.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "laneguard/config.h"
#include "laneguard/manager.h"
#include "laneguard/observe/json_logger.h"
#include "laneguard/trace/trace.h"
#include "laneguard/worker.h"

namespace {

using laneguard::Config;
using laneguard::ResourceBudgetManager;

struct Cancelled : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct ToolError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void SleepMs(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// Works for `ms`, in 1 ms steps, stopping early when asked.
bool Work(int ms, const std::stop_token& stop, bool ignore_stop) {
  for (int i = 0; i < ms; ++i) {
    if (stop.stop_requested() && !ignore_stop) return false;
    SleepMs(1);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path;
  std::string log_path = "demo-log.jsonl";
  std::string spans_path = "demo-spans.jsonl";
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--log") == 0 && i + 1 < argc) {
      log_path = argv[++i];
    } else if (std::strcmp(argv[i], "--spans") == 0 && i + 1 < argc) {
      spans_path = argv[++i];
    } else if (argv[i][0] == '-') {
      std::fprintf(stderr,
                   "laneguard_demo: unknown flag '%s'\nusage: %s [CONFIG.json] [--log FILE] "
                   "[--spans FILE]\n",
                   argv[i], argv[0]);
      return 2;
    } else {
      config_path = argv[i];
    }
  }

  Config config;
  if (!config_path.empty()) {
    auto loaded = laneguard::LoadConfigFile(config_path);
    if (!loaded.ok()) {
      std::fprintf(stderr, "laneguard_demo: %s\n", loaded.error().message().c_str());
      return 2;
    }
    config = loaded.value();
  }
  config.timer_tick_ms = 5;
  config.memory_sample_interval_ms = 100;

  auto logger =
      laneguard::JsonLogger::OpenFile({.min_level = laneguard::LogLevel::kInfo}, log_path);
  if (!logger.ok()) {
    std::fprintf(stderr, "laneguard_demo: %s\n", logger.error().message().c_str());
    return 2;
  }
  std::shared_ptr<laneguard::JsonLogger> log = std::move(logger).value();

  laneguard::ManagerOptions options;
  options.observers.push_back(std::make_shared<laneguard::LoggingObserver>(log));
  auto created = ResourceBudgetManager::Create(config, std::move(options));
  if (!created.ok()) {
    std::fprintf(stderr, "laneguard_demo: %s\n", created.error().message().c_str());
    return 2;
  }
  std::unique_ptr<ResourceBudgetManager> manager = std::move(created).value();

  auto exporter = laneguard::NewJsonLinesFileSpanExporter(spans_path);
  if (!exporter.ok()) {
    std::fprintf(stderr, "laneguard_demo: %s\n", exporter.error().message().c_str());
    return 2;
  }
  auto processor = std::make_shared<laneguard::BatchSpanProcessor>(std::move(exporter).value());
  laneguard::TracerOptions tracing;
  tracing.enabled = config.enable_span_emission;
  tracing.sample_rate = config.span_sample_rate;
  tracing.resource = {.service_name = "laneguard-demo",
                      .service_version = "0.1.0",
                      .deployment_environment = "demo"};
  tracing.processor = processor;
  laneguard::Tracer tracer(std::move(tracing));
  laneguard::WorkerCalls calls(*manager, tracer, log);

  const std::vector<std::string> lanes = {"tool_call", "file_read", "file_write", "critic",
                                          "forecast_model"};
  constexpr int kThreads = 8, kCallsPerThread = 60;
  std::atomic<int> retries{0}, stopped_early{0}, overran{0};

  std::printf("laneguard demo: %d threads x %d calls across %zu lanes (global limit %d)\n",
              kThreads, kCallsPerThread, lanes.size(), config.global_concurrency_limit);
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t) * 7919u + 1);
      for (int i = 0; i < kCallsPerThread; ++i) {
        const std::string& lane = lanes[rng() % lanes.size()];
        const std::string task = "task-" + std::to_string(t) + "-" + std::to_string(i);
        // Two calls of thread 0 have short timeouts: one stops at the warning, one does not.
        const bool slow_polite = t == 0 && i == 5;
        const bool slow_stubborn = t == 0 && i == 6;
        const int64_t timeout_ms = (slow_polite || slow_stubborn) ? 20 : 2000;
        for (;;) {
          try {
            calls.Call(task,
                       [&](laneguard::CallContext& ctx) {
                         const int work_ms =
                             (slow_polite || slow_stubborn) ? 60 : 2 + static_cast<int>(rng() % 12);
                         if (!Work(work_ms, ctx.stop_token(), slow_stubborn)) {
                           ++stopped_early;
                           throw Cancelled("stopped at the timeout warning");
                         }
                         if (rng() % 17 == 0) throw ToolError("the tool reported an error");
                       },
                       {.lane = lane,
                        .timeout_ms = timeout_ms,
                        .metadata = {{"thread", std::to_string(t)}}});
          } catch (const laneguard::ResourceLimitExceeded&) {
            ++retries;  // the lane is full: back off and try again
            SleepMs(1 + static_cast<int>(rng() % 3));
            continue;
          } catch (const laneguard::WorkerCallTimeout&) {
            ++overran;  // returned after its hard deadline
          } catch (const std::runtime_error&) {
            // Cancelled or ToolError: recorded as a failure with its type.
          }
          break;
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  const double elapsed_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();

  const auto stats = manager->GetStatistics();
  std::printf("\n== statistics (%.0f ms wall) ==\n", elapsed_ms);
  std::printf(
      "totalCalls %lld  successCount %lld  failureCount %lld  timeoutCount %lld  "
      "escalations %lld\n",
      static_cast<long long>(stats.total_calls), static_cast<long long>(stats.success_count),
      static_cast<long long>(stats.failure_count), static_cast<long long>(stats.timeout_count),
      static_cast<long long>(stats.escalation_count));
  std::printf("averageDurationMs %.2f  p50 %.2f  p95 %.2f  p99 %.2f  averageRssDeltaMb %.3f\n",
              stats.average_duration_ms, stats.p50_duration_ms, stats.p95_duration_ms,
              stats.p99_duration_ms, stats.average_rss_delta_mb);
  std::printf(
      "maxConcurrentCalls %d  rejections %lld (retried)  stopped at the warning %d  overran the "
      "hard deadline %d\n",
      stats.max_concurrent_calls, static_cast<long long>(stats.total_rejections),
      stopped_early.load(), overran.load());
  std::printf("rejections by reason:");
  for (const auto& [reason, n] : stats.rejections_by_reason)
    if (n > 0) std::printf("  %s=%lld", reason.c_str(), static_cast<long long>(n));
  std::printf("\n\n%-16s %6s %6s %6s %8s %8s %8s %6s\n", "lane", "limit", "calls", "fails",
              "timeouts", "avg_ms", "p95_ms", "rejects");
  for (const auto& [name, lane] : stats.lanes)
    std::printf("%-16s %6d %6lld %6lld %8lld %8.2f %8.2f %6lld\n", name.c_str(), lane.limit,
                static_cast<long long>(lane.total_calls),
                static_cast<long long>(lane.failure_count),
                static_cast<long long>(lane.timeout_count), lane.average_duration_ms,
                lane.p95_duration_ms, static_cast<long long>(lane.rejections));

  const auto status = manager->GetConcurrencyStatus();
  std::printf("\n== concurrency status ==\nglobal: active %d / limit %d (overrunning %d)\n",
              status.global.active, status.global.limit, status.global.overrunning);
  for (const auto& [name, lane] : status.lanes)
    std::printf("  %-16s active %d / limit %d\n", name.c_str(), lane.active, lane.limit);

  const auto mem = manager->SampleMemoryNow();
  std::printf(
      "\n== memory snapshot (%s) ==\nrssMb %.2f  peakRssMb %.2f  heapTotalMb %.2f  "
      "heapUsedMb %.2f",
      mem.timestamp.c_str(), mem.rss_mb, mem.peak_rss_mb, mem.heap_total_mb, mem.heap_used_mb);
  if (mem.cgroup_usage_mb)
    std::printf("  cgroup(%s) usageMb %.1f limitMb %s", mem.cgroup_version.c_str(),
                *mem.cgroup_usage_mb,
                mem.cgroup_limit_mb ? std::to_string(*mem.cgroup_limit_mb).c_str() : "none");
  tracer.Shutdown();  // flushes every queued span
  const auto span_stats = processor->stats();
  std::printf("\n\nspans: %s (%llu exported, %llu dropped)", spans_path.c_str(),
              static_cast<unsigned long long>(span_stats.exported),
              static_cast<unsigned long long>(span_stats.dropped_queue_full +
                                              span_stats.dropped_export_failed +
                                              span_stats.dropped_after_shutdown));
  std::printf("\nJSON log: %s (%llu info, %llu warning, %llu error lines)\n", log_path.c_str(),
              static_cast<unsigned long long>(log->lines_written(laneguard::LogLevel::kInfo)),
              static_cast<unsigned long long>(log->lines_written(laneguard::LogLevel::kWarning)),
              static_cast<unsigned long long>(log->lines_written(laneguard::LogLevel::kError)));
  // The demo's own invariants: every slot came back and the limits held.
  if (status.global.active != 0 || stats.total_calls != kThreads * kCallsPerThread ||
      stats.max_concurrent_calls > config.global_concurrency_limit) {
    std::fprintf(stderr, "laneguard_demo: invariant violated\n");
    return 1;
  }
  return 0;
}
