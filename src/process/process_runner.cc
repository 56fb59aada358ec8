#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "laneguard/internal/mutex.h"
#include "laneguard/process.h"
#include "laneguard/trace/trace.h"
#include "process/call_cgroup.h"
#include "worker/call_guard.h"

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
    case ProcessOutcome::kTimedOut: {
      // Measured from the slot's grant, as the timeout is: "after 300 ms (timeout 300 ms)", never
      // a figure below the timeout it reached.
      std::string when =
          "timed out after " + std::to_string(static_cast<int64_t>(since_grant_ms)) + " ms";
      if (timeout_ms > 0) when += " (timeout " + std::to_string(timeout_ms) + " ms)";
      if (timeout_phase != TimeoutPhase::kEscalation)
        return when + ": stopped by SIGTERM at its timeout";
      if (stopped_by_signal != 0)
        return when + ": was stopped (" + SignalName(stopped_by_signal) +
               ") and killed (SIGKILL) at the hard deadline";
      return when + ": ignored SIGTERM, killed (SIGKILL) at the hard deadline";
    }
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

// The soft RLIMIT_NOFILE before RaiseOpenFileLimit raised it; -1 when it did not. Children get it
// back before exec.
std::atomic<int64_t> g_original_nofile{-1};

int PidfdSignal(int pidfd, int sig) {
  return static_cast<int>(syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
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

// Reads /proc/<pid>/<file> (its start: the fields wanted are near it) into `buf`, NUL-terminated.
// False when it cannot be read (the process is gone).
template <size_t N>
bool ReadProcFile(pid_t pid, const char* file, char (&buf)[N]) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/%s", static_cast<int>(pid), file);
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const ssize_t n = read(fd, buf, N - 1);
  close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  return true;
}

// The program's own peak RSS so far (VmHWM: its image's, reset by exec); 0 when unknown.
int64_t ProgramPeakBytes(pid_t pid) {
  char buf[4096];
  if (!ReadProcFile(pid, "status", buf)) return 0;
  const char* hwm = std::strstr(buf, "VmHWM:");
  return hwm == nullptr ? 0 : std::atoll(hwm + 6) * 1024;
}

// The process state letter from /proc/<pid>/stat ('T': stopped), 0 when unknown.
char ProcessState(pid_t pid) {
  char buf[512];
  if (!ReadProcFile(pid, "stat", buf)) return 0;
  const char* p = std::strrchr(buf, ')');
  return p != nullptr && p[1] == ' ' ? p[2] : '\0';
}

struct Pipe {
  int read = -1, write = -1;
  int Open() {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return errno;
    read = fds[0];
    write = fds[1];
    return 0;
  }
  void CloseRead() {
    if (read >= 0) close(read);
    read = -1;
  }
  void CloseWrite() {
    if (write >= 0) close(write);
    write = -1;
  }
  void Close() {
    CloseRead();
    CloseWrite();
  }
  ~Pipe() { Close(); }
};

// What the timer thread (the timeout handler) and the waiting thread share. pid, pidfd and cgroup
// are set before the handler is installed and not changed while it can run, except cgroup,
// cleared under `mu` with `reaped`.
struct Tree {
  internal::Mutex mu;
  pid_t pid = -1;
  int pidfd = -1;
  bool reaped GUARDED_BY(mu) = false;  // once set, no signal may be sent (the pid may be reused)
  internal::CallCgroup* cgroup GUARDED_BY(mu) = nullptr;
  bool warned GUARDED_BY(mu) = false;  // the warning's SIGTERM was sent (it is sent once)
  TimeoutPhase phase GUARDED_BY(mu) = TimeoutPhase::kNone;
  int last_stop_signal GUARDED_BY(mu) = 0;     // the last stop the owner thread took
  int stopped_at_deadline GUARDED_BY(mu) = 0;  // the stop signal, when it was stopped

  void SignalGroup(int sig) REQUIRES(mu) {
    if (reaped || pid <= 0) return;
    kill(-pid, sig);
    if (pidfd >= 0) PidfdSignal(pidfd, sig);  // in case it left its group
  }
  // SIGTERM, then SIGCONT as timeout(1) does: a stopped program acts on neither until continued.
  void Terminate() REQUIRES(mu) {
    SignalGroup(SIGTERM);
    SignalGroup(SIGCONT);
  }
  void KillAll() REQUIRES(mu) {
    if (reaped || pid <= 0) return;
    if (cgroup != nullptr) cgroup->Kill(3);
    SignalGroup(SIGKILL);
  }
  // The signal that stopped the program, if it is stopped now (0 if not).
  int StopSignal() const REQUIRES(mu) {
    if (reaped || pid <= 0) return 0;
    siginfo_t info{};
    if (waitid(P_PIDFD, static_cast<id_t>(pidfd), &info, WSTOPPED | WNOHANG | WNOWAIT) == 0 &&
        info.si_pid != 0 && info.si_code == CLD_STOPPED)
      return info.si_status;
    // The stop was already reported (and taken by the owner thread): the state still says it.
    if (ProcessState(pid) == 'T') return last_stop_signal != 0 ? last_stop_signal : SIGSTOP;
    return 0;
  }
};

// Everything the child needs between clone and exec, prepared by the parent: the child shares
// the parent's memory (CLONE_VM) and may only make async-signal-safe calls, no allocation.
struct ChildPlan {
  const char* file = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  const char* cwd = nullptr;
  int cgroup_fds[2] = {-1, -1};  // cgroup.procs files the child writes "0" (itself) to
  pid_t parent = 0;
  bool take_terminal = false;
  int in_fd = -1, out_fd = -1, err_fd = -1;  // -1: inherited
  int64_t nofile_soft = -1;                  // restored when >= 0
  // Why the child failed before exec: the child writes it to `report` (memory shared with the
  // child however it was made), Spawn copies it here.
  struct Report {
    int error = 0;
    bool chdir_failed = false;
  };
  Report* report = nullptr;
  int error = 0;
  bool chdir_failed = false;
};

// The child's side of the clone: only async-signal-safe calls until exec. Every signal is blocked
// on entry (the parent blocked them all around clone()).
int ChildMain(void* arg) {
  ChildPlan& plan = *static_cast<ChildPlan*>(arg);
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != plan.parent) _exit(127);  // the parent died before the line above
  // A background group may change the terminal's foreground group here: SIGTTOU is blocked.
  if (plan.take_terminal) tcsetpgrp(STDIN_FILENO, getpid());
  // Join the call's cgroups before anything else runs, so nothing the program forks escapes.
  for (int fd : plan.cgroup_fds) {
    if (fd >= 0 && write(fd, "0", 1) < 0) {
    }
  }
  // A handler of ours must not run in the child (it shares our memory until exec): handled
  // signals go back to their default, as do those the program must get at their default whatever
  // we do with them (the CLI ignores SIGPIPE, blocks SIGINT for sigwait, ...).
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP || sig == 32 || sig == 33) continue;  // 32, 33: glibc's
    struct sigaction sa {};
    if (sigaction(sig, nullptr, &sa) != 0) continue;
    const bool reset = sig == SIGINT || sig == SIGTERM || sig == SIGPIPE || sig == SIGCHLD ||
                       sig == SIGHUP || sig == SIGQUIT || sig == SIGXFSZ;
    if (!reset && (sa.sa_handler == SIG_DFL || sa.sa_handler == SIG_IGN)) continue;
    sa = {};
    sa.sa_handler = SIG_DFL;
    sigaction(sig, &sa, nullptr);
  }
  if (plan.nofile_soft >= 0) {
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
      limit.rlim_cur = static_cast<rlim_t>(plan.nofile_soft);
      setrlimit(RLIMIT_NOFILE, &limit);
    }
  }
  if (plan.in_fd >= 0) dup2(plan.in_fd, STDIN_FILENO);
  if (plan.out_fd >= 0) dup2(plan.out_fd, STDOUT_FILENO);
  if (plan.err_fd >= 0) dup2(plan.err_fd, STDERR_FILENO);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);  // NOLINT(concurrency-mt-unsafe): the child's own
  if (plan.cwd != nullptr && chdir(plan.cwd) != 0) {
    plan.report->error = errno;
    plan.report->chdir_failed = true;
    _exit(127);
  }
  execvpe(plan.file, plan.argv, plan.envp);
  plan.report->error = errno;
  _exit(127);
}

// The stack the child runs on until exec (the parent's thread is suspended meanwhile, so one per
// thread is enough), with a guard page below it, and a page shared with the child for its report.
class ChildStack {
 public:
  ~ChildStack() {
    if (base_ != nullptr) munmap(base_, size_);
    if (report_ != nullptr) munmap(report_, sizeof(ChildPlan::Report));
  }
  // Null if it cannot be mapped.
  ChildPlan::Report* Report() {
    if (report_ == nullptr) {
      void* page = mmap(nullptr, sizeof(ChildPlan::Report), PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
      if (page == MAP_FAILED) return nullptr;
      report_ = static_cast<ChildPlan::Report*>(page);
    }
    *report_ = {};
    return report_;
  }
  // Top of a stack of at least `need` bytes; null if it cannot be mapped.
  void* Top(size_t need) {
    static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    need = (need + page - 1) / page * page + page;
    if (need > size_) {
      if (base_ != nullptr) munmap(base_, size_);
      base_ = mmap(nullptr, need, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
      if (base_ == MAP_FAILED) {
        base_ = nullptr;
        size_ = 0;
        return nullptr;
      }
      size_ = need;
      mprotect(base_, page, PROT_NONE);
    }
    return static_cast<char*>(base_) + size_;
  }

 private:
  void* base_ = nullptr;
  size_t size_ = 0;
  ChildPlan::Report* report_ = nullptr;
};

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__) || \
    defined(LANEGUARD_SPAWN_COPIES_MEMORY)
// The sanitizers keep per-thread state that a child running in our memory would change under the
// suspended parent thread: there the child gets a copy of our memory (fork's cost; CLONE_VFORK
// still resumes us only after its exec).
constexpr int kShareMemory = 0;
#else
constexpr int kShareMemory = CLONE_VM;
#endif

// Starts the child: clone(CLONE_VM | CLONE_VFORK), so nothing of our memory is copied (a fork of
// a large laneguard copied its page tables, and the child's ru_maxrss counted our memory), and
// this thread resumes once the child has exec'ed or failed. CLONE_PIDFD gives the pidfd with no
// window for the pid to be reused. Returns the pid, or -errno.
pid_t Spawn(ChildPlan& plan, int* pidfd) {
  thread_local ChildStack stack;
  size_t argc = 0;
  while (plan.argv[argc] != nullptr) ++argc;
  // execvpe needs room for PATH + name and, for a script, a copy of argv.
  void* top = stack.Top(std::max(size_t{256} << 10, (argc + 3) * sizeof(char*) * 2 + (64 << 10)));
  plan.report = stack.Report();
  if (top == nullptr || plan.report == nullptr) return -errno;
  // All signals blocked (glibc's internal ones too, hence the raw call): no handler of ours may
  // run in the child before it resets them.
  uint64_t all = ~uint64_t{0}, old = 0;
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, sizeof all);
  const pid_t pid =
      clone(ChildMain, top, kShareMemory | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &plan, pidfd);
  const int clone_errno = errno;
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, nullptr, sizeof old);
  plan.error = plan.report->error;
  plan.chdir_failed = plan.report->chdir_failed;
  return pid < 0 ? -clone_errno : pid;
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
// every path. The child takes it before exec too, so the command never reads the terminal before
// it owns it.
class TerminalLease {
 public:
  TerminalLease(bool active, pid_t child) : active_(active), child_(child) {
    if (active_) SetTerminalGroup(child);
  }
  // Only from the command's group: after Ctrl-Z and `bg` the shell holds the terminal, and taking
  // it from the shell at its prompt would make its next read fail.
  ~TerminalLease() {
    if (active_ && tcgetpgrp(STDIN_FILENO) == child_) SetTerminalGroup(getpgrp());
  }
  TerminalLease(const TerminalLease&) = delete;
  TerminalLease& operator=(const TerminalLease&) = delete;

 private:
  bool active_;
  pid_t child_;
};

// `traceparent` (when not empty) is set as TRACEPARENT over the inherited and env's.
std::vector<std::string> BuildEnvironment(const ProcessSpec& spec, const std::string& traceparent) {
  std::vector<std::string> env;
  const auto overridden = [&](std::string_view name) {
    if (!traceparent.empty() && name == "TRACEPARENT") return true;
    for (const auto& [key, value] : spec.env)
      if (key == name) return true;
    return false;
  };
  if (!spec.clear_env) {
    for (char** e = environ; *e != nullptr; ++e) {
      std::string_view entry(*e);
      if (!overridden(entry.substr(0, entry.find('=')))) env.emplace_back(entry);
    }
  }
  for (const auto& [key, value] : spec.env)
    if (traceparent.empty() || key != "TRACEPARENT") env.push_back(key + "=" + value);
  if (!traceparent.empty()) env.push_back("TRACEPARENT=" + traceparent);
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

// A string for a message, with NUL bytes shown as \0 and cut at 80 characters.
std::string Printable(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 80)) out += c == '\0' ? std::string("\\0") : std::string(1, c);
  if (text.size() > 80) out += "...";
  return out;
}

// Why the spec cannot run, or "". A NUL would end the string the kernel sees there: `tr\0ue`
// would run `tr`.
std::string SpecError(const ProcessSpec& spec) {
  if (spec.argv.empty()) return "argv is empty";
  if (spec.use_shell && spec.argv.size() != 1)
    return "use_shell needs exactly one command string, got " + std::to_string(spec.argv.size());
  for (size_t i = 0; i < spec.argv.size(); ++i)
    if (spec.argv[i].find('\0') != std::string::npos)
      return "argv[" + std::to_string(i) + "] contains a NUL byte: '" + Printable(spec.argv[i]) +
             "'";
  for (const auto& [key, value] : spec.env) {
    if (key.find('\0') != std::string::npos)
      return "env key '" + Printable(key) + "' contains a NUL byte";
    if (value.find('\0') != std::string::npos)
      return "env key '" + Printable(key) + "': its value contains a NUL byte";
  }
  if (spec.cwd.find('\0') != std::string::npos)
    return "cwd contains a NUL byte: '" + Printable(spec.cwd) + "'";
  if (spec.max_rss_mb && (*spec.max_rss_mb <= 0 || *spec.max_rss_mb > kMaxRssMbLimit))
    return "max_rss_mb: " + std::to_string(*spec.max_rss_mb) + " must be within [1, " +
           std::to_string(kMaxRssMbLimit) + "]";
  struct sigaction chld {};
  sigaction(SIGCHLD, nullptr, &chld);
  if (chld.sa_handler == SIG_IGN || (chld.sa_flags & SA_NOCLDWAIT) != 0) {
    // The kernel would reap the child itself: no exit status, and its pid could be reused while
    // we still signal it.
    return "SIGCHLD is ignored in this process (SIG_IGN or SA_NOCLDWAIT), so a child's exit "
           "status cannot be collected; restore its default disposition";
  }
  return "";
}

// The argv and environment as exec takes them, built before the child exists.
struct Command {
  std::vector<std::string> args;
  std::string program;
  std::vector<char*> argv;
  std::vector<std::string> env_strings;
  std::vector<char*> envp;
};

void PrepareCommand(const ProcessSpec& spec, const std::string& traceparent, Command* c) {
  c->args = spec.use_shell ? std::vector<std::string>{"/bin/sh", "-c", spec.argv[0]} : spec.argv;
  c->program = ProgramToExec(c->args[0], spec);
  c->argv.reserve(c->args.size() + 1);
  for (std::string& a : c->args) c->argv.push_back(a.data());
  c->argv.push_back(nullptr);
  c->env_strings = BuildEnvironment(spec, traceparent);
  c->envp.reserve(c->env_strings.size() + 1);
  for (std::string& e : c->env_strings) c->envp.push_back(e.data());
  c->envp.push_back(nullptr);
}

// One captured stream: its head or its tail, at most `cap` bytes; the rest counted as dropped.
class Capture {
 public:
  Capture(ProcessSpec::Keep keep, size_t cap) : keep_(keep), cap_(cap) {}
  void Add(const char* p, size_t n, uint64_t* dropped) {
    if (keep_ == ProcessSpec::Keep::kHead || cap_ == 0) {
      const size_t keep = std::min(n, cap_ - std::min(cap_, data_.size()));
      data_.append(p, keep);
      *dropped += n - keep;
      return;
    }
    if (n >= cap_) {  // this chunk alone fills the ring: everything before it goes
      *dropped += data_.size() + (n - cap_);
      data_.assign(p + (n - cap_), cap_);
      start_ = 0;
      return;
    }
    const size_t fill = std::min(n, cap_ - data_.size());  // not yet full: append
    data_.append(p, fill);
    p += fill;
    n -= fill;
    *dropped += n;  // the oldest n bytes are overwritten
    while (n > 0) {
      const size_t k = std::min(n, cap_ - start_);
      std::memcpy(data_.data() + start_, p, k);
      start_ = (start_ + k) % cap_;
      p += k;
      n -= k;
    }
  }
  std::string Take() {
    std::rotate(data_.begin(), data_.begin() + static_cast<std::ptrdiff_t>(start_), data_.end());
    start_ = 0;
    return std::move(data_);
  }

 private:
  ProcessSpec::Keep keep_;
  size_t cap_;
  std::string data_;
  size_t start_ = 0;  // the oldest byte, once the ring is full
};

// Reads what is available into `into`. False at EOF.
bool Drain(int fd, Capture* into, uint64_t* dropped) {
  char buf[65536];
  const ssize_t n = read(fd, buf, sizeof buf);
  if (n == 0) return false;
  if (n < 0) return errno == EINTR || errno == EAGAIN;
  into->Add(buf, static_cast<size_t>(n), dropped);
  return true;
}

bool OutOfResources(int error) { return error == EMFILE || error == ENFILE || error == EAGAIN; }

// Runs `attempt` (0 or an errno) again while it fails for want of descriptors or processes, which
// running calls give back as they end: back-pressure, up to `bound`, not a failure.
template <typename Attempt>
int RetryWhileOutOfResources(Attempt attempt, std::chrono::milliseconds bound,
                             const std::stop_token& cancel) {
  const auto give_up = std::chrono::steady_clock::now() + bound;
  auto pause = std::chrono::microseconds(500);
  for (;;) {
    const int error = attempt();
    if (!OutOfResources(error) || cancel.stop_requested() ||
        std::chrono::steady_clock::now() >= give_up)
      return error;
    std::this_thread::sleep_for(pause);
    pause = std::min<std::chrono::microseconds>(pause * 2, std::chrono::milliseconds(50));
  }
}

// The descriptors one call holds while it runs.
struct CallFds {
  Pipe out, err;
  int cancel = -1;
  int pidfd = -1;
  ~CallFds() { Close(); }
  void Close() {
    out.Close();
    err.Close();
    for (int* fd : {&cancel, &pidfd}) {
      if (*fd >= 0) close(*fd);
      *fd = -1;
    }
  }
  int Open(bool capture) {
    if (cancel < 0 && (cancel = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) return errno;
    if (!capture) return 0;
    if (out.read < 0 && out.Open() != 0) return errno;
    if (err.read < 0 && err.Open() != 0) return errno;
    return 0;
  }
};

// The two captured streams while the program runs.
struct Outputs {
  Capture out, err;
  int out_fd = -1, err_fd = -1;  // -1 once at EOF (or never opened)
  uint64_t dropped = 0;

  bool open() const { return out_fd >= 0 || err_fd >= 0; }
  void Read(short out_events, short err_events) {
    if (out_fd >= 0 && (out_events & (POLLIN | POLLHUP)) && !Drain(out_fd, &out, &dropped))
      out_fd = -1;
    if (err_fd >= 0 && (err_events & (POLLIN | POLLHUP)) && !Drain(err_fd, &err, &dropped))
      err_fd = -1;
  }
  // After the exit. Without a cgroup, a setsid() grandchild may still hold the pipes: read what
  // is there for at most 100 ms, not until EOF.
  void Finish(const Clock& clock) {
    const int64_t until = clock.MonotonicNanos() + 100 * 1000000LL;
    while (open() && clock.MonotonicNanos() < until) {
      pollfd pfds[2] = {{out_fd, POLLIN, 0}, {err_fd, POLLIN, 0}};
      if (poll(pfds, 2, 10) > 0) Read(pfds[0].revents, pfds[1].revents);
    }
  }
};

// How the owner thread watches the program until it exits.
struct WatchPlan {
  pid_t pid = -1;
  std::optional<int64_t> limit_bytes;
  bool enforce_by_sampling = false;  // no memory cgroup enforces the limit: the sampler does
  bool sample_peak = false;          // no memory cgroup keeps the peak: sample it
  bool follow_stops = false;         // a foreground child: Ctrl-Z stops us too
  int64_t sample_every = 0, grace = 0;
};

// What the owner thread saw while it watched.
struct Watch {
  bool cancelled = false;
  int64_t cancel_kill_at = 0;  // when the cancelled tree gets SIGKILL; 0: none pending
  bool sampler_killed = false;
  int64_t sampled_peak = 0;
  int64_t next_sample = 0;
};

// A foreground child stopped (Ctrl-Z): do what a shell job does, stop ourselves with the terminal
// taken back, so the user gets the prompt; once continued, hand the terminal back if we have it
// (fg) and continue the child.
void FollowStoppedChild(Tree& tree) {
  siginfo_t info{};
  if (waitid(P_PIDFD, static_cast<id_t>(tree.pidfd), &info, WSTOPPED | WNOHANG) != 0 ||
      info.si_pid == 0 || info.si_code != CLD_STOPPED)
    return;
  {
    internal::MutexLock lock(tree.mu);
    tree.last_stop_signal = info.si_status;
  }
  SetTerminalGroup(getpgrp());
  // SIGTSTP, not SIGSTOP: in an orphaned process group (no shell to continue us) the kernel
  // discards it, and we carry on at once. raise() delivers it to this thread, so we stop here.
  sigset_t tstp, old;
  sigemptyset(&tstp);
  sigaddset(&tstp, SIGTSTP);
  pthread_sigmask(SIG_UNBLOCK, &tstp, &old);
  raise(SIGTSTP);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (tcgetpgrp(STDIN_FILENO) == getpgrp()) SetTerminalGroup(tree.pid);  // fg, not bg
  internal::MutexLock lock(tree.mu);
  tree.SignalGroup(SIGCONT);
}

// Milliseconds for poll() until the next thing the watch must do (-1: nothing but events).
int PollTimeoutMs(const WatchPlan& plan, const Watch& watch, int64_t now) {
  constexpr int kStopCheckMs = 50;  // a foreground child's Ctrl-Z is looked for this often
  int64_t wake = -1;
  if (plan.enforce_by_sampling || plan.sample_peak) wake = watch.next_sample;
  if (watch.cancel_kill_at > 0 && (wake < 0 || watch.cancel_kill_at < wake))
    wake = watch.cancel_kill_at;
  int timeout_ms =
      wake < 0 ? -1 : static_cast<int>(std::max<int64_t>(0, (wake - now + 999999) / 1000000));
  if (plan.follow_stops && (timeout_ms < 0 || timeout_ms > kStopCheckMs)) timeout_ms = kStopCheckMs;
  return timeout_ms;
}

// One memory sample: the peak so far, and the sampler's kill when the tree is over its limit.
void SampleMemory(const WatchPlan& plan, Tree& tree, Watch* watch) {
  const int64_t rss = plan.enforce_by_sampling ? GroupRssBytes(plan.pid) : 0;
  watch->sampled_peak = std::max({watch->sampled_peak, rss, ProgramPeakBytes(plan.pid)});
  if (plan.enforce_by_sampling && rss > *plan.limit_bytes && !watch->sampler_killed) {
    watch->sampler_killed = true;
    internal::MutexLock lock(tree.mu);
    tree.KillAll();
  }
}

// Waits for the direct child to exit, reading its output, sampling memory, following a stopped
// foreground child and escalating a cancel (SIGTERM and SIGCONT, SIGKILL after the grace).
void WaitForExit(const WatchPlan& plan, const Clock& clock, int cancel_fd, Tree& tree,
                 Outputs* outputs, Watch* watch) {
  for (;;) {
    pollfd pfds[4] = {{tree.pidfd, POLLIN, 0},
                      {cancel_fd, POLLIN, 0},
                      {outputs->out_fd, POLLIN, 0},
                      {outputs->err_fd, POLLIN, 0}};
    if (poll(pfds, 4, PollTimeoutMs(plan, *watch, clock.MonotonicNanos())) < 0 && errno != EINTR)
      return;
    outputs->Read(pfds[2].revents, pfds[3].revents);
    if (pfds[1].revents & POLLIN) {
      uint64_t count = 0;
      if (read(cancel_fd, &count, sizeof count) < 0) {
      }
      if (!watch->cancelled) {
        watch->cancelled = true;
        watch->cancel_kill_at = clock.MonotonicNanos() + plan.grace;
        internal::MutexLock lock(tree.mu);
        tree.Terminate();
      }
    }
    if (pfds[0].revents & POLLIN) return;
    if (plan.follow_stops) FollowStoppedChild(tree);
    const int64_t now = clock.MonotonicNanos();
    if (watch->cancel_kill_at > 0 && now >= watch->cancel_kill_at) {
      watch->cancel_kill_at = 0;
      internal::MutexLock lock(tree.mu);
      tree.KillAll();
    }
    if ((plan.enforce_by_sampling || plan.sample_peak) && now >= watch->next_sample) {
      watch->next_sample = now + plan.sample_every;
      SampleMemory(plan, tree, watch);
    }
  }
}

// The outcome, from the exit status and what happened on the way. The memory kill comes first
// (it is why the program got SIGKILL), then our cancel, then the timeout.
void Classify(int wstatus, const Watch& watch, ProcessResult* result) {
  if (WIFEXITED(wstatus)) result->exit_code = WEXITSTATUS(wstatus);
  if (WIFSIGNALED(wstatus)) result->term_signal = WTERMSIG(wstatus);
  if (result->oom_killed || watch.sampler_killed) {
    result->outcome = ProcessOutcome::kMemoryKilled;
  } else if (watch.cancelled) {
    result->outcome = ProcessOutcome::kCancelled;
  } else if (result->timeout_phase != TimeoutPhase::kNone) {
    result->outcome = ProcessOutcome::kTimedOut;
  } else if (WIFSIGNALED(wstatus)) {
    result->outcome = ProcessOutcome::kSignaled;
  } else {
    result->outcome = ProcessOutcome::kExited;
  }
}

void LogFinished(JsonLogger* log, std::string_view task_id, const ProcessResult& result) {
  const LogLevel level = result.success() ? LogLevel::kDebug : LogLevel::kWarning;
  if (log == nullptr || !log->Enabled(level)) return;
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

// The child's plan for `command`, except the descriptors made per attempt.
ChildPlan MakePlan(Command& command, const ProcessSpec& spec, int null_fd) {
  ChildPlan plan;
  plan.file = command.program.c_str();
  plan.argv = command.argv.data();
  plan.envp = command.envp.data();
  plan.cwd = spec.cwd.empty() ? nullptr : spec.cwd.c_str();
  plan.parent = getpid();
  plan.take_terminal = spec.foreground_terminal && !spec.stdin_null && isatty(STDIN_FILENO) != 0 &&
                       tcgetpgrp(STDIN_FILENO) == getpgrp();
  plan.in_fd = spec.stdin_null ? null_fd : -1;
  plan.nofile_soft = g_original_nofile.load(std::memory_order_relaxed);
  return plan;
}

}  // namespace

uint64_t RaiseOpenFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    const rlim_t original = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &limit) == 0) {
      int64_t expected = -1;
      g_original_nofile.compare_exchange_strong(expected, static_cast<int64_t>(original));
    }
    getrlimit(RLIMIT_NOFILE, &limit);
  }
  return limit.rlim_cur;
}

ProcessRunner::ProcessRunner(WorkerCalls& calls, ProcessRunnerOptions options)
    : calls_(calls), options_(options) {
  if (options_.use_cgroups)
    isolation_ = DetectIsolation();
  else
    isolation_.detail = "memory limits: rss_sampling; tree kill: process_group (cgroups off)";
  cgroups_ = std::make_unique<internal::CgroupPool>(options_.use_cgroups ? isolation_
                                                                         : IsolationSupport{});
  null_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (JsonLogger* log = calls_.logger()) {
    log->LogInfo("Process isolation", {{"memoryMechanism", ToString(isolation_.memory)},
                                       {"killMechanism", ToString(isolation_.kill)},
                                       {"detail", isolation_.detail}});
    if (!isolation_.cleaned.empty())
      log->LogWarning("Leftovers of dead laneguard processes cleaned up",
                      {{"detail", isolation_.cleaned.Describe()},
                       {"cgroups", int64_t{isolation_.cleaned.cgroups_removed +
                                           isolation_.cleaned.cgroups_not_removed}},
                       {"processesKilled", int64_t{isolation_.cleaned.processes_killed}}});
  }
}

ProcessRunner::~ProcessRunner() {
  if (null_fd_ >= 0) close(null_fd_);
}

Result<ProcessResult> ProcessRunner::Run(std::string_view task_id, const ProcessSpec& spec,
                                         const CallOptions& options,
                                         const std::stop_token& cancel) {
  auto slot =
      calls_.manager().TryAcquire(task_id, options.lane, options.timeout_ms, options.metadata);
  // A refusal reaches the manager's observers (log line, counters) like any other.
  if (!slot.ok()) return slot.error();
  return RunWithSlot(std::move(slot).value(), task_id, spec, options, cancel);
}

namespace internal {
namespace {

// A cgroup of the pool, held for one call and given back on every way out.
struct CgroupLease {
  explicit CgroupLease(CgroupPool& p) : pool(p) {}
  CgroupPool& pool;
  std::unique_ptr<CallCgroup> cgroup;
  CgroupLease(const CgroupLease&) = delete;
  CgroupLease& operator=(const CgroupLease&) = delete;
  ~CgroupLease() { pool.Release(std::move(cgroup)); }
};

}  // namespace

// One run of a program under a worker call's slot and span, in the order it happens: prepare what
// to run, start it (waiting while out of descriptors or processes), arm the timeouts and the
// cancel, watch it until it exits, settle what it left behind, say what happened.
//
// It is the slot's TimeoutHandler while the program runs: at the timeout the process group gets
// SIGTERM and SIGCONT, at the hard deadline the whole tree SIGKILL, each after the call guard's
// own handler has put the timeout event on the span.
//
// Thread safety: owned by the thread that calls Run(), which is the thread that started the
// program (PR_SET_PDEATHSIG) and waits for it. OnWarning and OnEscalation run on the manager's
// timer thread and share only tree_ (under its mutex) and the span (under its own lock) with it.
class ProcessRun final : public TimeoutHandler {
 public:
  ProcessRun(ProcessRunner& runner, std::string_view task_id, const ProcessSpec& spec,
             const CallOptions& options, const std::stop_token& cancel, Slot slot)
      : runner_(runner),
        task_id_(task_id),
        spec_(spec),
        cancel_(cancel),
        grant_(slot.start_mono_nanos()),
        wait_nanos_(slot.wait_nanos()),
        clock_(runner.calls_.manager().clock()),
        lease_(*runner.cgroups_),
        guard_(runner.calls_, task_id, options, std::move(slot)) {}
  ProcessRun(const ProcessRun&) = delete;
  ProcessRun& operator=(const ProcessRun&) = delete;
  ~ProcessRun() = default;

  // Runs the program to its end and settles the slot with the outcome.
  ProcessResult Run();

  void OnWarning() override;
  void OnEscalation() override;

 private:
  // The warning's SIGTERM and SIGCONT, once, from the handler or from ArmTimeouts.
  void TerminateForTimeout();
  // Everything up to the exit status, into result_.
  void Execute();
  // What to run, all of it prepared before the child exists. False: result_.error says why not.
  bool Prepare();
  // Starts the child in a cgroup of the pool (if any) with the descriptors it needs; short of
  // descriptors or processes, waits for running calls to give some back. 0, or the errno.
  int StartWithBackPressure();
  // One attempt of the above. Everything it took goes back before a wait: calls holding part of
  // what they need while waiting for the rest could all wait for each other.
  int TryStart();
  // The mechanisms the run uses, on the result and the span.
  void RecordIsolation();
  std::string StartFailure(int error) const;
  // The child has exited with 127 without exec'ing: reaps it and says why.
  void ReportExecFailure();
  // The timeout phases (this object becomes the slot's handler; a phase that passed while the
  // program was starting acts now) and the caller's cancel, which writes to the cancel eventfd.
  void ArmTimeouts();
  WatchPlan MakeWatchPlan() const;
  // After the direct child exited: kills what it left in its cgroup or group (a call leaves
  // nothing running behind it), collects the output and what the kernel recorded, and reaps.
  // Returns wait4's result; `wstatus`, `usage` and `wait_errno` are its figures.
  pid_t CollectAndReap(int* wstatus, rusage* usage, int* wait_errno);
  // The figures and the outcome, from the exit status and what the watch saw.
  void Conclude(pid_t reaped, int wstatus, const rusage& usage, int wait_errno, const Watch& watch,
                int64_t end, int64_t own_peak_bytes);
  // The outcome's attributes on the span.
  void RecordOutcome();

  ProcessRunner& runner_;
  std::string_view task_id_;
  const ProcessSpec& spec_;
  const std::stop_token& cancel_;
  const int64_t grant_;       // the slot's grant: the timeout counts from it
  const int64_t wait_nanos_;  // how long the slot's request waited in its lane's queue
  const Clock& clock_;
  ProcessResult result_;
  Command command_;
  std::optional<int64_t> limit_bytes_;
  CgroupLease lease_;
  ChildPlan plan_;
  CallFds fds_;
  const char* failed_call_ = "";
  pid_t pid_ = -1;
  int64_t start_ = 0;
  bool had_cgroup_peak_ = false;  // result_.peak_rss_bytes is the memory cgroup's
  Tree tree_;
  // Last, so it is destroyed (the slot released) first: the release waits for a running timeout
  // handler, which uses the members above.
  CallGuard guard_;
};

ProcessResult ProcessRun::Run() {
  Execute();
  RecordOutcome();
  guard_.Settle(result_.success(), result_.ErrorType());
  return std::move(result_);
}

void ProcessRun::Execute() {
  CallContext& context = guard_.context();
  // A slot that waited (Acquire, as `batch` asks) says so on the span: the wait came before it.
  if (wait_nanos_ > 0 && guard_.span().recording()) {
    const int64_t wait_ms = wait_nanos_ / 1000000;
    guard_.span().AddEvent("queued", {{"laneguard.wait_ms", wait_ms}});
    guard_.span().SetAttribute("laneguard.wait_ms", wait_ms);
  }
  result_.call_id = context.call_id();
  if (context.deadline_mono_nanos() > 0)
    result_.timeout_ms = (context.deadline_mono_nanos() - grant_) / 1000000;
  if (!Prepare()) return;
  const int start_error = StartWithBackPressure();
  RecordIsolation();
  if (start_error != 0) {
    result_.error = StartFailure(start_error);
    return;
  }
  fds_.out.CloseWrite();
  fds_.err.CloseWrite();
  // The exec is done (or failed) by now: CLONE_VFORK resumed us only then. Our own peak now is
  // at least what exec recorded into the child's ru_maxrss from the image it replaced.
  rusage own{};
  getrusage(RUSAGE_SELF, &own);
  const int64_t own_peak_bytes = static_cast<int64_t>(own.ru_maxrss) * 1024;
  result_.pid = pid_;
  // Before the exec's result: the child took the terminal before it tried, so a failed exec must
  // hand it back too.
  const TerminalLease terminal(plan_.take_terminal, pid_);
  if (plan_.error != 0) {
    ReportExecFailure();
    return;
  }
  Span& span = guard_.span();
  if (span.recording()) span.AddEvent("process_started", {{"process.pid", int64_t{pid_}}});
  ArmTimeouts();
  // Reset before fds_.cancel is closed: a cancel from another thread must not write to a closed
  // (or reused) descriptor.
  std::optional<std::stop_callback<std::function<void()>>> on_cancel;
  on_cancel.emplace(cancel_, [fd = fds_.cancel] {
    const uint64_t one = 1;
    if (write(fd, &one, sizeof one) < 0) {
    }
  });
  const WatchPlan watch_plan = MakeWatchPlan();
  Watch watch;
  watch.next_sample = start_ + watch_plan.sample_every;
  Outputs outputs{Capture(spec_.stdout_keep, spec_.max_capture_bytes),
                  Capture(spec_.stderr_keep, spec_.max_capture_bytes), fds_.out.read,
                  fds_.err.read};
  WaitForExit(watch_plan, clock_, fds_.cancel, tree_, &outputs, &watch);
  const int64_t end = clock_.MonotonicNanos();
  {
    MutexLock lock(tree_.mu);
    tree_.KillAll();
  }
  outputs.Finish(clock_);
  result_.stdout_data = outputs.out.Take();
  result_.stderr_data = outputs.err.Take();
  result_.dropped_output_bytes = outputs.dropped;
  int wstatus = 0;
  int wait_errno = 0;
  rusage usage{};
  const pid_t reaped = CollectAndReap(&wstatus, &usage, &wait_errno);
  on_cancel.reset();
  Conclude(reaped, wstatus, usage, wait_errno, watch, end, own_peak_bytes);
}

bool ProcessRun::Prepare() {
  if (std::string error = SpecError(spec_); !error.empty()) {
    result_.error = std::move(error);
    return false;
  }
  std::string traceparent;
  if (spec_.traceparent_env && guard_.span().context().valid())
    traceparent = FormatTraceparent(guard_.span().context());
  PrepareCommand(spec_, traceparent, &command_);
  if (spec_.max_rss_mb) limit_bytes_ = *spec_.max_rss_mb << 20;
  if (spec_.stdin_null && runner_.null_fd_ < 0) {
    result_.error = SystemError("/dev/null", EBADF);
    return false;
  }
  plan_ = MakePlan(command_, spec_, runner_.null_fd_);
  return true;
}

int ProcessRun::StartWithBackPressure() {
  return RetryWhileOutOfResources([this] { return TryStart(); }, runner_.options_.resource_wait,
                                  cancel_);
}

int ProcessRun::TryStart() {
  CgroupPool& pool = *runner_.cgroups_;
  auto give_back = [&](int error) {
    fds_.Close();
    if (lease_.cgroup != nullptr) pool.Return(std::move(lease_.cgroup));
    return error;
  };
  failed_call_ = "cgroup.procs";
  plan_.cgroup_fds[0] = plan_.cgroup_fds[1] = -1;  // not an earlier attempt's, closed since
  if (pool.enabled()) {
    lease_.cgroup = pool.Acquire(limit_bytes_);
    if (lease_.cgroup == nullptr && OutOfResources(errno)) return give_back(errno);
  }
  failed_call_ = "pipe";
  if (const int error = fds_.Open(spec_.capture_output); error != 0) return give_back(error);
  if (lease_.cgroup != nullptr) {
    plan_.cgroup_fds[0] = lease_.cgroup->v2_procs_fd();
    plan_.cgroup_fds[1] = lease_.cgroup->v1_procs_fd();
  }
  plan_.out_fd = fds_.out.write;
  plan_.err_fd = fds_.err.write;
  plan_.error = 0;
  start_ = clock_.MonotonicNanos();
  pid_ = Spawn(plan_, &fds_.pidfd);
  failed_call_ = "clone";
  return pid_ < 0 ? give_back(-pid_) : 0;
}

void ProcessRun::RecordIsolation() {
  const CallCgroup* cgroup = lease_.cgroup.get();
  result_.memory_mechanism = cgroup != nullptr ? cgroup->memory_mechanism()
                             : limit_bytes_    ? MemoryMechanism::kRssSampling
                                               : MemoryMechanism::kNone;
  result_.kill_mechanism =
      cgroup != nullptr ? cgroup->kill_mechanism() : KillMechanism::kProcessGroup;
  Span& span = guard_.span();
  if (!span.recording()) return;
  span.SetAttribute("process.command", JoinCommand(command_.args));
  span.SetAttribute("laneguard.memory_mechanism", std::string(ToString(result_.memory_mechanism)));
  span.SetAttribute("laneguard.kill_mechanism", std::string(ToString(result_.kill_mechanism)));
  if (limit_bytes_) span.SetAttribute("laneguard.max_rss_mb", *spec_.max_rss_mb);
}

std::string ProcessRun::StartFailure(int error) const {
  std::string message = SystemError(failed_call_, error);
  if (OutOfResources(error) && cancel_.stop_requested())
    message += " (cancelled while waiting for running calls to give some back)";
  else if (OutOfResources(error))
    message += " (still after waiting " + std::to_string(runner_.options_.resource_wait.count()) +
               " ms for running calls to end)";
  return message;
}

void ProcessRun::ReportExecFailure() {
  siginfo_t ignored{};
  waitid(P_PIDFD, static_cast<id_t>(fds_.pidfd), &ignored, WEXITED);
  result_.error =
      plan_.chdir_failed
          ? SystemError("cwd '" + spec_.cwd + "'", plan_.error)
          : SystemError("'" + command_.args[0] + "'", plan_.error) +
                (command_.program.empty() ? " (searched the PATH of its environment)" : "");
}

void ProcessRun::ArmTimeouts() {
  tree_.pid = pid_;
  tree_.pidfd = fds_.pidfd;
  {
    MutexLock lock(tree_.mu);
    tree_.cgroup = lease_.cgroup.get();
  }
  guard_.SetTimeoutHandler(this);
  // The timer reports each phase once, to the handler installed then: a phase that passed while
  // the program was starting (the call guard heard of it) acts now.
  CallContext& context = guard_.context();
  if (context.stop_token().stop_requested()) TerminateForTimeout();
  if (clock_.MonotonicNanos() >= context.hard_deadline_mono_nanos()) {
    MutexLock lock(tree_.mu);
    tree_.phase = TimeoutPhase::kEscalation;
    tree_.KillAll();
  }
}

void ProcessRun::OnWarning() {
  guard_.OnWarning();
  TerminateForTimeout();
}

void ProcessRun::TerminateForTimeout() {
  MutexLock lock(tree_.mu);
  if (tree_.reaped || tree_.warned) return;
  tree_.warned = true;
  if (tree_.phase == TimeoutPhase::kNone) tree_.phase = TimeoutPhase::kWarning;
  tree_.Terminate();
  Span& span = guard_.span();
  if (span.recording()) span.AddEvent("signal_sent", {{"signal", std::string("SIGTERM")}});
}

void ProcessRun::OnEscalation() {
  guard_.OnEscalation();
  MutexLock lock(tree_.mu);
  if (tree_.reaped) return;
  tree_.phase = TimeoutPhase::kEscalation;
  tree_.stopped_at_deadline = tree_.StopSignal();
  tree_.KillAll();
  Span& span = guard_.span();
  if (span.recording()) span.AddEvent("signal_sent", {{"signal", std::string("SIGKILL")}});
}

WatchPlan ProcessRun::MakeWatchPlan() const {
  const CallCgroup* cgroup = lease_.cgroup.get();
  WatchPlan plan;
  plan.pid = pid_;
  plan.limit_bytes = limit_bytes_;
  plan.enforce_by_sampling =
      limit_bytes_ && result_.memory_mechanism == MemoryMechanism::kRssSampling;
  // Without a memory cgroup the peak is sampled too (the kernel's ru_maxrss may be ours).
  plan.sample_peak = cgroup == nullptr || !cgroup->CountsMemory();
  plan.follow_stops = plan_.take_terminal;
  plan.sample_every = runner_.options_.memory_sample_interval.count() * 1000000;
  plan.grace = runner_.options_.cancel_grace.count() * 1000000;
  return plan;
}

pid_t ProcessRun::CollectAndReap(int* wstatus, rusage* usage, int* wait_errno) {
  CallCgroup* cgroup = lease_.cgroup.get();
  std::optional<int64_t> cgroup_peak;
  if (cgroup != nullptr) {
    result_.oom_killed = limit_bytes_ && cgroup->OomKills() > 0;
    cgroup_peak = cgroup->PeakBytes();
  }
  pid_t reaped = -1;
  {
    // Reap under the lock, so no handler signals a pid that may be reused from here on.
    MutexLock lock(tree_.mu);
    tree_.reaped = true;
    tree_.cgroup = nullptr;
    result_.timeout_phase = tree_.phase;
    result_.stopped_by_signal =
        tree_.phase == TimeoutPhase::kEscalation ? tree_.stopped_at_deadline : 0;
    while ((reaped = wait4(pid_, wstatus, 0, usage)) < 0 && errno == EINTR) {
    }
  }
  *wait_errno = errno;
  lease_.pool.Release(std::move(lease_.cgroup));
  had_cgroup_peak_ = cgroup_peak.has_value();
  if (cgroup_peak) result_.peak_rss_bytes = *cgroup_peak;
  return reaped;
}

void ProcessRun::Conclude(pid_t reaped, int wstatus, const rusage& usage, int wait_errno,
                          const Watch& watch, int64_t end, int64_t own_peak_bytes) {
  result_.duration_ms = static_cast<double>(end - start_) / 1e6;
  result_.since_grant_ms = static_cast<double>(end - grant_) / 1e6;
  // ru_maxrss counts the image exec replaced, which for our child was our own memory: it says
  // something about the program only when it is above our own peak. A memory cgroup's peak,
  // when there was one, is already in the result.
  const int64_t kernel_peak = static_cast<int64_t>(usage.ru_maxrss) * 1024;
  const int64_t trusted_kernel_peak = kernel_peak > own_peak_bytes ? kernel_peak : 0;
  if (!had_cgroup_peak_) result_.peak_rss_bytes = std::max(watch.sampled_peak, trusted_kernel_peak);
  if (reaped < 0) {
    // Someone else collected the status (SIGCHLD ignored since the check above, or a stray
    // waitpid(-1)): we cannot say how the program ended, so say that rather than "exited 0".
    result_.outcome = ProcessOutcome::kSpawnFailed;
    result_.error = "the exit status was lost (" + SystemError("wait4", wait_errno) + ")";
    return;
  }
  Classify(wstatus, watch, &result_);
  LogFinished(runner_.calls_.logger(), task_id_, result_);
}

void ProcessRun::RecordOutcome() {
  Span& span = guard_.span();
  if (!span.recording()) return;
  span.SetAttribute("laneguard.outcome", std::string(ToString(result_.outcome)));
  span.SetAttribute("process.exit_code", int64_t{result_.exit_code});
  if (result_.term_signal != 0) span.SetAttribute("process.signal", int64_t{result_.term_signal});
  span.SetAttribute("laneguard.peak_rss_bytes", result_.peak_rss_bytes);
  span.SetAttribute("laneguard.oom_killed", result_.oom_killed);
  span.SetAttribute("laneguard.timeout_phase", std::string(ToString(result_.timeout_phase)));
}

}  // namespace internal

ProcessResult ProcessRunner::RunWithSlot(Slot slot, std::string_view task_id,
                                         const ProcessSpec& spec, const CallOptions& options,
                                         const std::stop_token& cancel) {
  if (!slot.valid()) {
    ProcessResult refused;
    refused.error = "RunWithSlot needs a valid slot (this one was released or moved from)";
    return refused;
  }
  internal::ProcessRun run(*this, task_id, spec, options, cancel, std::move(slot));
  return run.Run();
}

}  // namespace laneguard
