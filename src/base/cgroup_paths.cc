#include "base/cgroup_paths.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <vector>

namespace laneguard::internal {
namespace {

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string item;
  std::istringstream in(s);
  while (std::getline(in, item, sep)) out.push_back(item);
  return out;
}

}  // namespace

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

bool WriteSmallFile(const std::string& path, const std::string& text) {
  const int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
  return ok;
}

CgroupDirs FindOwnCgroups() {
  return FindOwnCgroups(ReadSmallFile("/proc/self/cgroup"), ReadSmallFile("/proc/self/mountinfo"));
}

CgroupDirs FindOwnCgroups(const std::string& proc_self_cgroup, const std::string& mountinfo) {
  std::string v1_path, v2_path;
  bool have_v2 = false;
  for (const std::string& line : Split(proc_self_cgroup, '\n')) {
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
  for (const std::string& line : Split(mountinfo, '\n')) {
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
  CgroupDirs dirs;
  for (const Mount& m : mounts) {
    if (!v1_path.empty() && m.fstype == "cgroup" && dirs.v1_memory.empty()) {
      for (const std::string& opt : Split(m.options, ','))
        if (opt == "memory") dirs.v1_memory = resolve(m, v1_path);
    }
    if (have_v2 && m.fstype == "cgroup2" && dirs.v2.empty()) dirs.v2 = resolve(m, v2_path);
  }
  return dirs;
}

}  // namespace laneguard::internal
