// A process with data in every laneguard metric family, for the checks by real tools:
//   prometheus_fixture text|openmetrics   prints the exposition in that format
//   prometheus_fixture serve SECONDS      serves /metrics on 127.0.0.1 at a free port, prints
//                                         "port N", and exits after SECONDS or when stdin closes
#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "laneguard/exporters/prometheus.h"
#include "laneguard/manager.h"
#include "laneguard/observe/json_logger.h"

namespace {

int Usage() {
  std::fprintf(stderr, "usage: prometheus_fixture text|openmetrics|serve SECONDS\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage();
  const std::string mode = argv[1];
  laneguard::ManagerOptions options;
  options.start_background_thread = false;
  auto manager = laneguard::ResourceBudgetManager::Create(laneguard::Config{}, std::move(options));
  if (!manager.ok()) return 1;
  laneguard::ResourceBudgetManager& m = **manager;
  m.SampleMemoryNow();

  std::FILE* devnull = std::fopen("/dev/null", "w");
  if (devnull == nullptr) return 1;
  auto logger = std::make_shared<laneguard::JsonLogger>(laneguard::JsonLogger::Options{}, devnull);
  laneguard::PrometheusOptions prom;
  prom.logger = logger;
  prom.span_counts = [] {
    laneguard::SpanCounts c;
    c.exported = 7;
    c.dropped_queue_full = 1;
    c.dropped_export_failed = 2;
    c.dropped_after_shutdown = 3;
    c.dropped_rejected = 4;
    return c;
  };
  auto collector = laneguard::PrometheusCollector::Create(&m, prom);
  if (!collector.ok()) return 1;

  // Three successes, a failure, a call past both deadlines, rejections, a held slot, queue waits.
  for (int i = 0; i < 3; ++i) m.TryAcquire("fixture", "tool_call")->Release(true);
  m.TryAcquire("fixture", "file_read")->Release(false, "io");
  auto late = m.TryAcquire("fixture", "critic", 1);
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(50);
  while (std::chrono::steady_clock::now() < until) m.Tick();
  late->Release(false);
  auto held = m.TryAcquire("fixture", "forecast_model");
  (void)m.TryAcquire("fixture", "forecast_model");
  (void)m.TryAcquire("fixture", "no_such_lane");
  (*collector)->ObserveQueueWait("tool_call", 0.25);
  logger->LogInfo("fixture ready");
  logger->LogWarning("a warning");

  if (mode == "text" || mode == "openmetrics") {
    const std::string body =
        (*collector)
            ->Serialize(mode == "text" ? laneguard::ExpositionFormat::kText004
                                       : laneguard::ExpositionFormat::kOpenMetrics1);
    std::fwrite(body.data(), 1, body.size(), stdout);
    return 0;
  }
  if (mode != "serve" || argc < 3) return Usage();
  const int seconds = std::atoi(argv[2]);
  auto server = laneguard::MetricsServer::Start(*collector, {.host = "127.0.0.1", .port = 0});
  if (!server.ok()) {
    std::fprintf(stderr, "%s\n", server.error().message().c_str());
    return 1;
  }
  std::printf("port %d\n", (*server)->port());
  std::fflush(stdout);
  // Bounded: ends when stdin closes (the test died or is done) or after `seconds`.
  pollfd in{STDIN_FILENO, POLLIN, 0};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (poll(&in, 1, 100) > 0) {
      char buf[64];
      if (read(STDIN_FILENO, buf, sizeof buf) <= 0) break;
    }
  }
  (*server)->Stop();
  return 0;
}
