// Where this process's cgroups are, and small helpers to read cgroup files. Shared by the memory
// probe (which reads the memory cgroup) and the process runner (which makes one cgroup per call).
//
// Thread safety: free functions with no shared state.
#ifndef LANEGUARD_SRC_BASE_CGROUP_PATHS_H_
#define LANEGUARD_SRC_BASE_CGROUP_PATHS_H_

#include <optional>
#include <string>

namespace laneguard::internal {

struct CgroupDirs {
  std::string v1_memory;  // this process's cgroup in the v1 memory hierarchy; "" if none
  std::string v2;         // this process's cgroup in the v2 (unified) hierarchy; "" if none
};

// /proc/self/cgroup gives the path within each hierarchy ("4:memory:/a/b" for v1, "0::/a/b" for
// v2); /proc/self/mountinfo gives where each hierarchy is mounted and which part of it (field 4,
// the mount's root: a container often sees its own cgroup mounted as "/"). The directory is the
// mountpoint + (cgroup path relative to that root); when that does not exist (a namespaced view),
// the mountpoint itself.
CgroupDirs FindOwnCgroups();
// The same from the two files' text, so that a test can give any machine's (v1, v2, hybrid, a
// container's namespaced view) on this one.
CgroupDirs FindOwnCgroups(const std::string& proc_self_cgroup, const std::string& mountinfo);

// The whole file ("" when it cannot be read).
std::string ReadSmallFile(const std::string& path);
// The file's leading decimal number; nullopt for "max", an empty or unreadable file.
std::optional<unsigned long long> ReadNumberFile(const std::string& path);
// Writes `text` to an existing file (cgroup control files take one write each). False on error.
bool WriteSmallFile(const std::string& path, const std::string& text);

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_BASE_CGROUP_PATHS_H_
