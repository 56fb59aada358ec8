// One cgroup (in the v2 tree, the v1 memory hierarchy, or both) per running subprocess call: the
// kernel's record of every process in the call's tree, however it forks or setsid()s, and where
// its memory limit is enforced. Directories are kept in a pool and reused by later calls: making
// and removing a memory cgroup costs about a millisecond, a large share of starting `true`.
//
// Thread safety: CgroupPool is safe to use from many threads. A CallCgroup belongs to the call
// that acquired it, except Kill(), which may run on the manager's timer thread while the owning
// thread waits; Kill() only reads what is fixed while the call holds the cgroup.
#ifndef LANEGUARD_SRC_PROCESS_CALL_CGROUP_H_
#define LANEGUARD_SRC_PROCESS_CALL_CGROUP_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "laneguard/internal/mutex.h"
#include "laneguard/process.h"

namespace laneguard::internal {

class CallCgroup {
 public:
  ~CallCgroup();  // closes the descriptors (the pool removes the directories)
  CallCgroup(const CallCgroup&) = delete;
  CallCgroup& operator=(const CallCgroup&) = delete;

  MemoryMechanism memory_mechanism() const { return memory_; }
  KillMechanism kill_mechanism() const { return kill_; }
  // cgroup.procs of each hierarchy, open for writing (-1 when not used): the child writes "0" to
  // them before exec, so it needs no free descriptor and no path lookup then.
  int v2_procs_fd() const { return v2_procs_fd_; }
  int v1_procs_fd() const { return v1_procs_fd_; }

  // SIGKILL to every process in the call's cgroup (v2: cgroup.kill, one atomic step; v1: each pid
  // listed, repeated until the list is empty or `rounds` passes).
  bool Kill(int rounds = 1) const;
  bool Empty() const;
  // A memory controller counts this cgroup, so PeakBytes() can tell.
  bool CountsMemory() const { return v2_peak_fd_ >= 0 || v1_memory_; }
  // The call's own memory high-water mark: what the kernel recorded since the call began, less
  // what the (reused) cgroup held then. nullopt when no memory controller counts this cgroup.
  std::optional<int64_t> PeakBytes() const;
  // OOM kills in the cgroup since the call began.
  int64_t OomKills() const;

 private:
  friend class CgroupPool;
  CallCgroup() = default;
  // Opens what the call uses, sets its limit and resets the high-water mark. False (errno set)
  // when a file cannot be opened.
  bool Begin(std::optional<int64_t> limit_bytes);
  void CloseFds();
  // Opens memory.peak where there is one; false only when out of descriptors.
  bool OpenPeak();
  int64_t MemoryInUse() const;

  std::string v2_dir_, v1_dir_;
  int v2_procs_fd_ = -1, v1_procs_fd_ = -1;
  int v2_peak_fd_ = -1;  // memory.peak, whose reset (Linux 6.12) is per open file
  KillMechanism kill_ = KillMechanism::kProcessGroup;
  bool v2_memory_ = false, v1_memory_ = false;  // the directory has the memory controller
  // Per call.
  MemoryMechanism memory_ = MemoryMechanism::kNone;
  bool limited_ = false;
  bool peak_resets_ = true;  // the high-water mark can be reset (else the cgroup is not reused)
  int64_t baseline_bytes_ = 0;
  int64_t oom_baseline_ = 0;
  int uses_ = 0;
};

class CgroupPool {
 public:
  // No cgroups at all when `support` names no parent (use_cgroups off, or none writable).
  explicit CgroupPool(const IsolationSupport& support);
  ~CgroupPool();  // removes the idle cgroups
  CgroupPool(const CgroupPool&) = delete;
  CgroupPool& operator=(const CgroupPool&) = delete;

  // Whether this machine gives cgroups at all.
  bool enabled() const { return !support_.v2_parent.empty() || !support_.v1_parent.empty(); }
  // A cgroup for one call, or null when the machine gives none (errno EMFILE or ENFILE when it
  // was for want of descriptors). A call with a memory limit gets a
  // fresh one (what an earlier call left charged must not count against its limit), which is
  // removed afterwards.
  std::unique_ptr<CallCgroup> Acquire(std::optional<int64_t> limit_bytes);
  // After the call: kills what is left, waits (bounded) until the cgroup is empty, and keeps it
  // for the next call, or removes it when it cannot be reused.
  void Release(std::unique_ptr<CallCgroup> cgroup);
  // Gives back a cgroup that no process ever joined (the start failed).
  void Return(std::unique_ptr<CallCgroup> cgroup);

 private:
  std::unique_ptr<CallCgroup> Make();
  static void Remove(std::unique_ptr<CallCgroup> cgroup);

  const IsolationSupport support_;
  internal::Mutex mu_;
  std::vector<std::unique_ptr<CallCgroup>> idle_ GUARDED_BY(mu_);
};

// Opens a v2 cgroup's memory.peak: read-write where the kernel takes the per-file reset (Linux
// 6.12), else read-only (5.19 to 6.11). -1 when it cannot be opened at all; errno says why
// (ENOENT: a kernel before 5.19; EMFILE or ENFILE: out of descriptors).
int OpenMemoryPeak(const std::string& path);

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_PROCESS_CALL_CGROUP_H_
