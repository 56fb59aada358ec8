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
// Stopping. At the call's timeout (the manager's warning phase) the process group gets SIGTERM
// then SIGCONT (as timeout(1) sends them: a stopped program could not act on the SIGTERM); at
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
//
// If laneguard itself is killed with SIGKILL (or crashes), its direct children die with it
// (PR_SET_PDEATHSIG), but what they started keeps running, reparented to PID 1, in the dead
// laneguard's per-call cgroups. The next laneguard start (DetectIsolation, and the CLI before
// anything else) kills those processes, removes the cgroups and says what it cleaned
// (CleanUpLeftoverCgroups). Without cgroups there is no record of them, so nothing can.
#ifndef LANEGUARD_PROCESS_H_
#define LANEGUARD_PROCESS_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
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
  // true: the program's environment gets TRACEPARENT, the W3C traceparent of the call's own span
  // (over env's), so what it traces joins the call's trace. Only when the span has a valid
  // context (tracing on); otherwise env's TRACEPARENT, if any, stays.
  bool traceparent_env = false;
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
  // Ctrl-Z stops the command; laneguard then takes the terminal back and stops itself, as a
  // shell job stops, so the shell's prompt returns. When laneguard is continued (fg, bg), the
  // command gets the terminal back (fg) and SIGCONT. The timeout keeps running meanwhile.
  bool foreground_terminal = false;
  // false: stdout and stderr pass through to ours. true: captured into the result, each stream
  // capped at max_capture_bytes; what does not fit is read and dropped, counted in
  // dropped_output_bytes. Which part is kept is per stream: stdout keeps its head (a program's
  // result usually starts there), stderr its tail (the last lines say why a program failed).
  bool capture_output = false;
  size_t max_capture_bytes = 16 << 20;
  enum class Keep { kHead, kTail };
  Keep stdout_keep = Keep::kHead;
  Keep stderr_keep = Keep::kTail;
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
  bool oom_killed = false;  // the kernel OOM-killed something in the call's cgroup
  double duration_ms = 0;   // from start to exit of the direct child
  // The program's own memory, never laneguard's: the call cgroup's high-water mark (less what the
  // reused cgroup held before the call) where a memory cgroup counts the tree; otherwise the
  // largest of the sampled tree RSS, the sampled VmHWM of the program, and the kernel's ru_maxrss
  // when that is above laneguard's own peak (below it, it may be ours: exec records the old
  // image's peak, which for a child of laneguard is laneguard's). 0 when none of these could tell
  // (a program that ended before the first sample, without a memory cgroup).
  int64_t peak_rss_bytes = 0;
  // The call's timeout and how long after the slot was granted the program ended, on the same
  // basis (the slot's grant), so a timeout is reported as reached after at least its timeout.
  int64_t timeout_ms = 0;
  double since_grant_ms = 0;
  // The signal that had stopped the program (SIGSTOP, SIGTSTP, ...) when it was killed at the
  // hard deadline while stopped; 0 otherwise.
  int stopped_by_signal = 0;
  int64_t pid = 0;
  MemoryMechanism memory_mechanism = MemoryMechanism::kNone;
  KillMechanism kill_mechanism = KillMechanism::kProcessGroup;
  std::string call_id;
  std::string error;                     // kSpawnFailed: why (argv[i], env key or cwd for a NUL)
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

// What a start found left behind by laneguard processes that died without cleaning up (SIGKILL,
// a crash): their per-call cgroups, and the processes still running in them, which lived on
// after their laneguard (reparented to PID 1) until now.
struct LeftoverCleanup {
  int cgroups_removed = 0;
  int cgroups_not_removed = 0;  // still being torn down: the next start tries again
  int processes_killed = 0;
  std::vector<int64_t> dead_laneguard_pids;  // whose cgroups they were
  bool empty() const { return cgroups_removed == 0 && cgroups_not_removed == 0; }
  // "cleaned up after dead laneguard processes (pids 4121, 4188): 2 leftover cgroups, 3
  // processes still running in them killed"
  std::string Describe() const;
};

struct IsolationSupport {
  MemoryMechanism memory = MemoryMechanism::kRssSampling;
  KillMechanism kill = KillMechanism::kProcessGroup;
  std::string v2_parent;    // where per-call v2 cgroups are made ("" if not possible)
  std::string v1_parent;    // where per-call v1 memory cgroups are made ("" if not possible)
  std::string detail;       // a sentence for the log
  LeftoverCleanup cleaned;  // what DetectIsolation cleaned up after dead laneguard processes
};
// Finds out what this machine allows (ProcessRunner asks once, when it is made): a writable v2
// cgroup (for the tree kill, and for memory when its memory controller is enabled), a writable v1
// memory cgroup, or neither. Cleans up after dead laneguard processes first
// (CleanUpLeftoverCgroups), and says what it cleaned in `detail`.
IsolationSupport DetectIsolation();

// Kills what runs in the per-call cgroups ("laneguard-<pid>-<n>") of laneguard processes that are
// no longer alive, under `parents` (default: this process's own v2 and v1 memory cgroups), and
// removes the directories. Safe to call at any time: a live laneguard's cgroups are never touched.
LeftoverCleanup CleanUpLeftoverCgroups();
LeftoverCleanup CleanUpLeftoverCgroups(const std::vector<std::string>& parents);

// Raises this process's soft RLIMIT_NOFILE to its hard limit (a batch holds a few descriptors
// per running job), once, at start. Programs started later get the original soft limit back
// before exec (select()-based programs rely on a soft limit of 1024). Returns the new soft limit.
uint64_t RaiseOpenFileLimit();

struct ProcessRunnerOptions {
  // Use cgroups when the machine allows (false forces process-group kill and RSS sampling).
  bool use_cgroups = true;
  // How often the tree's RSS is read when no memory cgroup enforces the limit (and, with one,
  // how often the peak is read where the kernel keeps none).
  std::chrono::milliseconds memory_sample_interval{50};
  // After a cancel, how long the program has between SIGTERM and SIGKILL.
  std::chrono::milliseconds cancel_grace{2000};
  // Out of descriptors (EMFILE, ENFILE) or processes (EAGAIN) while starting a program: running
  // calls give them back as they end, so the start waits and retries for up to this long (back-
  // pressure) before it fails.
  std::chrono::milliseconds resource_wait{10000};
};

namespace internal {
class CgroupPool;
class ProcessRun;
}  // namespace internal

// Thread safety: Run() may be called from many threads at once. The WorkerCalls (and its manager,
// tracer, logger) must outlive the runner. PR_SET_PDEATHSIG is tied to the thread that started
// the child, and Run() waits for the child on that same thread, so a child never outlives the
// Run() that started it unless the process dies, and then the kernel kills it.
//
// Starting a program costs what starting it from a small shell costs: the child is made with
// clone(CLONE_VM | CLONE_VFORK) (no copy of this process's memory, however large), runs only
// async-signal-safe steps prepared beforehand, and execs; per-call cgroups are kept in a pool and
// reused by later calls rather than made and removed each time.
class ProcessRunner {
 public:
  explicit ProcessRunner(WorkerCalls& calls, ProcessRunnerOptions options = {});
  ~ProcessRunner();  // removes the pooled cgroups

  // Takes a slot (a refusal is returned as TryAcquire's Error, and nothing runs), runs the
  // program to its end, settles the slot. `cancel` stops the program (SIGTERM, SIGKILL after
  // cancel_grace).
  Result<ProcessResult> Run(std::string_view task_id, const ProcessSpec& spec,
                            const CallOptions& options = {}, const std::stop_token& cancel = {});
  // The same under a slot the caller already holds (a scheduler that waits for places), which
  // the run settles.
  ProcessResult RunWithSlot(Slot slot, std::string_view task_id, const ProcessSpec& spec,
                            const CallOptions& options = {}, const std::stop_token& cancel = {});

  const IsolationSupport& isolation() const { return isolation_; }
  WorkerCalls& calls() { return calls_; }

 private:
  friend class internal::ProcessRun;  // one run (src/process/process_runner.cc)

  WorkerCalls& calls_;
  ProcessRunnerOptions options_;
  IsolationSupport isolation_;
  std::unique_ptr<internal::CgroupPool> cgroups_;
  int null_fd_ = -1;  // /dev/null, for stdin_null; opened once
};

}  // namespace laneguard

#endif  // LANEGUARD_PROCESS_H_
