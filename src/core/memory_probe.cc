#include <malloc.h>
#include <unistd.h>

#include <cstdio>
#include <optional>
#include <string>

#include "core/cgroup_paths.h"
#include "laneguard/memory.h"

namespace laneguard {
namespace {

using internal::ReadNumberFile;

constexpr double kMb = 1024.0 * 1024.0;
// cgroup v1 reports "no limit" as the page counter's maximum rounded to pages (9223372036854771712
// on 4 KiB pages); anything this large is no limit.
constexpr unsigned long long kNoLimitThreshold = 1ULL << 62;

struct CgroupLocation {
  std::string dir;
  std::string version;  // "v1" or "v2"
};

// The memory cgroup of this process: the v1 memory hierarchy's, else the v2 one's if it has the
// memory controller (a v2 tree without it has no memory.current).
std::optional<CgroupLocation> FindMemoryCgroup() {
  const internal::CgroupDirs dirs = internal::FindOwnCgroups();
  if (!dirs.v1_memory.empty() &&
      access((dirs.v1_memory + "/memory.usage_in_bytes").c_str(), R_OK) == 0)
    return CgroupLocation{dirs.v1_memory, "v1"};
  if (!dirs.v2.empty() && access((dirs.v2 + "/memory.current").c_str(), R_OK) == 0)
    return CgroupLocation{dirs.v2, "v2"};
  return std::nullopt;
}

class ProcMemoryProbe final : public MemoryProbe {
 public:
  ProcMemoryProbe() : page_size_(static_cast<double>(sysconf(_SC_PAGESIZE))) {
    if (auto loc = FindMemoryCgroup()) cgroup_ = *loc;
  }

  MemorySnapshot Sample() override {
    MemorySnapshot s;
    // statm's second field is resident pages: one short read, cheaper than parsing status.
    if (std::FILE* f = std::fopen("/proc/self/statm", "re")) {
      unsigned long size = 0, resident = 0;
      if (std::fscanf(f, "%lu %lu", &size, &resident) == 2)
        s.rss_mb = static_cast<double>(resident) * page_size_ / kMb;
      std::fclose(f);
    }
    if (std::FILE* f = std::fopen("/proc/self/status", "re")) {
      char line[256];
      while (std::fgets(line, sizeof line, f)) {
        unsigned long kb = 0;
        if (std::sscanf(line, "VmHWM: %lu kB", &kb) == 1) {
          s.peak_rss_mb = static_cast<double>(kb) / 1024.0;
          break;
        }
      }
      std::fclose(f);
    }
    struct mallinfo2 mi = mallinfo2();
    s.heap_total_mb = static_cast<double>(mi.arena + mi.hblkhd) / kMb;
    s.heap_used_mb = static_cast<double>(mi.uordblks + mi.hblkhd) / kMb;
    if (cgroup_) {
      s.cgroup_version = cgroup_->version;
      const bool v2 = cgroup_->version == "v2";
      if (auto usage =
              ReadNumberFile(cgroup_->dir + (v2 ? "/memory.current" : "/memory.usage_in_bytes")))
        s.cgroup_usage_mb = static_cast<double>(*usage) / kMb;
      auto limit = ReadNumberFile(cgroup_->dir + (v2 ? "/memory.max" : "/memory.limit_in_bytes"));
      if (limit && *limit < kNoLimitThreshold)
        s.cgroup_limit_mb = static_cast<double>(*limit) / kMb;
    }
    return s;
  }

 private:
  double page_size_;
  std::optional<CgroupLocation> cgroup_;
};

}  // namespace

std::unique_ptr<MemoryProbe> NewProcMemoryProbe() { return std::make_unique<ProcMemoryProbe>(); }

}  // namespace laneguard
