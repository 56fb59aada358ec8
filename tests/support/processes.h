// Waiting on processes and files that test programs create, with bounds so a broken test fails
// instead of hanging.
#ifndef LANEGUARD_TESTS_SUPPORT_PROCESSES_H_
#define LANEGUARD_TESTS_SUPPORT_PROCESSES_H_

#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>

namespace laneguard::testing_support {

// Gone, or a zombie waiting for a parent that is not us: either way it runs no more.
inline bool ProcessDead(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  const auto paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z';
}

// Up to 5 s.
inline bool EventuallyDead(pid_t pid) {
  for (int i = 0; i < 500 && !ProcessDead(pid); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return ProcessDead(pid);
}

// Up to 10 s for `path` to appear: the child has reached the point the test needs.
inline bool WaitForFile(const std::string& path) {
  for (int i = 0; i < 1000 && access(path.c_str(), F_OK) != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return access(path.c_str(), F_OK) == 0;
}

}  // namespace laneguard::testing_support

#endif  // LANEGUARD_TESTS_SUPPORT_PROCESSES_H_
