// Subprocess worker calls: run another program under a lane's budget, and really stop it.
//
//   laneguard::ProcessRunner runner(calls);   // a WorkerCalls: manager, tracer, logger
//   laneguard::ProcessSpec spec;
//   spec.argv = {"python3", "critic.py", "--input", path};
//   spec.max_rss_mb = 512;
//   auto result = runner.Run("task-7", spec, {.lane = "critic", .timeout_ms = 600000});
//   if (!result.ok()) { /* refused: result.error().message() */ }
//   else if (result->outcome != laneguard::ProcessOutcome::kExited) { ... result->Reason() ... }
//
// Each run takes a slot in its lane and a span "worker_call:<lane>" (as WorkerCalls::Call does),
// starts the program in a new process group (and, where the machine allows, in a cgroup of its
// own), and settles the slot with the outcome (errorType "exit_code", "signal", "timeout",
// "memory_limit", "spawn_failed" or "cancelled").
//
// Stopping. At the call's timeout (the manager's warning phase) the process group gets SIGTERM; at
// timeout x timeoutEscalationFactor (the hard deadline) the whole tree gets SIGKILL: through the
// call's cgroup when there is one (cgroup.kill in v2, else every pid listed in the v1 cgroup), so a
// grandchild that called setsid() dies too; otherwise the process group. When the program exits,
// whatever it left behind in its cgroup or process group is killed as well: no orphans. Signals
// cannot hit a recycled pid: the direct child is signalled through its pidfd, and its process
// group while the child is not yet reaped (a group's id cannot be reused while its leader's pid
// is held). Children get PR_SET_PDEATHSIG(SIGKILL), so they die if the thread that started them
// dies (see ProcessRunner's thread-safety note).
//
// Memory. With max_rss_mb set, the limit is enforced by the kernel in a per-call memory cgroup
// (cgroup v2 memory.max, or the v1 memory hierarchy's memory.limit_in_bytes); an OOM kill there is
// reported as kMemoryKilled. Without a usable memory cgroup, the tree's RSS (the process group's,
// read from /proc) is sampled every memory_sample_interval and the tree is killed when it goes
// over. DetectIsolation() says which mechanism is in use; each run logs it and puts it on its span
// (laneguard.memory_mechanism, laneguard.kill_mechanism).
#ifndef LANEGUARD_PROCESS_H_
#define LANEGUARD_PROCESS_H_

#include <chrono>
#include <cstdint>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "laneguard/manager.h"
#include "laneguard/result.h"
#include "laneguard/worker.h"

namespace laneguard {

struct ProcessSpec {
  // argv[0] is looked up in PATH (as execvp does) unless it contains a '/'. The PATH is the
  // command's own: env's PATH when set there, glibc's default path when clear_env leaves none.
  // Must not be empty.
  std::vector<std::string> argv;
  // When true, argv must hold exactly one string, run as `/bin/sh -c <string>`. Off by default:
  // arguments reach the program exactly as given, with no shell interpretation.
  bool use_shell = false;
  // Variables set (or overridden) on top of the inherited environment, or of an empty one when
  // clear_env is true.
  std::vector<std::pair<std::string, std::string>> env;
  bool clear_env = false;
  std::string cwd;  // "" keeps the caller's
  // Per-call memory limit of the whole tree, in MB (unset: none); within [1, 2^30].
  std::optional<int64_t> max_rss_mb;
  // true: stdin is /dev/null. Runs that share a terminal (a batch) should not read from it: the
  // program runs in its own process group, where reading the terminal stops it (SIGTTIN).
  bool stdin_null = false;
  // For a command run from a shell prompt (laneguard run): when stdin is a terminal whose
  // foreground process group is this process's, the command's process group becomes the
  // terminal's foreground group while it runs, as a shell does for a job, so the command can read
  // the terminal (instead of being stopped by SIGTTIN) and Ctrl-C reaches it directly. The
  // terminal is handed back when the command ends. Ignored otherwise, and with stdin_null.
  // Ctrl-Z stops the command, not laneguard; its timeout keeps running meanwhile.
  bool foreground_terminal = false;
  // false: stdout and stderr pass through to ours. true: captured into the result (each capped at
  // max_capture_bytes; the rest is read and dropped, counted in the result).
  bool capture_output = false;
  size_t max_capture_bytes = 16 << 20;
};

enum class ProcessOutcome {
  kExited,        // exited on its own; exit_code says how
  kSignaled,      // killed by a signal nobody here sent (term_signal)
  kTimedOut,      // stopped for time: SIGTERM at the timeout, SIGKILL at the hard deadline
  kMemoryKilled,  // went over max_rss_mb: OOM-killed in its cgroup, or killed by the sampler
  kCancelled,     // the caller's stop_token asked for it (Ctrl-C, SIGTERM to us)
  kSpawnFailed,   // could not be started, or its exit status was lost (error says why)
};
std::string_view ToString(ProcessOutcome outcome);  // "exited", "signaled", ...

enum class TimeoutPhase { kNone, kWarning, kEscalation };
std::string_view ToString(TimeoutPhase phase);  // "none", "warning", "escalation"

enum class MemoryMechanism { kNone, kCgroupV2, kCgroupV1, kRssSampling };
std::string_view ToString(MemoryMechanism m);  // "none", "cgroup_v2", "cgroup_v1", "rss_sampling"
// How the whole tree is killed: the process group (a setsid()ed descendant escapes), v2's
// cgroup.kill (one atomic step), or SIGKILL to each pid the call's cgroup lists (v1, or v2 before
// Linux 5.14), repeated until the list is empty.
enum class KillMechanism { kProcessGroup, kCgroupKill, kCgroupProcs };
std::string_view ToString(KillMechanism m);  // "process_group", "cgroup_kill", "cgroup_procs"

struct ProcessResult {
  ProcessOutcome outcome = ProcessOutcome::kSpawnFailed;
  int exit_code = -1;                                // when the program exited (any outcome)
  int term_signal = 0;                               // when it was killed by a signal
  TimeoutPhase timeout_phase = TimeoutPhase::kNone;  // the last phase reached before it ended
  bool oom_killed = false;     // the kernel OOM-killed something in the call's cgroup
  double duration_ms = 0;      // from start to exit of the direct child
  int64_t peak_rss_bytes = 0;  // of the tree, as well as the mechanism can tell
  int64_t pid = 0;
  MemoryMechanism memory_mechanism = MemoryMechanism::kNone;
  KillMechanism kill_mechanism = KillMechanism::kProcessGroup;
  std::string call_id;
  std::string error;                     // kSpawnFailed: why
  std::string stdout_data, stderr_data;  // with capture_output
  uint64_t dropped_output_bytes = 0;     // past max_capture_bytes

  bool success() const { return outcome == ProcessOutcome::kExited && exit_code == 0; }
  // As a shell reports it: the exit code; 124 when stopped for time (as timeout(1)); 137 when
  // killed for memory; 128 + signal when killed by a signal; 130 when cancelled; 127 when it could
  // not be started.
  int ShellStatus() const;
  // One line for a human, e.g. "timed out: SIGKILL at the hard deadline (1500 ms)".
  std::string Reason() const;
  // errorType the slot is released with ("" on success).
  std::string_view ErrorType() const;
};

struct IsolationSupport {
  MemoryMechanism memory = MemoryMechanism::kRssSampling;
  KillMechanism kill = KillMechanism::kProcessGroup;
  std::string v2_parent;  // where per-call v2 cgroups are made ("" if not possible)
  std::string v1_parent;  // where per-call v1 memory cgroups are made ("" if not possible)
  std::string detail;     // a sentence for the log
};
// Finds out what this machine allows (ProcessRunner asks once, when it is made): a writable v2
// cgroup (for the tree kill, and for memory when its memory controller is enabled), a writable v1
// memory cgroup, or neither.
IsolationSupport DetectIsolation();

struct ProcessRunnerOptions {
  // Use cgroups when the machine allows (false forces process-group kill and RSS sampling).
  bool use_cgroups = true;
  // How often the tree's RSS is read when no memory cgroup enforces the limit (and, with one,
  // how often the peak is read where the kernel keeps none).
  std::chrono::milliseconds memory_sample_interval{50};
  // After a cancel, how long the program has between SIGTERM and SIGKILL.
  std::chrono::milliseconds cancel_grace{2000};
};

// Thread safety: Run() may be called from many threads at once. The WorkerCalls (and its manager,
// tracer, logger) must outlive the runner. PR_SET_PDEATHSIG is tied to the thread that started
// the child, and Run() waits for the child on that same thread, so a child never outlives the
// Run() that started it unless the process dies, and then the kernel kills it.
class ProcessRunner {
 public:
  explicit ProcessRunner(WorkerCalls& calls, ProcessRunnerOptions options = {});

  // Takes a slot (a refusal is returned, and nothing runs), runs the program to its end, settles
  // the slot. `cancel` stops the program (SIGTERM, SIGKILL after cancel_grace).
  Result<ProcessResult, Rejection> Run(std::string_view task_id, const ProcessSpec& spec,
                                       const CallOptions& options = {},
                                       const std::stop_token& cancel = {});
  // The same under a slot the caller already holds (a scheduler that waits for places), which
  // the run settles.
  ProcessResult RunWithSlot(Slot slot, std::string_view task_id, const ProcessSpec& spec,
                            const CallOptions& options = {}, const std::stop_token& cancel = {});

  const IsolationSupport& isolation() const { return isolation_; }
  WorkerCalls& calls() { return calls_; }

 private:
  ProcessResult Execute(internal::CallGuard& guard, std::string_view task_id,
                        const ProcessSpec& spec, const std::stop_token& cancel);

  WorkerCalls& calls_;
  ProcessRunnerOptions options_;
  IsolationSupport isolation_;
  std::atomic<uint64_t> sequence_{0};  // names per-call cgroups
};

}  // namespace laneguard

#endif  // LANEGUARD_PROCESS_H_
