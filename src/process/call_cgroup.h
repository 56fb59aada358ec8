// One cgroup (in the v2 tree, the v1 memory hierarchy, or both) per subprocess call: the kernel's
// record of every process in the call's tree, however it forks or setsid()s, and where its memory
// limit is enforced.
//
// Thread safety: Kill() may run on the manager's timer thread while the owning thread waits;
// everything else belongs to the owning thread. Kill() only reads the paths, fixed at creation.
#ifndef LANEGUARD_SRC_PROCESS_CALL_CGROUP_H_
#define LANEGUARD_SRC_PROCESS_CALL_CGROUP_H_

#include <cstdint>
#include <optional>
#include <string>

#include "laneguard/process.h"

namespace laneguard::internal {

class CallCgroup {
 public:
  // Makes the call's cgroups under the parents `support` found. A directory that cannot be made
  // is left out (the run falls back), never an error. `limit_bytes` goes into memory.max (v2 with
  // the memory controller) or memory.limit_in_bytes (v1).
  CallCgroup(const IsolationSupport& support, const std::string& name,
             std::optional<int64_t> limit_bytes);
  ~CallCgroup();  // Remove()
  CallCgroup(const CallCgroup&) = delete;
  CallCgroup& operator=(const CallCgroup&) = delete;

  MemoryMechanism memory_mechanism() const { return memory_; }
  KillMechanism kill_mechanism() const { return kill_; }
  // cgroup.procs files the child writes its pid to before exec ("" when not used).
  const std::string& v2_procs() const { return v2_procs_; }
  const std::string& v1_procs() const { return v1_procs_; }

  // SIGKILL to every process in the call's cgroup (v2: cgroup.kill, one atomic step; v1: each pid
  // listed, repeated until the list is empty or `rounds` passes). False without a cgroup.
  bool Kill(int rounds = 1) const;
  bool Empty() const;
  // Waits (bounded) for the killed processes to leave, then removes the directories.
  void Remove();
  // What the kernel kept: the memory high-water mark (0 if unknown) and the OOM kills.
  int64_t PeakBytes() const;
  int64_t OomKills() const;

 private:
  std::string v2_dir_, v1_dir_;
  std::string v2_procs_, v1_procs_;
  MemoryMechanism memory_ = MemoryMechanism::kNone;
  KillMechanism kill_ = KillMechanism::kProcessGroup;
  bool removed_ = false;
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_PROCESS_CALL_CGROUP_H_
