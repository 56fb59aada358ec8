// The /proc memory probe with the cgroups it reads given, so that a test can point it at a v1 or a
// v2 tree (a directory of its own with the files the kernel would write) on any machine.
//
// Thread safety: as MemoryProbe (Sample() may be called from any thread).
#ifndef LANEGUARD_SRC_CORE_PROC_MEMORY_PROBE_H_
#define LANEGUARD_SRC_CORE_PROC_MEMORY_PROBE_H_

#include <memory>

#include "base/cgroup_paths.h"
#include "laneguard/memory.h"

namespace laneguard::internal {

// NewProcMemoryProbe() is this with FindOwnCgroups().
std::unique_ptr<MemoryProbe> NewProcMemoryProbe(const CgroupDirs& dirs);

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_CORE_PROC_MEMORY_PROBE_H_
