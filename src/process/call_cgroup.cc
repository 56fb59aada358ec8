#include "process/call_cgroup.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <thread>

#include "base/cgroup_paths.h"

namespace laneguard {
namespace internal {
namespace {

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

// Makes `parent`/`name`; "" when that is not possible here. An existing directory is never
// adopted (its processes are someone else's): it is removed if empty (a leftover), else skipped.
std::string MakeDir(const std::string& parent, const std::string& name) {
  if (parent.empty()) return {};
  std::string dir = parent + "/" + name;
  if (mkdir(dir.c_str(), 0755) == 0) return dir;
  if (errno == EEXIST && rmdir(dir.c_str()) == 0 && mkdir(dir.c_str(), 0755) == 0) return dir;
  return {};
}

// Kills what a listed-pids cgroup holds (v1, or v2 without cgroup.kill), `rounds` times over.
// Returns how many pids it signalled.
int KillListed(const std::string& procs, int rounds) {
  int signalled = 0;
  for (int round = 0; round < rounds; ++round) {
    std::istringstream in(ReadSmallFile(procs));
    bool any = false;
    for (long pid = 0; in >> pid;) {
      if (pid > 0 && kill(static_cast<pid_t>(pid), SIGKILL) == 0) ++signalled;
      any = true;
    }
    if (!any) break;
  }
  return signalled;
}

int CountListed(const std::string& procs) {
  std::istringstream in(ReadSmallFile(procs));
  int count = 0;
  for (long pid = 0; in >> pid;) ++count;
  return count;
}

// The pid in a per-call cgroup's name ("laneguard-<pid>-<n>", or a probe's), 0 for other names.
long OwnerPid(const char* name) {
  long pid = 0;
  if (std::sscanf(name, "laneguard-probe-%ld", &pid) == 1) return pid;
  if (std::sscanf(name, "laneguard-%ld-", &pid) == 1) return pid;
  return 0;
}

// Per-call cgroups of laneguard processes that died without removing them (SIGKILL, a crash):
// what is still in them is an orphan of that process, so it is killed, and the directory removed.
void RemoveStaleCgroups(const std::string& parent, LeftoverCleanup* report) {
  if (parent.empty()) return;
  DIR* d = opendir(parent.c_str());
  if (d == nullptr) return;
  // readdir is unsafe only on a DIR shared between threads; this one is local.
  while (dirent* entry = readdir(d)) {  // NOLINT(concurrency-mt-unsafe)
    const long pid = OwnerPid(entry->d_name);
    if (pid <= 0 || pid == getpid() || kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH)
      continue;
    const std::string dir = parent + "/" + entry->d_name;
    const int running = CountListed(dir + "/cgroup.procs");
    if (Exists(dir + "/cgroup.kill"))
      WriteSmallFile(dir + "/cgroup.kill", "1");
    else
      KillListed(dir + "/cgroup.procs", 3);
    report->processes_killed += running;
    // Killed processes leave the cgroup once torn down: wait a little (bounded: 200 ms).
    for (int i = 0; i < 200 && CountListed(dir + "/cgroup.procs") > 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (rmdir(dir.c_str()) == 0)
      ++report->cgroups_removed;
    else
      ++report->cgroups_not_removed;  // next time
    auto& pids = report->dead_laneguard_pids;
    if (std::find(pids.begin(), pids.end(), pid) == pids.end()) pids.push_back(pid);
  }
  closedir(d);
}

// "key value" lines (memory.events, memory.oom_control).
int64_t ReadKeyedNumber(const std::string& path, const std::string& key) {
  std::istringstream in(ReadSmallFile(path));
  std::string k;
  int64_t v = 0;
  while (in >> k >> v)
    if (k == key) return v;
  return 0;
}

int64_t ReadNumber(const std::string& path) {
  return static_cast<int64_t>(ReadNumberFile(path).value_or(0));
}

// A number read from an open control file (from its start: cgroup files regenerate on each read).
std::optional<int64_t> PreadNumber(int fd) {
  char buf[32];
  const ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return std::nullopt;
  buf[n] = '\0';
  char* end = nullptr;
  const long long v = std::strtoll(buf, &end, 10);
  if (end == buf) return std::nullopt;
  return static_cast<int64_t>(v);
}

// A reused cgroup keeps what earlier calls left charged (page cache, kernel objects); past this
// it is removed instead, so the baseline subtracted from a call's peak stays small.
constexpr int64_t kMaxReuseBaseline = int64_t{4} << 20;
constexpr size_t kMaxIdle = 256;

// Names the cgroups (laneguard-<pid>-<n>) of every pool in the process: two runners must never
// make the same name, or the second would take over the first's idle (empty) directory.
std::atomic<uint64_t> g_sequence{0};
constexpr int kMaxUses = 10000;

}  // namespace

CallCgroup::~CallCgroup() { CloseFds(); }

void CallCgroup::CloseFds() {
  for (int* fd : {&v2_procs_fd_, &v1_procs_fd_, &v2_peak_fd_}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
}

// memory.peak takes writes (a reset, per open file) only from Linux 6.12; from 5.19 it is
// read-only, and before that it is missing. Neither costs the call its cgroup: read-only, the
// peak is right for a new cgroup (which is then not reused); missing, the peak comes from sampling.
// Only running out of descriptors fails, so that the caller can wait for them.
bool CallCgroup::OpenPeak() {
  if (!v2_memory_) return true;
  v2_peak_fd_ = OpenMemoryPeak(v2_dir_ + "/memory.peak");
  return v2_peak_fd_ >= 0 || (errno != EMFILE && errno != ENFILE);
}

int OpenMemoryPeak(const std::string& path) {
  const int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd >= 0 || errno == EMFILE || errno == ENFILE) return fd;
  return open(path.c_str(), O_RDONLY | O_CLOEXEC);
}

bool CallCgroup::Begin(std::optional<int64_t> limit_bytes) {
  // Opened per call, not kept while idle: a pool of idle cgroups must not hold descriptors that
  // running calls need.
  auto open_file = [](const std::string& dir, const char* name, int flags, int* fd) {
    if (!dir.empty()) *fd = open((dir + name).c_str(), flags | O_CLOEXEC);
    return dir.empty() || *fd >= 0;
  };
  if (!open_file(v2_dir_, "/cgroup.procs", O_WRONLY, &v2_procs_fd_) ||
      !open_file(v1_dir_, "/cgroup.procs", O_WRONLY, &v1_procs_fd_) || !OpenPeak()) {
    const int error = errno;
    CloseFds();
    errno = error;  // EMFILE: the caller may wait for descriptors
    return false;
  }
  ++uses_;
  limited_ = limit_bytes.has_value();
  memory_ = MemoryMechanism::kNone;
  if (limit_bytes && v2_memory_ &&
      WriteSmallFile(v2_dir_ + "/memory.max", std::to_string(*limit_bytes))) {
    // Without this the limit only pushes the tree into swap.
    WriteSmallFile(v2_dir_ + "/memory.swap.max", "0");
    memory_ = MemoryMechanism::kCgroupV2;
  }
  if (limit_bytes && memory_ == MemoryMechanism::kNone && v1_memory_ &&
      WriteSmallFile(v1_dir_ + "/memory.limit_in_bytes", std::to_string(*limit_bytes))) {
    // memsw (memory + swap) exists only with swap accounting; it must not be below the limit.
    WriteSmallFile(v1_dir_ + "/memory.memsw.limit_in_bytes", std::to_string(*limit_bytes));
    memory_ = MemoryMechanism::kCgroupV1;
  }
  if (limit_bytes && memory_ == MemoryMechanism::kNone) memory_ = MemoryMechanism::kRssSampling;
  oom_baseline_ = 0;
  if (limited_) oom_baseline_ = OomKills();  // kills counted before this call
  // Reset the high-water mark to what is charged now (a reused cgroup keeps what earlier calls
  // left charged), and subtract that at the end. v2's reset is per open file (Linux 6.12).
  baseline_bytes_ = 0;
  if (v2_peak_fd_ >= 0) {
    peak_resets_ = pwrite(v2_peak_fd_, "reset\n", 6, 0) > 0;
    if (peak_resets_) baseline_bytes_ = PreadNumber(v2_peak_fd_).value_or(0);
  } else if (v1_memory_ && uses_ > 1) {
    peak_resets_ = WriteSmallFile(v1_dir_ + "/memory.max_usage_in_bytes", "0");
    baseline_bytes_ = ReadNumber(v1_dir_ + "/memory.max_usage_in_bytes");
  }
  // A peak that cannot be reset is right only in a new cgroup: this one is not reused then.
  return true;
}

bool CallCgroup::Kill(int rounds) const {
  if (kill_ == KillMechanism::kCgroupKill) return WriteSmallFile(v2_dir_ + "/cgroup.kill", "1");
  if (!v2_dir_.empty()) KillListed(v2_dir_ + "/cgroup.procs", rounds);  // v2 before Linux 5.14
  if (v1_dir_.empty()) return !v2_dir_.empty();
  // v1 has no cgroup.kill: kill what is listed. A process forking right now may add a pid after
  // the read; the next round gets it. A listed pid is in the cgroup until it is reaped, so a
  // recycled pid could only be hit if the process exited and was reaped between the read and the
  // kill, a window of microseconds; v2's cgroup.kill has none.
  KillListed(v1_dir_ + "/cgroup.procs", rounds);
  return true;
}

bool CallCgroup::Empty() const {
  // A file that cannot be read (out of descriptors) does not say the cgroup is empty.
  auto listed = [](const std::string& procs) {
    const int fd = open(procs.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return true;
    char c = 0;
    const ssize_t n = read(fd, &c, 1);
    close(fd);
    return n != 0;
  };
  if (!v2_dir_.empty() && listed(v2_dir_ + "/cgroup.procs")) return false;
  if (!v1_dir_.empty() && listed(v1_dir_ + "/cgroup.procs")) return false;
  return true;
}

std::optional<int64_t> CallCgroup::PeakBytes() const {
  std::optional<int64_t> peak;
  if (v2_peak_fd_ >= 0)
    peak = PreadNumber(v2_peak_fd_);
  else if (v1_memory_)
    peak = ReadNumberFile(v1_dir_ + "/memory.max_usage_in_bytes");
  if (!peak) return std::nullopt;
  return std::max<int64_t>(0, *peak - baseline_bytes_);
}

int64_t CallCgroup::OomKills() const {
  int64_t kills = 0;
  if (v2_memory_) kills += ReadKeyedNumber(v2_dir_ + "/memory.events", "oom_kill");
  if (v1_memory_) kills += ReadKeyedNumber(v1_dir_ + "/memory.oom_control", "oom_kill");
  return kills - oom_baseline_;
}

int64_t CallCgroup::MemoryInUse() const {
  if (v2_memory_) return ReadNumber(v2_dir_ + "/memory.current");
  if (v1_memory_) return ReadNumber(v1_dir_ + "/memory.usage_in_bytes");
  return 0;
}

CgroupPool::CgroupPool(const IsolationSupport& support) : support_(support) {}

CgroupPool::~CgroupPool() {
  internal::MutexLock lock(mu_);
  for (auto& cgroup : idle_) Remove(std::move(cgroup));
}

std::unique_ptr<CallCgroup> CgroupPool::Make() {
  const std::string name =
      "laneguard-" + std::to_string(getpid()) + "-" + std::to_string(g_sequence.fetch_add(1) + 1);
  std::unique_ptr<CallCgroup> cg(new CallCgroup);
  cg->v2_dir_ = MakeDir(support_.v2_parent, name);
  cg->v1_dir_ = MakeDir(support_.v1_parent, name);
  if (cg->v2_dir_.empty() && cg->v1_dir_.empty()) return nullptr;  // errno from mkdir
  if (!cg->v2_dir_.empty()) {
    // Without cgroup.kill (Linux < 5.14) the v2 cgroup still lists the tree: killed pid by pid.
    cg->kill_ = Exists(cg->v2_dir_ + "/cgroup.kill") ? KillMechanism::kCgroupKill
                                                     : KillMechanism::kCgroupProcs;
    cg->v2_memory_ = Exists(cg->v2_dir_ + "/memory.max");
  }
  if (!cg->v1_dir_.empty()) {
    if (cg->kill_ == KillMechanism::kProcessGroup) cg->kill_ = KillMechanism::kCgroupProcs;
    cg->v1_memory_ = Exists(cg->v1_dir_ + "/memory.limit_in_bytes");
  }
  return cg;
}

std::unique_ptr<CallCgroup> CgroupPool::Acquire(std::optional<int64_t> limit_bytes) {
  if (!enabled()) return nullptr;
  std::unique_ptr<CallCgroup> cg;
  if (!limit_bytes) {
    internal::MutexLock lock(mu_);
    if (!idle_.empty()) {
      cg = std::move(idle_.back());
      idle_.pop_back();
    }
  }
  if (cg == nullptr) cg = Make();
  if (cg == nullptr) return nullptr;
  if (!cg->Begin(limit_bytes)) {
    const int error = errno;
    Return(std::move(cg));
    errno = error;
    return nullptr;
  }
  return cg;
}

void CgroupPool::Return(std::unique_ptr<CallCgroup> cg) {
  cg->CloseFds();
  if (!cg->limited_ && (cg->uses_ == 0 || cg->peak_resets_)) {
    internal::MutexLock lock(mu_);
    if (idle_.size() < kMaxIdle) {
      idle_.push_back(std::move(cg));
      return;
    }
  }
  Remove(std::move(cg));
}

void CgroupPool::Release(std::unique_ptr<CallCgroup> cg) {
  if (cg == nullptr) return;
  // SIGKILLed processes leave the cgroup once the kernel has torn them down (they may still be
  // zombies waiting for a parent elsewhere: those no longer count). Bounded: 2 s.
  bool empty = cg->Empty();
  for (int i = 0; i < 2000 && !empty; ++i) {
    cg->Kill();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    empty = cg->Empty();
  }
  if (empty && cg->uses_ < kMaxUses && cg->MemoryInUse() <= kMaxReuseBaseline) {
    Return(std::move(cg));
    return;
  }
  Remove(std::move(cg));
}

void CgroupPool::Remove(std::unique_ptr<CallCgroup> cg) {
  if (cg == nullptr) return;
  const std::string v2 = cg->v2_dir_, v1 = cg->v1_dir_;
  cg.reset();  // closes its descriptors first
  if (!v2.empty()) rmdir(v2.c_str());
  if (!v1.empty()) rmdir(v1.c_str());
}

}  // namespace internal

std::string LeftoverCleanup::Describe() const {
  if (empty()) return "";
  std::string pids;
  for (int64_t pid : dead_laneguard_pids) pids += (pids.empty() ? "" : ", ") + std::to_string(pid);
  const int total = cgroups_removed + cgroups_not_removed;
  std::string text = "cleaned up after dead laneguard process" +
                     std::string(dead_laneguard_pids.size() == 1 ? " " : "es ") + "(pid" +
                     (dead_laneguard_pids.size() == 1 ? " " : "s ") + pids +
                     "): " + std::to_string(total) + " leftover cgroup" + (total == 1 ? "" : "s") +
                     ", " + std::to_string(processes_killed) + " process" +
                     (processes_killed == 1 ? "" : "es") + " still running in them killed";
  if (cgroups_not_removed > 0)
    text +=
        " (" + std::to_string(cgroups_not_removed) + " not yet removable; the next start retries)";
  return text;
}

LeftoverCleanup CleanUpLeftoverCgroups(const std::vector<std::string>& parents) {
  LeftoverCleanup report;
  for (const std::string& parent : parents) internal::RemoveStaleCgroups(parent, &report);
  return report;
}

LeftoverCleanup CleanUpLeftoverCgroups() {
  const internal::CgroupDirs dirs = internal::FindOwnCgroups();
  return CleanUpLeftoverCgroups({dirs.v2, dirs.v1_memory});
}

IsolationSupport DetectIsolation() {
  IsolationSupport s;
  const internal::CgroupDirs dirs = internal::FindOwnCgroups();
  const LeftoverCleanup cleaned = CleanUpLeftoverCgroups({dirs.v2, dirs.v1_memory});
  const std::string probe = "laneguard-probe-" + std::to_string(getpid());
  std::ostringstream detail;
  if (!dirs.v2.empty()) {
    const std::string dir = internal::MakeDir(dirs.v2, probe);
    if (!dir.empty()) {
      s.v2_parent = dirs.v2;
      if (internal::Exists(dir + "/cgroup.kill")) s.kill = KillMechanism::kCgroupKill;
      if (internal::Exists(dir + "/memory.max")) s.memory = MemoryMechanism::kCgroupV2;
      rmdir(dir.c_str());
    }
  }
  if (!dirs.v1_memory.empty()) {
    const std::string dir = internal::MakeDir(dirs.v1_memory, probe);
    if (!dir.empty()) {
      if (internal::Exists(dir + "/memory.limit_in_bytes")) {
        s.v1_parent = dirs.v1_memory;
        if (s.memory == MemoryMechanism::kRssSampling) s.memory = MemoryMechanism::kCgroupV1;
        if (s.kill == KillMechanism::kProcessGroup) s.kill = KillMechanism::kCgroupProcs;
      }
      rmdir(dir.c_str());
    }
  }
  detail << "memory limits: " << ToString(s.memory) << "; tree kill: " << ToString(s.kill);
  if (!s.v2_parent.empty()) detail << "; v2 cgroups under " << s.v2_parent;
  if (!s.v1_parent.empty()) detail << "; v1 memory cgroups under " << s.v1_parent;
  if (!cleaned.empty()) detail << "; " << cleaned.Describe();
  s.detail = detail.str();
  s.cleaned = cleaned;
  return s;
}

}  // namespace laneguard
