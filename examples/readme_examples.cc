// The README's C++ examples, compiled: each region between "// README example N" and
// "// README example N end" is the README's Nth ```cpp block without its #include lines (those are
// at the top of this file). tests/readme/check_readme_examples.py fails when the two differ, and
// this file is built with the examples, so an example that no longer compiles fails the build.
// The functions are never called; what the examples leave to the reader (RunTool, RunCritic, ...)
// is only declared.
#include <laneguard/exporters/otlp.h>
#include <laneguard/exporters/prometheus.h>
#include <laneguard/manager.h>
#include <laneguard/observe/alerts.h>
#include <laneguard/observe/json_logger.h>
#include <laneguard/observe/metric_emitter.h>
#include <laneguard/process.h>
#include <laneguard/worker.h>

#include <cstdio>
#include <future>
#include <iostream>
#include <memory>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

namespace readme {

// What the examples leave to the reader.
struct Verdict {};
bool RunTool(std::stop_token stop);
Verdict RunCritic(const std::string& input, std::stop_token stop = {});
int Step1();
int Step2();
int Combine(int a, int b);
void Write(const std::string& item);

int ManagerExample(laneguard::TimeoutHandler& killer) {
  // README example 1
  // Config: the spec's camelCase JSON, merged over the defaults. Errors name the key and the value.
  auto config = laneguard::LoadConfigFile("examples/config/production.json");
  if (!config.ok()) {
    fprintf(stderr, "%s\n", config.error().message().c_str());
    return 2;
  }

  laneguard::ManagerOptions options;
  auto logger = std::make_shared<laneguard::JsonLogger>(laneguard::JsonLogger::Options{});
  options.observers.push_back(std::make_shared<laneguard::LoggingObserver>(logger));
  auto manager = laneguard::ResourceBudgetManager::Create(*config, std::move(options)).value();

  auto slot = manager->TryAcquire("task-123", "tool_call", /*timeout_ms=*/30000,
                                  {{"toolName", "forecast_stitch"}});
  if (!slot.ok()) {
    // slot.error().code(): resource_exhausted (a full lane or global limit, the memory guard),
    // not_found (unknown lane), unavailable (shutting down), invalid_argument (a bad timeout);
    // slot.error().rejection()->reason says which; slot.error().message() names the lane, the
    // limit and the numbers.
    return 1;
  }
  // killer: a TimeoutHandler; OnWarning() at the timeout, OnEscalation() at the hard deadline.
  slot->SetTimeoutHandler(&killer);
  bool ok = RunTool(slot->stop_token());     // stop requested at the timeout
  slot->Release(ok, ok ? "" : "ToolError");  // or let it go out of scope: "abandoned"

  laneguard::Statistics stats = manager->GetStatistics();  // totals, p50/p95/p99, per lane
  laneguard::ConcurrencyStatus now = manager->GetConcurrencyStatus();
  laneguard::MemorySnapshot mem = manager->GetMemorySnapshot();  // RSS, heap, cgroup
  std::vector<laneguard::WorkerCallMetrics> calls = manager->GetMetrics();
  // README example 1 end
  return 0;
}

void WaitingExample(std::unique_ptr<laneguard::ResourceBudgetManager>& manager,
                    std::stop_source& request_stop) {
  // README example 2
  laneguard::AcquireOptions wait;
  wait.wait_ms = 2000;                         // empty: until granted, cancelled or Shutdown()
  wait.priority = laneguard::Priority::kHigh;  // kLow, kNormal (default), kHigh
  wait.stop_token = request_stop.get_token();  // cancels the wait, not the call
  laneguard::Result<laneguard::Slot> slot = manager->Acquire("task-7", "forecast_model", wait);

  manager->AcquireAsync("task-8", "forecast_model", {}, [](laneguard::Result<laneguard::Slot> r) {
    // Exactly once, with the slot or the refusal; post it to your loop, keep this short.
  });
  std::future<laneguard::Result<laneguard::Slot>> later =
      manager->AcquireFuture("task-9", "forecast_model");
  // README example 2 end
}

int WorkerExample(const laneguard::Result<laneguard::Config>& config,
                  std::unique_ptr<laneguard::ResourceBudgetManager>& manager,
                  std::shared_ptr<laneguard::JsonLogger> logger, const std::string& input,
                  std::string_view incoming_header, const std::vector<std::string>& items) {
  // README example 3
  laneguard::TracerOptions tracing;
  tracing.resource = {.service_name = "orchestrator",
                      .service_version = "1.0.0",
                      .deployment_environment = "production"};
  tracing.sample_rate = config->span_sample_rate;  // parent-based ratio sampling
  tracing.processor = std::make_shared<laneguard::BatchSpanProcessor>(
      laneguard::NewJsonLinesFileSpanExporter("spans.jsonl").value());  // OTLP-shaped JSON lines
  laneguard::Tracer tracer(std::move(tracing));
  laneguard::WorkerCalls calls(*manager, tracer, logger);

  // The spec's withWorkerCallObservability: a slot, a span "worker_call:critic", the outcome.
  auto out = calls.Call(
      "task-123", [&](laneguard::CallContext& ctx) { return RunCritic(input, ctx.stop_token()); },
      {.lane = "critic",
       .timeout_ms = 600000,
       .metadata = {{"toolName", "forecast_stitch"}},
       .parent = laneguard::ParseTraceparent(incoming_header)});
  // Refused: throws laneguard::ResourceLimitExceeded ("Resource limit exceeded: lane_limit: ..."),
  // or with .throw_on_resource_limit_exceeded = false runs unguarded (span attribute, counter,
  // log). fn's own exceptions propagate unchanged. Returning after the hard deadline throws
  // laneguard::WorkerCallTimeout.

  // Asynchronous: the same call as a task on a pool (or any laneguard::Executor); the future
  // carries the result, fn's exception or the refusal. CallAsync without an executor starts a
  // thread per call (std::async).
  laneguard::ThreadPool pool(8);
  std::future<Verdict> verdict =
      calls.CallAsync(pool, "task-123", [&] { return RunCritic(input); }, {.lane = "critic"});

  // The spec's createBatchWorkerCallWrapper: one slot, many items.
  laneguard::BatchCall batch = calls.Batch("task-123", "file_write", {.timeout_ms = 600000});
  batch.Init();
  for (const auto& item : items) batch.Execute([&] { Write(item); });
  batch.Release(true);  // or let it go out of scope: released as "abandoned"

  // The spec's withRequestScope: one deadline shared by several calls, child spans of the scope's.
  calls.WithRequestScope("task-123",
                         [&](laneguard::RequestScope& scope) {
                           auto a = scope.Call([&] { return Step1(); });
                           auto b = scope.Nested(
                               [&](laneguard::RequestScope& inner) { return inner.Call(Step2); },
                               {.timeout_ms = 5000});  // min(time left, 5 s)
                           return Combine(a, b);
                         },
                         {.lane = "tool_call", .timeout_ms = 600000});
  // README example 3 end
  // README example 4
  laneguard::ProcessRunner runner(calls);  // the WorkerCalls above
  laneguard::ProcessSpec spec{.argv = {"python3", "critic.py", "in.json"}, .max_rss_mb = 512};
  auto result = runner.Run("task-7", spec, {.lane = "critic", .timeout_ms = 600000});
  if (!result.ok()) { /* refused: result.error().message() */
  } else if (!result->success())
    std::cerr << result->Reason() << "\n";  // e.g. "timed out: ..."
  // README example 4 end
  return 0;
}

void MetricsExample(std::unique_ptr<laneguard::ResourceBudgetManager>& manager,
                    std::shared_ptr<laneguard::JsonLogger> logger,
                    std::shared_ptr<laneguard::BatchSpanProcessor> batch_processor,
                    std::string_view accept_header, double waited_seconds) {
  // README example 5
  // Counts every call from now on (an observer on the manager); gauges are read at each scrape.
  auto collector =
      laneguard::PrometheusCollector::Create(
          manager.get(),
          {.logger = logger, .span_counts = laneguard::SpanCountsFrom(batch_processor.get())})
          .value();
  // A /metrics server: off unless started, 127.0.0.1 unless told otherwise, port 0 picks one.
  auto server = laneguard::MetricsServer::Start(collector, {.port = 9464}).value();
  // ... or mount the handler in your own server: Accept header in, content type and body out.
  laneguard::MetricsResponse r = collector->Handle(accept_header);
  // A scheduler that queues calls before admission reports the wait.
  collector->ObserveQueueWait("tool_call", waited_seconds);

  // The spec's alerting rules in-process: firing/resolved, since when, current value; transitions
  // are logged. Evaluate() on demand, or every interval on a thread.
  auto alerts = laneguard::AlertEvaluator::Create(manager.get(), {.logger = logger}).value();
  alerts->Start();
  for (const laneguard::Alert& a : alerts->Firing()) { /* a.name, a.value, a.since_unix_nanos */
  }

  // The spec's "emit metrics to external systems": a flat map every 30 s.
  auto emitter =
      laneguard::MetricEmitter::Create(
          manager.get(), [](const laneguard::FlatMetrics& m) { /* m["worker.calls.total"], ... */ })
          .value();
  emitter->Start();
  // README example 5 end
}

laneguard::Result<bool> OtlpExample(const laneguard::Config& config) {
  // README example 6
  laneguard::Resource resource;
  resource.service_name = "orchestrator";
  laneguard::OtlpEnvResult env = laneguard::ReadOtlpEnvironment(
      laneguard::OtlpSettingsFromConfig(config, resource), laneguard::ProcessEnvironment());
  auto exporter = laneguard::OtlpHttpSpanExporter::Create(
      env.settings.traces);                     // Result<...>: an Error when not ok
  if (!exporter.ok()) return exporter.error();  // an endpoint that is not an http(s) URL
  auto spans =
      std::make_shared<laneguard::BatchSpanProcessor>(std::move(*exporter), env.settings.batch);
  laneguard::Tracer tracer(env.settings.TracerOptionsWith(spans));

  // Logs: the JSON logger hands every record to a sink as well as writing its line.
  auto logs = std::make_shared<laneguard::BatchLogRecordProcessor>(
      laneguard::OtlpHttpLogExporter::Create(env.settings.logs).value(), env.settings.resource,
      env.settings.batch);
  auto logger =
      std::make_shared<laneguard::JsonLogger>(laneguard::JsonLogger::Options{.sink = logs});
  for (const std::string& w : env.warnings) logger->LogWarning(w);  // bad OTEL_* values, fallbacks
  // README example 6 end
  return true;
}

}  // namespace readme
