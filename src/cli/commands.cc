// The `laneguard` command: run, batch, config check, config print (serve: serve_command.cc).
#include "cli/commands.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <system_error>
#include <thread>

#include "cli/batch.h"
#include "cli/job_file.h"
#include "cli/lease_client.h"
#include "cli/runtime.h"
#include "cli/serve_command.h"
#include "laneguard/exporters/otlp.h"
#include "laneguard/exporters/prometheus.h"
#include "laneguard/internal/mutex.h"
#include "laneguard/observe/json_logger.h"
#include "laneguard/process.h"
#include "laneguard/trace/trace.h"
#include "laneguard/worker.h"

namespace laneguard::cli {
namespace {

constexpr int kSomeJobsFailed = 1;
constexpr int kTimedOutStatus = 124;  // as timeout(1)
constexpr char kSignalsHelp[] =
    "Signals: SIGINT, SIGTERM, SIGHUP, SIGQUIT and SIGALRM stop what is running (SIGTERM, then "
    "SIGKILL after 2 s), the summary is still printed, and laneguard exits 128+N (130, 143, 129, "
    "131, 142); SIGUSR1 prints progress now (batch: a progress line, even with --quiet; run: how "
    "long the command has run). A closed output pipe (`| head`) only stops laneguard's printing: "
    "the jobs run to their end.\n";
constexpr int64_t kMaxRssMbFlag = int64_t{1} << 30;  // ProcessSpec::max_rss_mb's bound

// Signals that would kill us become a cancel request instead (SIGINT, SIGTERM, SIGHUP from a
// closed terminal or ssh session, SIGQUIT, SIGALRM), so the children are stopped through the
// escalation, spans are flushed and the summary printed; the exit status is still 128+N. SIGUSR1
// asks for a progress line. The signals are blocked in every thread (set before any thread
// starts, inherited) and taken by one thread with sigtimedwait; children get a clean mask back
// before exec (see ProcessRunner). SIGPIPE is ignored, in Main.
class SignalWatcher {
 public:
  static constexpr int kCancelSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGALRM};

  SignalWatcher() {
    sigemptyset(&set_);
    for (int sig : kCancelSignals) sigaddset(&set_, sig);
    sigaddset(&set_, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
    thread_ = std::thread([this] {
      const timespec tick{0, 100'000'000};
      while (!done_.load()) {
        const int sig = sigtimedwait(&set_, nullptr, &tick);
        if (sig == SIGUSR1) {
          internal::MutexLock lock(mu_);
          if (on_usr1_) on_usr1_();
        } else if (sig > 0 && signal_.exchange(sig) == 0) {
          stop_.request_stop();
        }
      }
    });
  }
  ~SignalWatcher() {
    done_.store(true);
    thread_.join();
    pthread_sigmask(SIG_UNBLOCK, &set_, nullptr);
  }
  std::stop_token token() const { return stop_.get_token(); }
  int signal() const { return signal_.load(); }
  // Called on the watcher's thread at each SIGUSR1 (before this, SIGUSR1 does nothing).
  void OnUsr1(std::function<void()> callback) {
    internal::MutexLock lock(mu_);
    on_usr1_ = std::move(callback);
  }

 private:
  sigset_t set_;
  std::stop_source stop_;
  std::atomic<int> signal_{0};
  std::atomic<bool> done_{false};
  internal::Mutex mu_;
  std::function<void()> on_usr1_ GUARDED_BY(mu_);
  std::thread thread_;
};

// ---- the daemon (--server)
// --------------------------------------------------------------------------

struct ServerFlags {
  std::string url;
  std::string token_file;
  std::string wait;  // "" : the command's default
};

void AddServerFlags(CLI::App* cmd, ServerFlags& flags, const char* wait_default) {
  cmd->add_option("--server", flags.url,
                  "Take the slots from a `laneguard serve` daemon (http://HOST:PORT or "
                  "unix:/PATH) as leases, under its config (instead of --config)");
  cmd->add_option("--token-file", flags.token_file,
                  "With --server: the daemon's bearer token, read from this file");
  cmd->add_option("--wait", flags.wait,
                  std::string("With --server: how long to wait for a lease when the lane is full "
                              "(0 answers at once; ") +
                      wait_default + ")");
}

// A zero ("0", "0s", "0ms": answer at once) or a duration; errors name `flag`.
Result<int64_t> ParseWaitMs(const std::string& text, std::string_view flag) {
  const size_t digits = text.find_first_not_of("0.");
  const std::string_view unit =
      digits == std::string::npos ? "" : std::string_view(text).substr(digits);
  if (!text.empty() && text[0] == '0' &&
      (unit.empty() || unit == "ms" || unit == "s" || unit == "m" || unit == "h"))
    return int64_t{0};
  return ParseDurationMs(text, flag);
}

// What --server needs before anything runs: the address, the token, and the daemon's config
// (which replaces --config: the lanes, timeouts and escalation must be the daemon's). Prints what
// went wrong and sets *status (2 for bad flags, 125 when the daemon cannot be asked).
struct ServerSetup {
  ServerAddress address;
  std::string token;
  Config config;
};
std::optional<ServerSetup> SetUpServer(const char* command, const ServerFlags& flags,
                                       const CommonFlags& common, int* status) {
  *status = kUsageError;
  auto address = ParseServerAddress(flags.url);
  if (!address.ok()) {
    std::fprintf(stderr, "laneguard %s: %s\n", command,
                 EscapeForTerminal(address.error().message()).c_str());
    return std::nullopt;
  }
  if (!common.config_file.empty()) {
    std::fprintf(stderr,
                 "laneguard %s: --config with --server: the daemon's config is used; drop "
                 "--config\n",
                 command);
    return std::nullopt;
  }
  ServerSetup setup{*address, "", Config{}};
  if (!flags.token_file.empty()) {
    auto token = ReadTokenFile(flags.token_file);
    if (!token.ok()) {
      std::fprintf(stderr, "laneguard %s: %s\n", command,
                   EscapeForTerminal(token.error().message()).c_str());
      return std::nullopt;
    }
    setup.token = std::move(token).value();
  }
  *status = kCouldNotRun;
  LeaseClient client(setup.address, setup.token);
  auto text = client.GetConfigJson();
  if (!text.ok()) {
    std::fprintf(stderr, "laneguard %s: %s\n", command,
                 EscapeForTerminal(text.error().message()).c_str());
    return std::nullopt;
  }
  auto config = ParseConfigJson(*text);
  if (!config.ok()) {
    std::fprintf(stderr, "laneguard %s: --server %s: the daemon's config: %s\n", command,
                 EscapeForTerminal(flags.url).c_str(),
                 EscapeForTerminal(config.error().message()).c_str());
    return std::nullopt;
  }
  setup.config = std::move(config).value();
  return setup;
}

// ---- run
// -----------------------------------------------------------------------------------------

struct RunFlags {
  CommonFlags common;
  std::string lane = "tool_call";
  std::string task;
  std::string timeout;
  bool timeout_given = false;  // `--timeout ""` is an error, not the default
  std::optional<double> escalation;
  std::optional<int64_t> max_rss_mb;
  std::vector<std::string> command;
  ServerFlags server;
  std::string priority = "normal";
  std::string ttl = "15s";
  std::string traceparent;
};

std::string TaskOf(const RunFlags& flags) {
  return flags.task.empty() ? "run-" + flags.command[0] : flags.task;
}

// Checks run's flags against the config and applies --escalation to it; prints what is wrong.
bool CheckRunFlags(const RunFlags& flags, Config& config, std::optional<int64_t>* timeout_ms) {
  if (flags.escalation) {
    if (!(*flags.escalation >= 1 && *flags.escalation <= kMaxEscalationFactor)) {
      std::fprintf(stderr, "laneguard run: --escalation: %g must be within [1, %g]\n",
                   *flags.escalation, kMaxEscalationFactor);
      return false;
    }
    config.timeout_escalation_factor = *flags.escalation;
  }
  if (flags.timeout_given) {
    auto parsed = ParseDurationMs(flags.timeout, "--timeout");
    if (!parsed.ok()) {
      std::fprintf(stderr, "laneguard run: %s\n", parsed.error().message().c_str());
      return false;
    }
    *timeout_ms = *parsed;
  }
  // The runner's own bound, checked here so a bad value is a usage error, not "could not start".
  if (flags.max_rss_mb && (*flags.max_rss_mb < 1 || *flags.max_rss_mb > kMaxRssMbFlag)) {
    std::fprintf(stderr, "laneguard run: --max-rss: %lld must be within [1, %lld] MB\n",
                 static_cast<long long>(*flags.max_rss_mb), static_cast<long long>(kMaxRssMbFlag));
    return false;
  }
  if (!config.lane_concurrency_limits.count(flags.lane)) {
    std::string lanes;
    for (const auto& [lane, limit] : config.lane_concurrency_limits)
      lanes += (lanes.empty() ? "" : ", ") + lane;
    std::fprintf(stderr, "laneguard run: --lane: unknown lane '%s' (configured: %s)\n",
                 EscapeForTerminal(flags.lane).c_str(), EscapeForTerminal(lanes).c_str());
    return false;
  }
  return true;
}

// How one run differs under a lease: its span's parent, its environment, its own stop.
struct RunPlan {
  CallOptions call;
  bool traceparent_env = false;
  std::vector<std::pair<std::string, std::string>> env;
  std::stop_token cancel;  // signals.token() when not leased
};

// Runs the command as one worker call: its result, or none when refused (said on stderr).
std::optional<ProcessResult> RunOneCall(const RunFlags& flags, const RunPlan& plan, Runtime& rt,
                                        SignalWatcher& signals) {
  ProcessSpec spec;
  spec.argv = flags.command;
  spec.max_rss_mb = flags.max_rss_mb;
  spec.foreground_terminal = true;  // run from a prompt, the command may read the terminal
  spec.traceparent_env = plan.traceparent_env;
  spec.env = plan.env;
  const std::string task = TaskOf(flags);
  const auto started = std::chrono::steady_clock::now();
  signals.OnUsr1([&task, started] {
    const auto seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started);
    std::fprintf(stderr, "laneguard run: %s: running for %.1f s\n", EscapeForTerminal(task).c_str(),
                 seconds.count());
  });
  auto result = rt.runner->Run(task, spec, plan.call, plan.cancel);
  signals.OnUsr1(nullptr);
  if (!result.ok()) {
    std::fprintf(stderr, "laneguard run: refused: %s\n",
                 EscapeForTerminal(result.error().message()).c_str());
    return std::nullopt;
  }
  return std::move(result).value();
}

// The run's exit status (said on stderr when not 0). `daemon_stop`: the daemon stopped it
// (124 for the lease's time, else 125).
int RunStatus(const RunFlags& flags, const ProcessResult& result, const SignalWatcher& signals,
              std::optional<int> daemon_stop = std::nullopt) {
  int status = result.ShellStatus();
  if (result.outcome == ProcessOutcome::kCancelled) {
    if (signals.signal() != 0)
      status = 128 + signals.signal();
    else if (daemon_stop)
      status = *daemon_stop;
  }
  if (status != 0)
    std::fprintf(stderr, "laneguard run: %s: %s (exit %d)\n",
                 EscapeForTerminal(TaskOf(flags)).c_str(),
                 EscapeForTerminal(result.Reason()).c_str(), status);
  return status;
}

// --server's own flags, checked before anything runs; prints what is wrong.
struct LeaseFlags {
  int64_t wait_ms = 0;
  int64_t ttl_ms = 15000;
  Priority priority = Priority::kNormal;
  std::string traceparent;
};
std::optional<LeaseFlags> CheckLeaseFlags(const RunFlags& flags) {
  LeaseFlags lease;
  const auto fail = [](const std::string& message) {
    std::fprintf(stderr, "laneguard run: %s\n", EscapeForTerminal(message).c_str());
    return std::nullopt;
  };
  if (flags.escalation)
    return fail("--escalation with --server: the daemon's timeoutEscalationFactor applies");
  if (!flags.server.wait.empty()) {
    auto wait = ParseWaitMs(flags.server.wait, "--wait");
    if (!wait.ok()) return fail(wait.error().message());
    lease.wait_ms = *wait;
  }
  auto ttl = ParseDurationMs(flags.ttl, "--ttl");
  if (!ttl.ok()) return fail(ttl.error().message());
  if (*ttl < 100 || *ttl > 600000)
    return fail("--ttl " + flags.ttl + ": must be within [100ms, 10m]");
  lease.ttl_ms = *ttl;
  lease.priority = flags.priority == "low"    ? Priority::kLow
                   : flags.priority == "high" ? Priority::kHigh
                                              : Priority::kNormal;
  if (!flags.traceparent.empty()) {
    if (!ParseTraceparent(flags.traceparent))
      return fail("--traceparent " + flags.traceparent +
                  ": not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)");
    lease.traceparent = flags.traceparent;
  } else if (const std::optional<std::string> env = ProcessEnvironment()("TRACEPARENT");
             env && !env->empty()) {
    if (ParseTraceparent(*env))
      lease.traceparent = *env;
    else
      PrintWarnings({"TRACEPARENT='" + *env + "' is not a W3C traceparent: ignored"});
  }
  return lease;
}

// Under a lease: the daemon decides when the command may start and how long it may run; the local
// runtime runs it exactly as without, with the lease's timeout (so the local two-phase escalation
// matches the daemon's phases) and inside the lease's trace.
int RunLeased(const RunFlags& flags, const ServerSetup& server, const LeaseFlags& lease_flags,
              std::optional<int64_t> timeout_ms, Runtime& rt, SignalWatcher& signals) {
  LeaseClient client(server.address, server.token);
  LeaseRequest request{.lane = flags.lane,
                       .task_id = TaskOf(flags),
                       .timeout_ms = timeout_ms,
                       .wait_ms = lease_flags.wait_ms,
                       .priority = lease_flags.priority,
                       .ttl_ms = lease_flags.ttl_ms,
                       .metadata = {},
                       .traceparent = lease_flags.traceparent};
  auto lease = client.Acquire(request, signals.token());
  if (!lease.ok()) {
    const Error& error = lease.error();
    if (error.code() == ErrorCode::kCancelled) return 128 + signals.signal();
    const bool refused = error.field() == kLeaseRefusalField;
    std::fprintf(stderr, "laneguard run: %s%s\n", refused ? "refused: " : "",
                 EscapeForTerminal(error.message()).c_str());
    return error.code() == ErrorCode::kInvalidArgument ? kUsageError : kCouldNotRun;
  }
  std::stop_source stop;
  const std::stop_callback forward(signals.token(), [&stop] { stop.request_stop(); });
  LeaseRenewer renewer(server.address, server.token, *lease, [&stop](const std::string& reason) {
    std::fprintf(stderr, "laneguard run: stopping the command: %s\n",
                 EscapeForTerminal(reason).c_str());
    stop.request_stop();
  });
  RunPlan plan;
  plan.call.lane = flags.lane;
  plan.call.timeout_ms = lease->timeout_ms > 0 ? std::optional(lease->timeout_ms) : timeout_ms;
  // The lease's span when the daemon traces; otherwise the caller's context, so the run still
  // joins the caller's trace.
  const std::string& parent =
      lease->traceparent.empty() ? lease_flags.traceparent : lease->traceparent;
  plan.call.parent = ParseTraceparent(parent);
  plan.call.metadata = {{"leaseId", lease->id},
                        {"fencingToken", std::to_string(lease->fencing_token)}};
  // The local span's context when tracing is on (ProcessRunner sets it); the lease's otherwise.
  plan.traceparent_env = true;
  if (!parent.empty()) plan.env.emplace_back("TRACEPARENT", parent);
  plan.cancel = stop.get_token();
  const std::optional<ProcessResult> result = RunOneCall(flags, plan, rt, signals);
  renewer.Stop();
  ReleaseOutcome outcome;
  if (result) {
    outcome.success = result->success();
    outcome.error_type = std::string(result->ErrorType());
    if (result->peak_rss_bytes > 0)
      outcome.rss_mb = static_cast<double>(result->peak_rss_bytes) / (1 << 20);
  } else {
    outcome = {.success = false, .error_type = "refused", .rss_mb = std::nullopt};
  }
  if (!renewer.gone()) {
    auto released = client.Release(lease->id, outcome);
    if (!released.ok())
      std::fprintf(stderr, "laneguard run: warning: the lease was not released: %s\n",
                   EscapeForTerminal(released.error().message()).c_str());
  }
  if (!result) return kCouldNotRun;
  std::optional<int> daemon_stop;
  if (!renewer.stop_reason().empty())
    daemon_stop = renewer.stopped_for_time() ? kTimedOutStatus : kCouldNotRun;
  return RunStatus(flags, *result, signals, daemon_stop);
}

int RunOnServer(const RunFlags& flags) {
  const std::optional<LeaseFlags> lease_flags = CheckLeaseFlags(flags);
  if (!lease_flags) return kUsageError;
  int status = 0;
  std::optional<ServerSetup> server = SetUpServer("run", flags.server, flags.common, &status);
  if (!server) return status;
  std::optional<int64_t> timeout_ms;
  if (!CheckRunFlags(flags, server->config, &timeout_ms)) return kUsageError;
  SignalWatcher signals;
  auto rt = MakeRuntime(flags.common, server->config);
  if (!rt.ok()) {
    std::fprintf(stderr, "laneguard run: %s\n", rt.error().message().c_str());
    return kUsageError;
  }
  status = RunLeased(flags, *server, *lease_flags, timeout_ms, **rt, signals);
  (*rt)->Finish();
  if (flags.common.strict_telemetry && (*rt)->telemetry_lost > 0 && status == 0)
    status = kTelemetryLost;
  return status;
}

int RunCommand(const RunFlags& flags) {
  if (!flags.server.url.empty()) return RunOnServer(flags);
  auto config = LoadConfig(flags.common.config_file);
  if (!config.ok()) {
    std::fprintf(stderr, "laneguard run: %s\n",
                 EscapeForTerminal(config.error().message()).c_str());
    return kUsageError;
  }
  std::optional<int64_t> timeout_ms;
  if (!CheckRunFlags(flags, *config, &timeout_ms)) return kUsageError;
  SignalWatcher signals;
  auto rt = MakeRuntime(flags.common, *config);
  if (!rt.ok()) {
    std::fprintf(stderr, "laneguard run: %s\n", rt.error().message().c_str());
    return kUsageError;
  }
  RunPlan plan;
  plan.call.lane = flags.lane;
  plan.call.timeout_ms = timeout_ms;
  plan.cancel = signals.token();
  const std::optional<ProcessResult> ran = RunOneCall(flags, plan, **rt, signals);
  if (!ran) return kCouldNotRun;
  int status = RunStatus(flags, *ran, signals);
  // A metrics file that could not be written at the end is reported by Finish (it was checked
  // before the run); the command's own status stands (--strict-telemetry: 122 instead of 0).
  (*rt)->Finish();
  if (flags.common.strict_telemetry && (*rt)->telemetry_lost > 0 && status == 0)
    status = kTelemetryLost;
  return status;
}

// ---- batch
// ---------------------------------------------------------------------------------------

struct BatchFlags {
  CommonFlags common;
  std::string jobs_file;
  std::string summary = "table";
  bool fail_fast = false;
  bool quiet = false;
  std::string output_dir;
  int stdout_lines = 0;
  ServerFlags server;
  std::string ttl = "15s";
};

// Creates the directory if need be; "" when jobs can write their output files there, else why not.
std::string PrepareOutputDir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return ec.message();
  if (!std::filesystem::is_directory(dir, ec)) return "not a directory";
  if (access(dir.c_str(), W_OK | X_OK) != 0) return std::generic_category().message(errno);
  return "";
}

// batch --server's lease options, with the daemon's config in *config; prints what is wrong.
std::optional<BatchOptions::Leases> SetUpBatchLeases(const BatchFlags& flags, Config* config,
                                                     int* status) {
  *status = kUsageError;
  BatchOptions::Leases leases;
  if (!flags.server.wait.empty()) {
    auto wait = ParseWaitMs(flags.server.wait, "--wait");
    if (!wait.ok()) {
      std::fprintf(stderr, "laneguard batch: %s\n", wait.error().message().c_str());
      return std::nullopt;
    }
    leases.wait_ms = *wait;
  }
  auto ttl = ParseDurationMs(flags.ttl, "--ttl");
  if (!ttl.ok() || *ttl < 100 || *ttl > 600000) {
    std::fprintf(stderr, "laneguard batch: --ttl %s: must be within [100ms, 10m]\n",
                 EscapeForTerminal(flags.ttl).c_str());
    return std::nullopt;
  }
  leases.ttl_ms = *ttl;
  std::optional<ServerSetup> server = SetUpServer("batch", flags.server, flags.common, status);
  if (!server) return std::nullopt;
  leases.address = server->address;
  leases.token = server->token;
  *config = server->config;
  return leases;
}

int BatchCommand(const BatchFlags& flags) {
  std::optional<BatchOptions::Leases> leases;
  Result<Config> config = Config{};
  if (!flags.server.url.empty()) {
    int status = 0;
    leases = SetUpBatchLeases(flags, &*config, &status);
    if (!leases) return status;
  } else {
    config = LoadConfig(flags.common.config_file);
  }
  if (!config.ok()) {
    std::fprintf(stderr, "laneguard batch: %s\n",
                 EscapeForTerminal(config.error().message()).c_str());
    return kUsageError;
  }
  std::vector<std::string> warnings;
  auto jobs = LoadJobFile(flags.jobs_file, *config, &warnings);
  const std::string file = flags.jobs_file == "-" ? "<stdin>" : flags.jobs_file;
  for (std::string& warning : warnings) warning = file + ": " + warning;
  PrintWarnings(warnings);
  if (!jobs.ok()) {
    // An error of the whole file (no line: an unreadable file) names the file itself.
    const bool names_file = jobs.error().size() == 1 && jobs.error()[0].field().empty() &&
                            jobs.error()[0].message().starts_with(file + ": ");
    const std::string prefix = "laneguard batch: " + (names_file ? "" : file + ": ");
    PrintEscapedLines(FormatJobErrors(jobs.error(), prefix), stderr);
    std::fprintf(stderr, "laneguard batch: nothing was run\n");
    return kUsageError;
  }
  if (!flags.output_dir.empty()) {
    const std::string error = PrepareOutputDir(flags.output_dir);
    if (!error.empty()) {
      std::fprintf(stderr, "laneguard batch: --output %s: %s\n", flags.output_dir.c_str(),
                   error.c_str());
      return kUsageError;
    }
  }
  SignalWatcher signals;
  auto rt = MakeRuntime(flags.common, *config);
  if (!rt.ok()) {
    std::fprintf(stderr, "laneguard batch: %s\n", rt.error().message().c_str());
    return kUsageError;
  }
  BatchOptions options;
  options.fail_fast = flags.fail_fast;
  options.progress = flags.quiet                  ? BatchOptions::Progress::kNone
                     : isatty(STDERR_FILENO) != 0 ? BatchOptions::Progress::kBar
                                                  : BatchOptions::Progress::kLines;
  if (options.progress == BatchOptions::Progress::kBar)
    options.progress_interval = std::chrono::milliseconds(200);
  if (PrometheusCollector* metrics = (*rt)->metrics.get())
    options.on_queue_wait = [metrics](const Job& job, double seconds) {
      metrics->ObserveQueueWait(job.lane, seconds);
    };
  options.output_dir = flags.output_dir;
  options.stdout_lines = flags.stdout_lines;
  options.leases = std::move(leases);
  BatchRunner runner(*(*rt)->runner, options);
  signals.OnUsr1([&runner] { runner.RequestProgress(); });
  BatchReport report = runner.Run(*jobs, signals.token());
  signals.OnUsr1(nullptr);
  // As in run: a lost metrics file is reported, and the jobs' status stands.
  (*rt)->Finish();
  if (flags.summary == "json")
    std::printf("%s\n", SummaryJson(report, *config).c_str());
  else
    PrintSummaryTable(report, *config, stdout);
  if (signals.signal() != 0) return 128 + signals.signal();
  if (report.failed() > 0) return kSomeJobsFailed;
  return flags.common.strict_telemetry && (*rt)->telemetry_lost > 0 ? kTelemetryLost : 0;
}

// CLI11 answers a misspelled command with "A subcommand is required": name it and the choices.
std::string UnknownCommand(const CLI::App& app, int argc, char** argv) {
  const CLI::App* current = &app;
  std::string path = "laneguard";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.empty() || arg[0] == '-') return "";
    const auto subs = current->get_subcommands([](const CLI::App*) { return true; });
    if (subs.empty()) return "";
    const CLI::App* next = nullptr;
    std::string names;
    for (const CLI::App* sub : subs) {
      if (sub->get_name() == arg) next = sub;
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (next == nullptr)
      return path + ": unknown command '" + EscapeForTerminal(arg) + "' (commands: " + names + ")";
    path += " " + arg;
    current = next;
  }
  return "";
}

// `laneguard run ls -d /tmp`: CLI11 takes -d for one of ours. When the command's words came
// without --, say where to put it, with the user's own words.
void PrintRunHint(CLI::App& run, int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) != "run") return;
  std::string options, command;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") return;  // the command is where it belongs; the error is elsewhere
    if (!command.empty() || arg.empty() || arg[0] != '-') {
      command += (command.empty() ? "" : " ") + arg;
      continue;
    }
    options += " " + arg;
    const CLI::Option* opt = run.get_option_no_throw(arg.substr(0, arg.find('=')));
    if (opt != nullptr && opt->get_type_size_min() > 0 && arg.find('=') == std::string::npos &&
        i + 1 < argc)
      options += " " + std::string(argv[++i]);
  }
  if (command.empty()) return;
  std::fprintf(stderr, "laneguard run: put the command after --: laneguard run%s -- %s\n",
               EscapeForTerminal(options).c_str(), EscapeForTerminal(command).c_str());
}

CLI::App* AddRunCommand(CLI::App& app, RunFlags& flags) {
  CLI::App* run = app.add_subcommand("run", "Run one command under a lane's budget");
  run->add_option("--lane", flags.lane, "Lane (default tool_call)");
  run->add_option("--task", flags.task, "Task id for logs and spans (default run-<cmd>)");
  run->add_option("--timeout", flags.timeout,
                  "SIGTERM after this (500ms, 30s, 1m30s, 2h; a bare number is seconds; "
                  "default: the config's defaultTimeoutMs)");
  run->add_option("--escalation", flags.escalation,
                  "SIGKILL to the whole tree at timeout x this (default: the config's, 1.5)");
  run->add_option("--max-rss", flags.max_rss_mb,
                  "Memory limit of the whole tree, in MB (1 to 1073741824)");
  AddCommonFlags(run, flags.common);
  AddServerFlags(run, flags.server, "default 0");
  run->add_option("--priority", flags.priority,
                  "With --server: the lease's queue class: low, normal (default) or high")
      ->check(CLI::IsMember({"low", "normal", "high"}));
  run->add_option("--ttl", flags.ttl,
                  "With --server: the lease's TTL (default 15s; renewed every third of it)");
  run->add_option("--traceparent", flags.traceparent,
                  "With --server: a W3C traceparent for the lease to join (default: the "
                  "TRACEPARENT variable)");
  run->add_option("command", flags.command, "The command and its arguments, after --")->required();
  run->footer(
      "Exit status: the command's; 124 when stopped for time; 137 when killed for memory; 128+N "
      "when killed by signal N; 128+N when laneguard got signal N (see Signals); 125 when refused; "
      "127 "
      "when the command could not start; 2 for bad flags; 122 with --strict-telemetry when the "
      "command succeeded but spans, log lines or metrics were lost.\n"
      "With --server URL the slot is a lease from `laneguard serve` (its config is used): refused "
      "(lane full with --wait 0, ...) or an unreachable daemon is 125; the command is stopped "
      "when a renewal says stopRequested (124 at the lease's timeout, 125 when the daemon drains), "
      "when the lease is lost, or when renewals fail for half the TTL (125); the reason is said "
      "on stderr. The run's span joins the lease's trace; the command gets TRACEPARENT.\n" +
      std::string(kSignalsHelp) +
      "Examples:\n"
      "  laneguard run --timeout 30s -- ./tool --input data.csv\n"
      "  laneguard run --server http://127.0.0.1:7878 --lane forecast_model --wait 5m -- "
      "./forecast\n"
      "  laneguard run --lane forecast_model --timeout 5m --escalation 2 --max-rss 2048 "
      "--spans spans.jsonl -- ./forecast");

  return run;
}

CLI::App* AddBatchCommand(CLI::App& app, BatchFlags& flags) {
  CLI::App* batch = app.add_subcommand("batch", "Run a JSON-lines file of jobs under the limits");
  batch
      ->add_option("jobs", flags.jobs_file,
                   "Job file: one JSON object per line (- reads standard input)")
      ->required();
  batch->add_option("--summary", flags.summary, "table (default) or json")
      ->check(CLI::IsMember({"table", "json"}));
  batch->add_flag("--fail-fast", flags.fail_fast,
                  "Stop everything at the first failure (running jobs are cancelled)");
  batch->add_flag("--quiet", flags.quiet, "No progress output");
  batch->add_option("--output", flags.output_dir,
                    "Save each job's stdout and stderr as DIR/<id>.stdout and .stderr (the "
                    "directory is created if need be)");
  batch
      ->add_option("--stdout-lines", flags.stdout_lines,
                   "Keep each job's last N lines of stdout in the JSON summary (stdoutLines)")
      ->check(CLI::Range(0, kMaxStdoutLines));
  AddCommonFlags(batch, flags.common);
  AddServerFlags(batch, flags.server, "default: until granted");
  batch->add_option("--ttl", flags.ttl,
                    "With --server: each lease's TTL (default 15s; renewed every third of it)");
  batch->footer(
      "Job line: {\"id\": \"a\", \"lane\": \"file_read\", \"cmd\": [\"cat\", \"x\"] or \"sh "
      "command\", \"timeoutMs\": 30000, \"maxRssMb\": 256, \"metadata\": {}, \"env\": {}, "
      "\"cwd\": \"/tmp\", \"priority\": \"high\" | \"normal\" | \"low\"}\n"
      "Jobs wait for a place in their lane's queue and start by priority, then in file order.\n"
      "The whole file is checked before anything runs. Exit status: 0 when every job succeeded, "
      "1 when some failed, 2 for a bad file or flags, 128+N on signal N (see Signals), 122 with "
      "--strict-telemetry when every job succeeded but spans, log lines or metrics were lost.\n"
      "Output: by default a job's stdout is discarded and its stderr kept only for the last line "
      "shown with a failure; --stdout-lines N puts its last N lines of stdout in the JSON summary; "
      "with --output DIR every job that ran gets DIR/<id>.stdout and "
      "DIR/<id>.stderr (up to 8 MB each, the rest dropped and counted as outputDroppedBytes; an "
      "id that is not a plain file name is sanitized, and the JSON summary names each job's "
      "files). Cancelled jobs (a signal, or --fail-fast) are counted apart from failed ones.\n" +
      std::string(kSignalsHelp) +
      "Examples:\n"
      "  laneguard batch examples/upgrade-jobs.jsonl --spans spans.jsonl\n"
      "  laneguard batch jobs.jsonl --otlp http://127.0.0.1:4318 --metrics-listen 127.0.0.1:9464\n"
      "  laneguard batch jobs.jsonl --summary json --fail-fast > summary.json");

  return batch;
}

int ConfigCheckCommand(const std::string& file) {
  std::vector<std::string> warnings;
  auto config = LoadConfigFile(file, Config{}, &warnings);
  if (!config.ok()) {  // the message starts with the file name
    std::fprintf(stderr, "laneguard config check: %s\n",
                 EscapeForTerminal(config.error().message()).c_str());
    return 1;
  }
  PrintWarnings(warnings);
  std::printf("%s: ok (%zu lanes, global limit %d)\n", file.c_str(),
              config->lane_concurrency_limits.size(), config->global_concurrency_limit);
  return 0;
}

int ConfigPrintCommand(const std::string& file) {
  auto config = LoadConfig(file, "");
  if (!config.ok()) {
    std::fprintf(stderr, "laneguard config print: %s\n",
                 EscapeForTerminal(config.error().message()).c_str());
    return 1;
  }
  std::printf("%s\n", ConfigToJson(*config).c_str());
  return 0;
}

}  // namespace

int Main(int argc, char** argv) {
  // An inherited "ignore SIGCHLD" would let the kernel reap our children: no exit statuses.
  std::signal(SIGCHLD, SIG_DFL);
  // A closed pipe on our own output (`laneguard batch jobs.jsonl 2>&1 | head -1`) must not kill us
  // and orphan the jobs: writes fail with EPIPE instead, and we stop printing. Programs we start
  // get SIGPIPE back at its default (ProcessRunner resets it before exec).
  std::signal(SIGPIPE, SIG_IGN);
  // Likewise a file-size limit (`ulimit -f`) reached by a spans or log file: the write fails with
  // EFBIG and the lines are counted as lost, rather than SIGXFSZ killing us mid-batch.
  std::signal(SIGXFSZ, SIG_IGN);
  // A batch holds a few descriptors per running job: up to the hard limit (jobs get the original
  // soft limit back). A laneguard killed with SIGKILL left its jobs running in its cgroups: they
  // are stopped now, and the user told.
  RaiseOpenFileLimit();
  if (const LeftoverCleanup cleaned = CleanUpLeftoverCgroups(); !cleaned.empty())
    std::fprintf(stderr, "laneguard: %s\n", cleaned.Describe().c_str());
  CLI::App app{
      "laneguard: run programs as budgeted worker calls (lanes, timeouts that really stop "
      "runaway work, memory limits, spans)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("laneguard ") + LANEGUARD_VERSION);
  app.footer(
      "Examples:\n"
      "  laneguard run --lane critic --timeout 10m --max-rss 512 -- python3 critic.py in.json\n"
      "  laneguard batch jobs.jsonl --config prod.json --spans spans.jsonl\n"
      "  laneguard config check prod.json");

  RunFlags run_flags;
  CLI::App* run = AddRunCommand(app, run_flags);
  BatchFlags batch_flags;
  CLI::App* batch = AddBatchCommand(app, batch_flags);
  ServeFlags serve_flags;
  CLI::App* serve = AddServeCommand(app, serve_flags);
  CLI::App* config_cmd = app.add_subcommand("config", "Check or print a config");
  config_cmd->require_subcommand(1);
  std::string check_file, print_file;
  CLI::App* check = config_cmd->add_subcommand("check", "Validate a config file");
  check->add_option("file", check_file, "Config file")->required();
  check->footer("Example: laneguard config check examples/config/production.json");
  CLI::App* print = config_cmd->add_subcommand(
      "print", "Print the effective config (defaults filled in) as JSON");
  print->add_option("file", print_file, "Config file (defaults only when omitted)");
  print->footer("Example: laneguard config print examples/config/staging.json");

  if (const std::string unknown = UnknownCommand(app, argc, argv); !unknown.empty()) {
    std::fprintf(stderr, "%s\nRun with --help for more information.\n", unknown.c_str());
    return kUsageError;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    if (code != 0) PrintRunHint(*run, argc, argv);
    return code == 0 ? 0 : kUsageError;
  }
  run_flags.timeout_given = run->count("--timeout") > 0;
  if (run->parsed()) return RunCommand(run_flags);
  if (batch->parsed()) return BatchCommand(batch_flags);
  if (serve->parsed()) return ServeCommand(std::move(serve_flags));
  if (check->parsed()) return ConfigCheckCommand(check_file);
  if (print->parsed()) return ConfigPrintCommand(print_file);
  return kUsageError;
}

}  // namespace laneguard::cli
