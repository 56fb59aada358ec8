#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <vector>

#include "laneguard/process.h"
#include "process/call_cgroup.h"

extern char** environ;

namespace laneguard {

std::string_view ToString(ProcessOutcome outcome) {
  switch (outcome) {
    case ProcessOutcome::kExited:
      return "exited";
    case ProcessOutcome::kSignaled:
      return "signaled";
    case ProcessOutcome::kTimedOut:
      return "timed_out";
    case ProcessOutcome::kMemoryKilled:
      return "memory_killed";
    case ProcessOutcome::kCancelled:
      return "cancelled";
    case ProcessOutcome::kSpawnFailed:
      return "spawn_failed";
  }
  return "unknown";
}

std::string_view ToString(TimeoutPhase phase) {
  switch (phase) {
    case TimeoutPhase::kNone:
      return "none";
    case TimeoutPhase::kWarning:
      return "warning";
    case TimeoutPhase::kEscalation:
      return "escalation";
  }
  return "unknown";
}

std::string_view ToString(MemoryMechanism m) {
  switch (m) {
    case MemoryMechanism::kNone:
      return "none";
    case MemoryMechanism::kCgroupV2:
      return "cgroup_v2";
    case MemoryMechanism::kCgroupV1:
      return "cgroup_v1";
    case MemoryMechanism::kRssSampling:
      return "rss_sampling";
  }
  return "unknown";
}

std::string_view ToString(KillMechanism m) {
  switch (m) {
    case KillMechanism::kProcessGroup:
      return "process_group";
    case KillMechanism::kCgroupKill:
      return "cgroup_kill";
    case KillMechanism::kCgroupProcs:
      return "cgroup_procs";
  }
  return "unknown";
}

namespace {

// "<what>: <errno text>", the form every failed system call below is reported in.
std::string SystemError(std::string_view what, int error) {
  return std::string(what) + ": " + std::generic_category().message(error);
}
constexpr int64_t kMaxRssMbLimit = int64_t{1} << 30;  // 1 PiB: keeps << 20 far from overflow
// "SIGKILL"; real-time signals have no abbreviation (sigabbrev_np gives null): "SIG35".
std::string SignalName(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return "SIG" + (abbrev != nullptr ? std::string(abbrev) : std::to_string(sig));
}
}  // namespace

int ProcessResult::ShellStatus() const {
  switch (outcome) {
    case ProcessOutcome::kTimedOut:
      return 124;
    case ProcessOutcome::kMemoryKilled:
      return 137;
    case ProcessOutcome::kCancelled:
      return 130;
    case ProcessOutcome::kSpawnFailed:
      return 127;
    case ProcessOutcome::kSignaled:
      return 128 + term_signal;
    case ProcessOutcome::kExited:
      return exit_code;
  }
  return 1;
}

std::string_view ProcessResult::ErrorType() const {
  switch (outcome) {
    case ProcessOutcome::kExited:
      return exit_code == 0 ? "" : "exit_code";
    case ProcessOutcome::kSignaled:
      return "signal";
    case ProcessOutcome::kTimedOut:
      return "timeout";
    case ProcessOutcome::kMemoryKilled:
      return "memory_limit";
    case ProcessOutcome::kCancelled:
      return "cancelled";
    case ProcessOutcome::kSpawnFailed:
      return "spawn_failed";
  }
  return "unknown";
}

std::string ProcessResult::Reason() const {
  const std::string ms = std::to_string(static_cast<int64_t>(duration_ms)) + " ms";
  switch (outcome) {
    case ProcessOutcome::kExited:
      return "exited with code " + std::to_string(exit_code) + " after " + ms;
    case ProcessOutcome::kSignaled:
      return "killed by signal " + SignalName(term_signal) + " after " + ms;
    case ProcessOutcome::kTimedOut:
      return timeout_phase == TimeoutPhase::kEscalation
                 ? "timed out: ignored SIGTERM, killed (SIGKILL) at the hard deadline after " + ms
                 : "timed out: stopped by SIGTERM at its timeout after " + ms;
    case ProcessOutcome::kMemoryKilled:
      return std::string("killed for memory: ") +
             (oom_killed ? "OOM-killed in its cgroup" : "tree RSS went over the limit") +
             " (peak " + std::to_string(peak_rss_bytes >> 20) + " MB) after " + ms;
    case ProcessOutcome::kCancelled:
      return "cancelled after " + ms;
    case ProcessOutcome::kSpawnFailed:
      return "could not start: " + error;
  }
  return "unknown";
}

namespace {

int PidfdOpen(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }
int PidfdSignal(int pidfd, int sig) {
  return static_cast<int>(syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

// Formats a non-negative number without allocating (for the child between fork and exec, where
// only async-signal-safe calls are allowed).
size_t FormatPid(long value, char* out) {
  char tmp[24];
  size_t n = 0;
  do {
    tmp[n++] = static_cast<char>('0' + value % 10);
    value /= 10;
  } while (value > 0);
  for (size_t i = 0; i < n; ++i) out[i] = tmp[n - 1 - i];
  return n;
}

// Sum of RSS over the processes of a process group, from /proc/<pid>/stat (pgrp is field 5, rss
// field 24, in pages). The fallback when no memory cgroup counts for us.
int64_t GroupRssBytes(pid_t pgid) {
  static const long page = sysconf(_SC_PAGESIZE);
  int64_t total = 0;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return 0;
  // readdir is unsafe only on a DIR shared between threads; this one is local.
  while (dirent* entry = readdir(proc)) {  // NOLINT(concurrency-mt-unsafe)
    if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
    char path[300];
    std::snprintf(path, sizeof path, "/proc/%s/stat", entry->d_name);
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    char buf[1024];
    const ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) continue;
    buf[n] = '\0';
    // The command name (field 2) may hold spaces and parentheses: parse after the last ')'.
    const char* p = std::strrchr(buf, ')');
    if (p == nullptr) continue;
    char state = 0;
    long ppid = 0, pgrp = 0;
    if (std::sscanf(p + 1, " %c %ld %ld", &state, &ppid, &pgrp) != 3 || pgrp != pgid) continue;
    // Skip 20 more fields to reach rss.
    const char* q = p + 1;
    for (int field = 3; field < 24 && q != nullptr; ++field) q = std::strchr(q + 1, ' ');
    if (q != nullptr) total += std::atol(q + 1) * page;
  }
  closedir(proc);
  return total;
}

struct Pipe {
  int read = -1, write = -1;
  bool Open() {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return false;
    read = fds[0];
    write = fds[1];
    return true;
  }
  void CloseRead() {
    if (read >= 0) close(read);
    read = -1;
  }
  void CloseWrite() {
    if (write >= 0) close(write);
    write = -1;
  }
  ~Pipe() {
    CloseRead();
    CloseWrite();
  }
};

// What the timer thread (timeout hooks), the cancel callback and the waiting thread share.
struct Tree {
  std::mutex mu;
  pid_t pid = -1;
  int pidfd = -1;
  bool reaped = false;  // under mu: once set, no signal may be sent (the pid may be reused)
  internal::CallCgroup* cgroup = nullptr;
  TimeoutPhase phase = TimeoutPhase::kNone;  // under mu

  void SignalGroup(int sig) {  // caller holds mu
    if (reaped || pid <= 0) return;
    kill(-pid, sig);
    if (pidfd >= 0) PidfdSignal(pidfd, sig);  // in case it left its group
  }
  void KillAll() {  // caller holds mu
    if (reaped || pid <= 0) return;
    if (cgroup != nullptr) cgroup->Kill(3);
    SignalGroup(SIGKILL);
  }
};

// The child's side of the fork: only async-signal-safe calls until exec.
[[noreturn]] void ChildExec(const char* file, const std::vector<char*>& argv, char** envp,
                            bool take_terminal, const char* cwd, const char* v2_procs,
                            const char* v1_procs, pid_t parent, int in_fd, int out_fd, int err_fd,
                            int status_fd) {
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(127);  // the parent died before the line above
  if (take_terminal) {
    // A background group changing the foreground group gets SIGTTOU unless it blocks it; the
    // mask is reset below.
    sigset_t ttou;
    sigemptyset(&ttou);
    sigaddset(&ttou, SIGTTOU);
    sigprocmask(SIG_BLOCK, &ttou, nullptr);  // NOLINT(concurrency-mt-unsafe): forked, one thread
    tcsetpgrp(STDIN_FILENO, getpid());
  }
  // Join the call's cgroups before anything else runs, so nothing the program forks escapes.
  char pid_text[24];
  const size_t pid_len = FormatPid(getpid(), pid_text);
  for (const char* procs : {v2_procs, v1_procs}) {
    if (procs == nullptr) continue;
    const int fd = open(procs, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
      if (write(fd, pid_text, pid_len) < 0) {
      }
      close(fd);
    }
  }
  // The caller may block signals (a CLI waiting in sigwait) or ignore some; the program starts
  // clean.
  sigset_t all;
  sigemptyset(&all);
  sigprocmask(SIG_SETMASK, &all, nullptr);  // NOLINT(concurrency-mt-unsafe): forked, one thread
  for (int sig : {SIGINT, SIGTERM, SIGPIPE, SIGCHLD, SIGHUP, SIGQUIT}) signal(sig, SIG_DFL);
  if (in_fd >= 0) dup2(in_fd, STDIN_FILENO);
  if (out_fd >= 0) dup2(out_fd, STDOUT_FILENO);
  if (err_fd >= 0) dup2(err_fd, STDERR_FILENO);
  if (cwd != nullptr && chdir(cwd) != 0) {
    const int err = errno;
    if (write(status_fd, &err, sizeof err) < 0) {
    }
    _exit(127);
  }
  execvpe(file, argv.data(), envp);
  const int err = errno;
  if (write(status_fd, &err, sizeof err) < 0) {
  }
  _exit(127);
}

// What execvpe should run for argv[0]. glibc's execvpe searches the PATH of the calling process,
// not the one in envp, so a command whose environment sets PATH (or clears it) would be found where
// laneguard's PATH says: the search is done here instead, with the child's PATH (glibc's default
// path when a cleared environment has none) and relative to the child's working directory. Not
// found: an empty name, which makes exec fail with ENOENT rather than fall back to our PATH.
std::string ProgramToExec(const std::string& name, const ProcessSpec& spec) {
  if (name.find('/') != std::string::npos) return name;
  const std::string* path = nullptr;
  for (const auto& [key, value] : spec.env)
    if (key == "PATH") path = &value;  // the last one wins, as in the built environment
  if (path == nullptr && !spec.clear_env) return name;  // our PATH is the child's: execvpe's own
  std::string search;
  if (path != nullptr) {
    search = *path;
  } else {
    search.resize(confstr(_CS_PATH, nullptr, 0));
    confstr(_CS_PATH, search.data(), search.size());
    search.resize(std::strlen(search.c_str()));
  }
  size_t begin = 0;
  for (;;) {
    const size_t end = std::min(search.find(':', begin), search.size());
    const std::string dir = search.substr(begin, end - begin);
    std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + name;
    const std::string seen_from_here =
        candidate[0] == '/' || spec.cwd.empty() ? candidate : spec.cwd + "/" + candidate;
    struct stat st {};
    if (stat(seen_from_here.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        access(seen_from_here.c_str(), X_OK) == 0)
      return candidate;
    if (end == search.size()) return {};
    begin = end + 1;
  }
}

// Makes `group` the terminal's foreground process group from this thread, which may be in a
// background group by then (SIGTTOU blocked around the call for that reason).
void SetTerminalGroup(pid_t group) {
  sigset_t ttou, old;
  sigemptyset(&ttou);
  sigaddset(&ttou, SIGTTOU);
  pthread_sigmask(SIG_BLOCK, &ttou, &old);
  tcsetpgrp(STDIN_FILENO, group);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

// Gives the terminal to the command's group and takes it back for ours when the run ends, on
// every path. Both sides of the fork set it, as with setpgid, so the command never reads the
// terminal before it owns it.
class TerminalLease {
 public:
  TerminalLease(bool active, pid_t child) : active_(active) {
    if (active_) SetTerminalGroup(child);
  }
  ~TerminalLease() {
    if (active_) SetTerminalGroup(getpgrp());
  }
  TerminalLease(const TerminalLease&) = delete;
  TerminalLease& operator=(const TerminalLease&) = delete;

 private:
  bool active_;
};

std::vector<std::string> BuildEnvironment(const ProcessSpec& spec) {
  std::vector<std::string> env;
  if (!spec.clear_env) {
    for (char** e = environ; *e != nullptr; ++e) {
      std::string_view entry(*e);
      const std::string_view name = entry.substr(0, entry.find('='));
      bool overridden = false;
      for (const auto& [key, value] : spec.env) overridden = overridden || key == name;
      if (!overridden) env.emplace_back(entry);
    }
  }
  for (const auto& [key, value] : spec.env) env.push_back(key + "=" + value);
  return env;
}

std::string JoinCommand(const std::vector<std::string>& argv) {
  std::string out;
  for (const std::string& a : argv) {
    if (!out.empty()) out += ' ';
    out += a;
    if (out.size() > 256) {
      out.resize(256);
      out += "...";
      break;
    }
  }
  return out;
}

// Reads what is available into `into` (up to `cap`, the rest counted in `dropped`). False at EOF.
bool Drain(int fd, std::string* into, size_t cap, uint64_t* dropped) {
  char buf[65536];
  const ssize_t n = read(fd, buf, sizeof buf);
  if (n == 0) return false;
  if (n < 0) return errno == EINTR || errno == EAGAIN;
  const size_t room = into->size() < cap ? cap - into->size() : 0;
  const size_t keep = std::min(room, static_cast<size_t>(n));
  into->append(buf, keep);
  *dropped += static_cast<uint64_t>(n) - keep;
  return true;
}

}  // namespace

ProcessRunner::ProcessRunner(WorkerCalls& calls, ProcessRunnerOptions options)
    : calls_(calls), options_(options) {
  if (options_.use_cgroups)
    isolation_ = DetectIsolation();
  else
    isolation_.detail = "memory limits: rss_sampling; tree kill: process_group (cgroups off)";
  if (JsonLogger* log = calls_.logger())
    log->LogInfo("Process isolation", {{"memoryMechanism", ToString(isolation_.memory)},
                                       {"killMechanism", ToString(isolation_.kill)},
                                       {"detail", isolation_.detail}});
}

Result<ProcessResult, Rejection> ProcessRunner::Run(std::string_view task_id,
                                                    const ProcessSpec& spec,
                                                    const CallOptions& options,
                                                    const std::stop_token& cancel) {
  auto slot =
      calls_.manager().TryAcquire(task_id, options.lane, options.timeout_ms, options.metadata);
  // A refusal reaches the manager's observers (log line, counters) like any other.
  if (!slot.ok()) return slot.error();
  return RunWithSlot(std::move(slot).value(), task_id, spec, options, cancel);
}

ProcessResult ProcessRunner::RunWithSlot(Slot slot, std::string_view task_id,
                                         const ProcessSpec& spec, const CallOptions& options,
                                         const std::stop_token& cancel) {
  if (!slot.valid()) {
    ProcessResult refused;
    refused.error = "RunWithSlot needs a valid slot (this one was released or moved from)";
    return refused;
  }
  internal::CallGuard guard(calls_, task_id, options, std::move(slot));
  ProcessResult result = Execute(guard, task_id, spec, cancel);
  Span& span = guard.span();
  if (span.recording()) {
    span.SetAttribute("laneguard.outcome", std::string(ToString(result.outcome)));
    span.SetAttribute("process.exit_code", int64_t{result.exit_code});
    if (result.term_signal != 0) span.SetAttribute("process.signal", int64_t{result.term_signal});
    span.SetAttribute("laneguard.peak_rss_bytes", result.peak_rss_bytes);
    span.SetAttribute("laneguard.oom_killed", result.oom_killed);
    span.SetAttribute("laneguard.timeout_phase", std::string(ToString(result.timeout_phase)));
  }
  guard.Settle(result.success(), result.ErrorType());
  return result;
}

ProcessResult ProcessRunner::Execute(internal::CallGuard& guard, std::string_view task_id,
                                     const ProcessSpec& spec, const std::stop_token& cancel) {
  ProcessResult result;
  CallContext& context = guard.context();
  result.call_id = context.call_id();
  Span& span = guard.span();
  const Clock& clock = calls_.manager().clock();

  if (spec.argv.empty() || (spec.use_shell && spec.argv.size() != 1)) {
    result.error = spec.argv.empty() ? "argv is empty"
                                     : "use_shell needs exactly one command string, got " +
                                           std::to_string(spec.argv.size());
    return result;
  }
  if (spec.max_rss_mb && (*spec.max_rss_mb <= 0 || *spec.max_rss_mb > kMaxRssMbLimit)) {
    result.error = "max_rss_mb: " + std::to_string(*spec.max_rss_mb) + " must be within [1, " +
                   std::to_string(kMaxRssMbLimit) + "]";
    return result;
  }
  struct sigaction chld {};
  sigaction(SIGCHLD, nullptr, &chld);
  if (chld.sa_handler == SIG_IGN || (chld.sa_flags & SA_NOCLDWAIT) != 0) {
    // The kernel would reap the child itself: no exit status, and its pid could be reused while
    // we still signal it.
    result.error =
        "SIGCHLD is ignored in this process (SIG_IGN or SA_NOCLDWAIT), so a child's exit status "
        "cannot be collected; restore its default disposition";
    return result;
  }
  std::vector<std::string> args = spec.argv;
  if (spec.use_shell) args = {"/bin/sh", "-c", spec.argv[0]};
  const std::string program = ProgramToExec(args[0], spec);
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_strings = BuildEnvironment(spec);
  std::vector<char*> envp;
  envp.reserve(env_strings.size() + 1);
  for (std::string& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);

  const std::optional<int64_t> limit_bytes =
      spec.max_rss_mb ? std::optional<int64_t>(*spec.max_rss_mb << 20) : std::nullopt;
  const std::string cgroup_name =
      "laneguard-" + std::to_string(getpid()) + "-" + std::to_string(sequence_.fetch_add(1) + 1);
  internal::CallCgroup cgroup(options_.use_cgroups ? isolation_ : IsolationSupport{}, cgroup_name,
                              limit_bytes);
  result.memory_mechanism = cgroup.memory_mechanism();
  result.kill_mechanism = cgroup.kill_mechanism();
  if (span.recording()) {
    span.SetAttribute("process.command", JoinCommand(args));
    span.SetAttribute("laneguard.memory_mechanism", std::string(ToString(result.memory_mechanism)));
    span.SetAttribute("laneguard.kill_mechanism", std::string(ToString(result.kill_mechanism)));
    if (limit_bytes) span.SetAttribute("laneguard.max_rss_mb", *spec.max_rss_mb);
  }

  Pipe out, err, status;
  if (!status.Open() || (spec.capture_output && (!out.Open() || !err.Open()))) {
    result.error = SystemError("pipe", errno);
    return result;
  }
  Pipe null_in;  // only .read is used: /dev/null for the child's stdin
  if (spec.stdin_null && (null_in.read = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
    result.error = SystemError("/dev/null", errno);
    return result;
  }
  const pid_t parent = getpid();
  const int64_t start = clock.MonotonicNanos();
  const char* cwd = spec.cwd.empty() ? nullptr : spec.cwd.c_str();
  const char* v2 = cgroup.v2_procs().empty() ? nullptr : cgroup.v2_procs().c_str();
  const char* v1 = cgroup.v1_procs().empty() ? nullptr : cgroup.v1_procs().c_str();
  const bool take_terminal = spec.foreground_terminal && !spec.stdin_null &&
                             isatty(STDIN_FILENO) != 0 && tcgetpgrp(STDIN_FILENO) == getpgrp();
  const pid_t pid = fork();
  if (pid < 0) {
    result.error = SystemError("fork", errno);
    return result;
  }
  if (pid == 0)
    ChildExec(program.c_str(), argv, envp.data(), take_terminal, cwd, v2, v1, parent, null_in.read,
              out.write, err.write, status.write);
  // Both sides set the group, so a signal sent before the child runs reaches it.
  setpgid(pid, pid);
  const TerminalLease terminal(take_terminal, pid);
  out.CloseWrite();
  err.CloseWrite();
  status.CloseWrite();
  null_in.CloseRead();
  result.pid = pid;

  // Shared with the timeout hooks, which may still be running on the timer thread when this
  // function returns (the slot is settled only afterwards); `reaped` keeps them from acting then.
  auto shared_tree = std::make_shared<Tree>();
  Tree& tree = *shared_tree;
  tree.pid = pid;
  tree.pidfd = PidfdOpen(pid);  // race-free: the child cannot be reaped before we wait for it
  tree.cgroup = &cgroup;
  if (tree.pidfd < 0) {
    // Without a pidfd (Linux < 5.3) there is no race-free way to wait with timers: refuse.
    result.error = SystemError("pidfd_open", errno);
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    int ignored = 0;
    waitpid(pid, &ignored, 0);
    return result;
  }

  int exec_errno = 0;
  ssize_t got;
  while ((got = read(status.read, &exec_errno, sizeof exec_errno)) < 0 && errno == EINTR) {
  }
  if (got == sizeof exec_errno) {
    // exec failed: the child has exited with 127; reap it and report.
    {
      std::lock_guard<std::mutex> lock(tree.mu);
      tree.reaped = true;
    }
    int ignored = 0;
    waitpid(pid, &ignored, 0);
    if (tree.pidfd >= 0) close(tree.pidfd);
    result.error = (cwd != nullptr && exec_errno == ENOENT && access(cwd, F_OK) != 0)
                       ? SystemError("cwd '" + spec.cwd + "'", exec_errno)
                       : SystemError("'" + args[0] + "'", exec_errno) +
                             (program.empty() ? " (searched the PATH of its environment)" : "");
    return result;
  }
  if (span.recording()) span.AddEvent("process_started", {{"process.pid", int64_t{pid}}});

  // Warning phase: the manager requests a stop at the timeout (on its timer thread).
  std::stop_callback on_timeout(context.stop_token(), [shared_tree, &span] {
    Tree& tree = *shared_tree;
    std::lock_guard<std::mutex> lock(tree.mu);
    if (tree.reaped) return;
    if (tree.phase == TimeoutPhase::kNone) tree.phase = TimeoutPhase::kWarning;
    tree.SignalGroup(SIGTERM);
    if (span.recording()) span.AddEvent("signal_sent", {{"signal", std::string("SIGTERM")}});
  });
  context.OnHardTimeout([shared_tree, &span] {
    Tree& tree = *shared_tree;
    std::lock_guard<std::mutex> lock(tree.mu);
    if (tree.reaped) return;
    tree.phase = TimeoutPhase::kEscalation;
    tree.KillAll();
    if (span.recording()) span.AddEvent("signal_sent", {{"signal", std::string("SIGKILL")}});
  });
  // The timer fires once: if the hard deadline passed while the program was being started, the
  // hook above will never run, so act now.
  if (clock.MonotonicNanos() >= context.hard_deadline_mono_nanos()) {
    std::lock_guard<std::mutex> lock(tree.mu);
    tree.phase = TimeoutPhase::kEscalation;
    tree.KillAll();
  }
  const int cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  // Reset before cancel_fd is closed: a cancel from another thread must not write to a closed (or
  // reused) descriptor.
  std::optional<std::stop_callback<std::function<void()>>> on_cancel;
  on_cancel.emplace(cancel, [cancel_fd] {
    const uint64_t one = 1;
    if (write(cancel_fd, &one, sizeof one) < 0) {
    }
  });

  const bool sample_memory =
      limit_bytes && result.memory_mechanism == MemoryMechanism::kRssSampling;
  const int64_t sample_every = options_.memory_sample_interval.count() * 1000000;
  const int64_t grace = options_.cancel_grace.count() * 1000000;
  int64_t next_sample = start;
  bool cancelled = false;
  int64_t cancel_kill_at = 0;  // when the cancelled tree gets SIGKILL; 0: none pending
  bool sampler_killed = false;
  int64_t sampled_peak = 0;
  bool out_open = out.read >= 0, err_open = err.read >= 0;
  auto read_outputs = [&](short out_events, short err_events) {
    if (out_open && (out_events & (POLLIN | POLLHUP)))
      out_open = Drain(out.read, &result.stdout_data, spec.max_capture_bytes,
                       &result.dropped_output_bytes);
    if (err_open && (err_events & (POLLIN | POLLHUP)))
      err_open = Drain(err.read, &result.stderr_data, spec.max_capture_bytes,
                       &result.dropped_output_bytes);
  };
  for (;;) {
    pollfd fds[4] = {
        {tree.pidfd, POLLIN, 0}, {cancel_fd, POLLIN, 0}, {-1, POLLIN, 0}, {-1, POLLIN, 0}};
    if (out_open) fds[2].fd = out.read;
    if (err_open) fds[3].fd = err.read;
    const int64_t now = clock.MonotonicNanos();
    int64_t wake = -1;
    if (sample_memory) wake = next_sample;
    if (cancel_kill_at > 0 && (wake < 0 || cancel_kill_at < wake)) wake = cancel_kill_at;
    const int timeout_ms =
        wake < 0 ? -1 : static_cast<int>(std::max<int64_t>(0, (wake - now + 999999) / 1000000));
    const int ready = poll(fds, 4, timeout_ms);
    if (ready < 0 && errno != EINTR) break;
    read_outputs(fds[2].revents, fds[3].revents);
    if (fds[1].revents & POLLIN) {
      uint64_t count = 0;
      if (read(cancel_fd, &count, sizeof count) < 0) {
      }
      if (!cancelled) {
        cancelled = true;
        cancel_kill_at = clock.MonotonicNanos() + grace;
        std::lock_guard<std::mutex> lock(tree.mu);
        tree.SignalGroup(SIGTERM);
      }
    }
    const int64_t after = clock.MonotonicNanos();
    if (cancel_kill_at > 0 && after >= cancel_kill_at) {
      cancel_kill_at = 0;
      std::lock_guard<std::mutex> lock(tree.mu);
      tree.KillAll();
    }
    if (sample_memory && after >= next_sample) {
      next_sample = after + sample_every;
      const int64_t rss = GroupRssBytes(pid);
      sampled_peak = std::max(sampled_peak, rss);
      if (rss > *limit_bytes && !sampler_killed) {
        sampler_killed = true;
        std::lock_guard<std::mutex> lock(tree.mu);
        tree.KillAll();
      }
    }
    if (fds[0].revents & POLLIN) break;
  }
  // The direct child has exited (it is a zombie until we reap it below). Kill what it left in its
  // cgroup or group: a call leaves nothing running behind it.
  const int64_t end = clock.MonotonicNanos();
  {
    std::lock_guard<std::mutex> lock(tree.mu);
    tree.KillAll();
  }
  // Without a cgroup, a setsid() grandchild may still hold the output pipes: read what is there
  // for at most 100 ms, not until EOF.
  const int64_t drain_until = clock.MonotonicNanos() + 100 * 1000000LL;
  while ((out_open || err_open) && clock.MonotonicNanos() < drain_until) {
    pollfd fds[2] = {{out_open ? out.read : -1, POLLIN, 0}, {err_open ? err.read : -1, POLLIN, 0}};
    if (poll(fds, 2, 10) > 0) read_outputs(fds[0].revents, fds[1].revents);
  }
  // What the kernel recorded, read before the directories go.
  result.oom_killed = cgroup.OomKills() > 0;
  const int64_t cgroup_peak = cgroup.PeakBytes();
  cgroup.Remove();
  int wstatus = 0;
  pid_t reaped = -1;
  rusage usage{};
  TimeoutPhase phase;
  {
    // Reap under the lock, so no hook signals a pid that may be reused from here on.
    std::lock_guard<std::mutex> lock(tree.mu);
    tree.reaped = true;
    tree.cgroup = nullptr;
    phase = tree.phase;
    while ((reaped = wait4(pid, &wstatus, 0, &usage)) < 0 && errno == EINTR) {
    }
  }
  const int wait_errno = errno;
  if (tree.pidfd >= 0) close(tree.pidfd);
  on_cancel.reset();
  close(cancel_fd);

  result.duration_ms = static_cast<double>(end - start) / 1e6;
  result.peak_rss_bytes =
      std::max({cgroup_peak, sampled_peak, static_cast<int64_t>(usage.ru_maxrss) * 1024});
  result.timeout_phase = phase;
  if (reaped < 0) {
    // Someone else collected the status (SIGCHLD ignored since the check above, or a stray
    // waitpid(-1)): we cannot say how the program ended, so say that rather than "exited 0".
    result.outcome = ProcessOutcome::kSpawnFailed;
    result.error = "the exit status was lost (" + SystemError("wait4", wait_errno) + ")";
    return result;
  }
  if (WIFEXITED(wstatus)) result.exit_code = WEXITSTATUS(wstatus);
  if (WIFSIGNALED(wstatus)) result.term_signal = WTERMSIG(wstatus);
  if (result.oom_killed || sampler_killed) {
    result.outcome = ProcessOutcome::kMemoryKilled;
  } else if (cancelled) {
    result.outcome = ProcessOutcome::kCancelled;
  } else if (phase != TimeoutPhase::kNone) {
    result.outcome = ProcessOutcome::kTimedOut;
  } else if (WIFSIGNALED(wstatus)) {
    result.outcome = ProcessOutcome::kSignaled;
  } else {
    result.outcome = ProcessOutcome::kExited;
  }
  if (JsonLogger* log = calls_.logger()) {
    const LogLevel level = result.success() ? LogLevel::kDebug : LogLevel::kWarning;
    if (log->Enabled(level)) {
      const std::string reason = result.Reason();
      log->Log(level, "Process finished",
               {{"taskId", task_id},
                {"callId", result.call_id},
                {"outcome", ToString(result.outcome)},
                {"reason", reason},
                {"memoryMechanism", ToString(result.memory_mechanism)},
                {"killMechanism", ToString(result.kill_mechanism)},
                {"peakRssBytes", result.peak_rss_bytes}});
    }
  }
  return result;
}

}  // namespace laneguard
