#include "process/call_cgroup.h"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <sstream>
#include <thread>

#include "core/cgroup_paths.h"

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
void KillListed(const std::string& procs, int rounds) {
  for (int round = 0; round < rounds; ++round) {
    std::istringstream in(ReadSmallFile(procs));
    bool any = false;
    for (long pid = 0; in >> pid;) {
      if (pid > 0) kill(static_cast<pid_t>(pid), SIGKILL);
      any = true;
    }
    if (!any) break;
  }
}

// Per-call cgroups of a laneguard process that died without removing them (SIGKILL, a crash):
// what is still in them is an orphan of that process, so it is killed, and the directory removed.
void RemoveStaleCgroups(const std::string& parent) {
  if (parent.empty()) return;
  DIR* d = opendir(parent.c_str());
  if (d == nullptr) return;
  // readdir is unsafe only on a DIR shared between threads; this one is local.
  while (dirent* entry = readdir(d)) {  // NOLINT(concurrency-mt-unsafe)
    long pid = 0;
    if (std::sscanf(entry->d_name, "laneguard-%ld-", &pid) != 1 &&
        std::sscanf(entry->d_name, "laneguard-probe-%ld", &pid) != 1)
      continue;
    if (pid <= 0 || pid == getpid() || kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH)
      continue;
    const std::string dir = parent + "/" + entry->d_name;
    if (access((dir + "/cgroup.kill").c_str(), F_OK) == 0)
      WriteSmallFile(dir + "/cgroup.kill", "1");
    else
      KillListed(dir + "/cgroup.procs", 3);
    rmdir(dir.c_str());  // fails while a killed process is still being torn down: next time
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

}  // namespace

CallCgroup::CallCgroup(const IsolationSupport& support, const std::string& name,
                       std::optional<int64_t> limit_bytes) {
  v2_dir_ = MakeDir(support.v2_parent, name);
  v1_dir_ = MakeDir(support.v1_parent, name);
  if (!v2_dir_.empty()) {
    v2_procs_ = v2_dir_ + "/cgroup.procs";
    // Without cgroup.kill (Linux < 5.14) the v2 cgroup still lists the tree: killed pid by pid.
    kill_ =
        Exists(v2_dir_ + "/cgroup.kill") ? KillMechanism::kCgroupKill : KillMechanism::kCgroupProcs;
    if (limit_bytes && Exists(v2_dir_ + "/memory.max") &&
        WriteSmallFile(v2_dir_ + "/memory.max", std::to_string(*limit_bytes))) {
      // Without this the limit only pushes the tree into swap.
      WriteSmallFile(v2_dir_ + "/memory.swap.max", "0");
      memory_ = MemoryMechanism::kCgroupV2;
    }
  }
  if (!v1_dir_.empty()) {
    v1_procs_ = v1_dir_ + "/cgroup.procs";
    if (kill_ == KillMechanism::kProcessGroup) kill_ = KillMechanism::kCgroupProcs;
    if (limit_bytes && memory_ == MemoryMechanism::kNone &&
        WriteSmallFile(v1_dir_ + "/memory.limit_in_bytes", std::to_string(*limit_bytes))) {
      // memsw (memory + swap) exists only with swap accounting; it must not be below the limit.
      WriteSmallFile(v1_dir_ + "/memory.memsw.limit_in_bytes", std::to_string(*limit_bytes));
      memory_ = MemoryMechanism::kCgroupV1;
    }
  }
  if (limit_bytes && memory_ == MemoryMechanism::kNone) memory_ = MemoryMechanism::kRssSampling;
}

CallCgroup::~CallCgroup() { Remove(); }

bool CallCgroup::Kill(int rounds) const {
  if (kill_ == KillMechanism::kCgroupKill) return WriteSmallFile(v2_dir_ + "/cgroup.kill", "1");
  if (!v2_dir_.empty()) KillListed(v2_procs_, rounds);  // v2 before cgroup.kill (Linux < 5.14)
  if (v1_dir_.empty()) return !v2_dir_.empty();
  // v1 has no cgroup.kill: kill what is listed. A process forking right now may add a pid after
  // the read; the next round gets it. A listed pid is in the cgroup until it is reaped, so a
  // recycled pid could only be hit if the process exited and was reaped between the read and the
  // kill, a window of microseconds; v2's cgroup.kill has none.
  KillListed(v1_procs_, rounds);
  return true;
}

bool CallCgroup::Empty() const {
  if (!v2_dir_.empty() && !ReadSmallFile(v2_procs_).empty()) return false;
  if (!v1_dir_.empty() && !ReadSmallFile(v1_procs_).empty()) return false;
  return true;
}

void CallCgroup::Remove() {
  if (removed_) return;
  removed_ = true;
  if (v2_dir_.empty() && v1_dir_.empty()) return;
  // SIGKILLed processes leave the cgroup once the kernel has torn them down (they may still be
  // zombies waiting for a parent elsewhere: those no longer count). Bounded: 2 s.
  for (int i = 0; i < 2000 && !Empty(); ++i) {
    Kill();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!v2_dir_.empty()) rmdir(v2_dir_.c_str());
  if (!v1_dir_.empty()) rmdir(v1_dir_.c_str());
}

int64_t CallCgroup::PeakBytes() const {
  if (memory_ == MemoryMechanism::kCgroupV2) {
    if (auto peak = ReadNumberFile(v2_dir_ + "/memory.peak")) return static_cast<int64_t>(*peak);
  }
  if (!v1_dir_.empty()) {
    if (auto peak = ReadNumberFile(v1_dir_ + "/memory.max_usage_in_bytes"))
      return static_cast<int64_t>(*peak);
  }
  return 0;
}

int64_t CallCgroup::OomKills() const {
  int64_t kills = 0;
  if (memory_ == MemoryMechanism::kCgroupV2)
    kills += ReadKeyedNumber(v2_dir_ + "/memory.events", "oom_kill");
  if (memory_ == MemoryMechanism::kCgroupV1)
    kills += ReadKeyedNumber(v1_dir_ + "/memory.oom_control", "oom_kill");
  return kills;
}

}  // namespace internal

IsolationSupport DetectIsolation() {
  IsolationSupport s;
  const internal::CgroupDirs dirs = internal::FindOwnCgroups();
  internal::RemoveStaleCgroups(dirs.v2);
  internal::RemoveStaleCgroups(dirs.v1_memory);
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
  s.detail = detail.str();
  return s;
}

}  // namespace laneguard
