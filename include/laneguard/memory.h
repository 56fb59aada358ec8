// Memory snapshots and the probe that takes them.
//
// RSS comes from the kernel (/proc/self/statm, peak from VmHWM in /proc/self/status), the heap from
// glibc's allocator (mallinfo2), and the memory cgroup's usage and limit where one applies (cgroup
// v2 memory.current/memory.max, or the v1 memory controller's memory.usage_in_bytes and
// memory.limit_in_bytes). The spec's V8-only fields (externalMb, arrayBuffersMb) have no C++
// meaning and are not reported.
//
// Thread safety: MemorySnapshot is a value type. ProcMemoryProbe::Sample() is thread-safe.
#ifndef LANEGUARD_MEMORY_H_
#define LANEGUARD_MEMORY_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace laneguard {

struct MemorySnapshot {
  double rss_mb = 0;
  double heap_total_mb = 0;  // bytes the allocator holds from the OS (arena + mmapped chunks)
  double heap_used_mb = 0;   // bytes in allocated chunks (uordblks + mmapped chunks)
  double peak_rss_mb = 0;
  // Set only when the process is in a memory cgroup. The limit is unset when the cgroup has none
  // ("max" in v2, the page-counter maximum in v1).
  std::optional<double> cgroup_usage_mb;
  std::optional<double> cgroup_limit_mb;
  std::string cgroup_version;  // "v2", "v1" or "" (none found)
  int64_t timestamp_unix_nanos = 0;
  std::string timestamp;  // ISO 8601, as the spec's snapshot
};

// Where memory figures come from. Injected into the manager so guards are testable.
class MemoryProbe {
 public:
  virtual ~MemoryProbe() = default;
  // Fills every field but the timestamps (the caller stamps them with its clock).
  virtual MemorySnapshot Sample() = 0;
};

// The real probe: /proc, mallinfo2 and the cgroup filesystem. The cgroup directory is located once,
// at construction, from /proc/self/cgroup and /proc/self/mountinfo.
std::unique_ptr<MemoryProbe> NewProcMemoryProbe();

}  // namespace laneguard

#endif  // LANEGUARD_MEMORY_H_
