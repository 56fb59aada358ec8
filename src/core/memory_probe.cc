#include <malloc.h>
#include <unistd.h>

#include <cstdio>
#include <mutex>
#include <optional>
#include <string>

#include "base/cgroup_paths.h"
#include "core/proc_memory_probe.h"
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
std::optional<CgroupLocation> FindMemoryCgroup(const internal::CgroupDirs& dirs) {
  if (!dirs.v1_memory.empty() &&
      access((dirs.v1_memory + "/memory.usage_in_bytes").c_str(), R_OK) == 0)
    return CgroupLocation{dirs.v1_memory, "v1"};
  if (!dirs.v2.empty() && access((dirs.v2 + "/memory.current").c_str(), R_OK) == 0)
    return CgroupLocation{dirs.v2, "v2"};
  return std::nullopt;
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define LANEGUARD_SANITIZER_ALLOCATOR 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define LANEGUARD_SANITIZER_ALLOCATOR 1
#endif
#endif

#ifdef LANEGUARD_SANITIZER_ALLOCATOR
// The sanitizer runtimes export these (compiler-rt's sanitizer/allocator_interface.h); g++ 12 does
// not ship that header, so they are declared here.
// NOLINTBEGIN(bugprone-reserved-identifier)
extern "C" size_t __sanitizer_get_current_allocated_bytes();
extern "C" size_t __sanitizer_get_heap_size();
// NOLINTEND(bugprone-reserved-identifier)
#endif

struct HeapBytes {
  size_t total = 0;
  size_t used = 0;
};

HeapBytes ReadHeap() {
#ifdef LANEGUARD_SANITIZER_ALLOCATOR
  // ASan and TSan replace malloc: glibc's arenas are empty, the sanitizer's allocator is the heap.
  return {__sanitizer_get_heap_size(), __sanitizer_get_current_allocated_bytes()};
#else
  // glibc sets up its malloc state lazily, and that first set-up is not thread-safe: when nothing
  // has called glibc's malloc yet (a replacement allocator is linked in), two threads entering
  // mallinfo2() at once can read a half-initialised arena. One call under call_once does it first.
  static std::once_flag glibc_malloc_ready;
  std::call_once(glibc_malloc_ready, [] { (void)mallinfo2(); });
  const struct mallinfo2 mi = mallinfo2();
  return {mi.arena + mi.hblkhd, mi.uordblks + mi.hblkhd};
#endif
}

class ProcMemoryProbe final : public MemoryProbe {
 public:
  explicit ProcMemoryProbe(const internal::CgroupDirs& dirs)
      : page_size_(static_cast<double>(sysconf(_SC_PAGESIZE))) {
    if (auto loc = FindMemoryCgroup(dirs)) cgroup_ = *loc;
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
    const HeapBytes heap = ReadHeap();
    s.heap_total_mb = static_cast<double>(heap.total) / kMb;
    s.heap_used_mb = static_cast<double>(heap.used) / kMb;
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

std::unique_ptr<MemoryProbe> NewProcMemoryProbe() {
  return internal::NewProcMemoryProbe(internal::FindOwnCgroups());
}

std::unique_ptr<MemoryProbe> internal::NewProcMemoryProbe(const CgroupDirs& dirs) {
  return std::make_unique<ProcMemoryProbe>(dirs);
}

}  // namespace laneguard
