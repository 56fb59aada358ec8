#include <malloc.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "laneguard/memory.h"

namespace laneguard {
namespace {

constexpr double kMb = 1024.0 * 1024.0;
// cgroup v1 reports "no limit" as the page counter's maximum rounded to pages (9223372036854771712
// on 4 KiB pages); anything this large is no limit.
constexpr unsigned long long kNoLimitThreshold = 1ULL << 62;

std::string ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return {};
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::optional<unsigned long long> ReadNumberFile(const std::string& path) {
  std::string text = ReadSmallFile(path);
  if (text.empty()) return std::nullopt;
  try {
    return std::stoull(text);
  } catch (...) {
    return std::nullopt;  // "max" and anything else that is not a number
  }
}

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string item;
  std::istringstream in(s);
  while (std::getline(in, item, sep)) out.push_back(item);
  return out;
}

struct CgroupLocation {
  std::string dir;
  std::string version;  // "v1" or "v2"
};

// Finds the memory cgroup directory of this process. /proc/self/cgroup gives the path within each
// hierarchy ("4:memory:/a/b" for v1, "0::/a/b" for v2); /proc/self/mountinfo gives where each
// hierarchy is mounted and which part of it (field 4, the mount's root: a container often sees its
// own cgroup mounted as "/"). The path we want is mountpoint + (cgroup path relative to that root);
// when the relative path does not exist (a namespaced view), the mountpoint itself is used.
std::optional<CgroupLocation> FindMemoryCgroup() {
  std::string v1_path, v2_path;
  bool have_v2 = false;
  for (const std::string& line : Split(ReadSmallFile("/proc/self/cgroup"), '\n')) {
    auto first = line.find(':');
    auto second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    std::string controllers = line.substr(first + 1, second - first - 1);
    std::string path = line.substr(second + 1);
    if (line.compare(0, first, "0") == 0 && controllers.empty()) {
      v2_path = path;
      have_v2 = true;
    }
    for (const std::string& c : Split(controllers, ','))
      if (c == "memory") v1_path = path;
  }
  struct Mount {
    std::string root, point, fstype, options;
  };
  std::vector<Mount> mounts;
  for (const std::string& line : Split(ReadSmallFile("/proc/self/mountinfo"), '\n')) {
    auto fields = Split(line, ' ');
    size_t dash = 0;
    while (dash < fields.size() && fields[dash] != "-") ++dash;
    if (fields.size() < 5 || dash + 3 >= fields.size()) continue;
    mounts.push_back({fields[3], fields[4], fields[dash + 1], fields[dash + 3]});
  }
  auto resolve = [](const Mount& m, const std::string& path) {
    std::string rel = path;
    if (m.root != "/" && rel.compare(0, m.root.size(), m.root) == 0)
      rel = rel.substr(m.root.size());
    std::string dir = m.point + (rel == "/" ? "" : rel);
    if (access(dir.c_str(), R_OK) != 0) dir = m.point;
    return dir;
  };
  if (!v1_path.empty()) {
    for (const Mount& m : mounts) {
      if (m.fstype != "cgroup") continue;
      for (const std::string& opt : Split(m.options, ','))
        if (opt == "memory") {
          std::string dir = resolve(m, v1_path);
          if (access((dir + "/memory.usage_in_bytes").c_str(), R_OK) == 0)
            return CgroupLocation{dir, "v1"};
        }
    }
  }
  if (have_v2) {
    for (const Mount& m : mounts) {
      if (m.fstype != "cgroup2") continue;
      std::string dir = resolve(m, v2_path);
      // A v2 tree without the memory controller enabled has no memory.current: not a memory cgroup.
      if (access((dir + "/memory.current").c_str(), R_OK) == 0) return CgroupLocation{dir, "v2"};
    }
  }
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
