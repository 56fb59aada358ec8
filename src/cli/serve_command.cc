#include "cli/serve_command.h"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <utility>

#include "cli/batch.h"
#include "cli/job_file.h"
#include "cli/lease_client.h"
#include "server/http_server.h"
#include "server/lease_service.h"

namespace laneguard::cli {
namespace {

using server::HttpServer;
using server::HttpServerOptions;
using server::LeaseService;
using server::LeaseServiceOptions;

// Room for raising the global limit live (a reload): the admission word keeps the spec's five
// lanes packed up to 1,023.
constexpr int kServeMaxGlobalLimit = 1023;

// True for a Unix socket or a loopback address (127.0.0.0/8, ::1, localhost).
bool IsLoopbackListen(const std::string& listen) {
  if (listen.starts_with("unix:")) return true;
  const std::string host = listen.substr(0, listen.rfind(':'));
  return host == "localhost" || host.starts_with("127.") || host == "[::1]";
}

// SIGHUP re-reads --config and applies it live; what cannot change is refused and said.
void ReloadConfig(const ServeFlags& flags, Runtime& rt) {
  auto config = LoadConfig(flags.common.config_file);
  if (config.ok()) {
    auto applied = rt.manager->UpdateConfig(std::move(config).value());
    if (applied.ok()) {
      std::fprintf(stderr, "laneguard serve: config reloaded from %s\n",
                   EscapeForTerminal(flags.common.config_file).c_str());
      if (rt.logger) rt.logger->LogInfo("config_reloaded", {{"file", flags.common.config_file}});
      return;
    }
    config = applied.error();
  }
  std::fprintf(stderr, "laneguard serve: reload refused, the config in effect is unchanged: %s\n",
               EscapeForTerminal(config.error().message()).c_str());
  if (rt.logger) rt.logger->LogError("config_reload_failed", {{"error", config.error().message()}});
}

// Waits for SIGINT, SIGTERM or SIGQUIT (returned), reloading at each SIGHUP.
int WaitForStopSignal(const sigset_t& signals, const ServeFlags& flags, Runtime& rt) {
  for (;;) {
    const int sig = sigwaitinfo(&signals, nullptr);
    if (sig == SIGHUP) {
      ReloadConfig(flags, rt);
    } else if (sig > 0) {
      return sig;
    }
  }
}

// Drains: new leases and parked waiters are refused, held leases are served until released or
// `timeout` passes (a second signal ends it at once); then every lease still held is released.
void Drain(LeaseService& service, ResourceBudgetManager& manager, const sigset_t& signals,
           std::chrono::milliseconds timeout) {
  service.BeginDrain();
  manager.Shutdown();  // refuses the parked waiters with shutting_down
  const size_t held = service.lease_count();
  if (held > 0) {
    std::fprintf(stderr, "laneguard serve: draining: %zu leases held, waiting up to %lld ms\n",
                 held, static_cast<long long>(timeout.count()));
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const timespec poll{0, 0};
  while (!service.WaitUntilIdle(std::chrono::milliseconds(100))) {
    if (std::chrono::steady_clock::now() >= deadline) break;
    const int sig = sigtimedwait(&signals, nullptr, &poll);
    if (sig > 0 && sig != SIGHUP) break;
  }
  if (const size_t left = service.lease_count(); left > 0) {
    std::fprintf(stderr, "laneguard serve: releasing %zu leases still held\n", left);
  }
  service.ReleaseAll();
}

std::optional<Error> CheckServeFlags(const ServeFlags& flags, std::string* token,
                                     std::chrono::milliseconds* drain) {
  for (const std::string& listen : flags.listen) {
    if (!IsLoopbackListen(listen) && flags.token_file.empty()) {
      return Error(ErrorCode::kInvalidArgument, "--listen", listen,
                   "--listen " + listen +
                       ": not a loopback address; serving beyond this host requires --token-file");
    }
  }
  if (!flags.token_file.empty()) {
    auto read = ReadTokenFile(flags.token_file);
    if (!read.ok()) return read.error();
    *token = std::move(read).value();
  }
  auto drain_ms = ParseDurationMs(flags.drain_timeout, "--drain-timeout");
  if (!drain_ms.ok()) return drain_ms.error();
  *drain = std::chrono::milliseconds(*drain_ms);
  return std::nullopt;
}

// The lease service's collector: the manager's families plus the leases'.
Result<std::shared_ptr<PrometheusCollector>> ServeCollector(
    Runtime& rt, const std::shared_ptr<std::weak_ptr<LeaseService>>& service) {
  PrometheusOptions prom;
  prom.logger = rt.logger;
  const BatchSpanProcessor* counted = rt.otlp_spans ? rt.otlp_spans.get() : rt.file_spans.get();
  if (counted != nullptr) prom.span_counts = SpanCountsFrom(counted);
  prom.extra_families = [service]() -> std::vector<ExtraFamily> {
    if (const std::shared_ptr<LeaseService> s = service->lock()) return s->ExtraFamilies();
    return {};
  };
  return PrometheusCollector::Create(rt.manager.get(), std::move(prom));
}

void PrintEndpoints(const HttpServer& server) {
  for (const std::string& endpoint : server.endpoints()) {
    std::fprintf(stderr, "laneguard serve: listening on %s%s\n",
                 endpoint.starts_with("unix:") ? "" : "http://", endpoint.c_str());
  }
  std::fprintf(stderr, "laneguard serve: ready\n");
}

}  // namespace

int ServeCommand(ServeFlags flags) {
  if (flags.listen.empty()) flags.listen.emplace_back("127.0.0.1:7878");
  auto config = LoadConfig(flags.common.config_file);
  std::string token;
  std::chrono::milliseconds drain{0};
  std::optional<Error> bad = config.ok() ? CheckServeFlags(flags, &token, &drain) : config.error();
  if (bad) {
    std::fprintf(stderr, "laneguard serve: %s\n", EscapeForTerminal(bad->message()).c_str());
    return kUsageError;
  }
  // Taken by this thread only: blocked before any thread starts, so every thread inherits it.
  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGINT, SIGTERM, SIGQUIT, SIGHUP}) sigaddset(&signals, sig);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  auto rt = MakeRuntime(flags.common, *config,
                        std::max(kServeMaxGlobalLimit, config->global_concurrency_limit));
  if (!rt.ok()) {
    std::fprintf(stderr, "laneguard serve: %s\n", rt.error().message().c_str());
    return kUsageError;
  }
  Runtime& runtime = **rt;
  auto service_ref = std::make_shared<std::weak_ptr<LeaseService>>();
  auto collector = ServeCollector(runtime, service_ref);
  if (!collector.ok()) {
    std::fprintf(stderr, "laneguard serve: %s\n", collector.error().message().c_str());
    return kUsageError;
  }
  LeaseServiceOptions options;
  options.tracer = runtime.tracer->enabled() ? runtime.tracer.get() : nullptr;
  options.logger = runtime.logger;
  options.metrics = *collector;
  ResourceBudgetManager& manager = *runtime.manager;
  options.update_config = [&manager](Config c) { return manager.UpdateConfig(std::move(c)); };
  auto service = std::make_shared<LeaseService>(manager, std::move(options));
  *service_ref = service;
  HttpServerOptions http;
  http.listen = flags.listen;
  http.bearer_token = token;
  auto server = HttpServer::Start(*service, std::move(http));
  if (!server.ok()) {
    std::fprintf(stderr, "laneguard serve: %s\n", server.error().message().c_str());
    return 1;
  }
  PrintEndpoints(**server);
  const int sig = WaitForStopSignal(signals, flags, runtime);
  std::fprintf(stderr, "laneguard serve: %s: shutting down\n",
               sig == SIGINT    ? "SIGINT"
               : sig == SIGTERM ? "SIGTERM"
                                : "SIGQUIT");
  Drain(*service, manager, signals, drain);
  // The release that ended the drain has freed its lease, but its answer may not be written yet:
  // Stop would drop it, and the client would not know its release was taken.
  (*server)->StopAccepting();
  (*server)->WaitUntilAnswered(std::chrono::seconds(1));
  (*server)->Stop();
  service.reset();
  runtime.Finish();
  return 0;
}

CLI::App* AddServeCommand(CLI::App& app, ServeFlags& flags) {
  CLI::App* serve = app.add_subcommand(
      "serve", "Serve one budget to every process over HTTP: slots as leases (docs/serve.md)");
  AddCommonFlags(serve, flags.common);
  serve
      ->add_option("--listen", flags.listen,
                   "Where to listen: HOST:PORT (default 127.0.0.1:7878; port 0 picks a free "
                   "one) or unix:PATH; repeatable")
      ->take_all();
  serve->add_option("--token-file", flags.token_file,
                    "Require 'Authorization: Bearer <token>' (the file's content); needed to "
                    "listen beyond loopback");
  serve->add_option("--drain-timeout", flags.drain_timeout,
                    "On SIGTERM or SIGINT, serve renew and release of held leases for at most "
                    "this long (default 30s)");
  serve->footer(
      "Signals: SIGTERM, SIGINT or SIGQUIT drain and stop (a second one stops at once); SIGHUP "
      "re-reads --config (limits change live, held leases are kept).\n"
      "Example: laneguard serve --config prod.json --listen 127.0.0.1:7878 --listen "
      "unix:/run/laneguard.sock");
  return serve;
}

}  // namespace laneguard::cli
