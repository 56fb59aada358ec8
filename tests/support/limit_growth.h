// For tests that read an endless input (/dev/zero, a pipe fed forever): a regression that reads
// without bound then fails in the test's own (death-test) child instead of taking the machine's
// memory.
#ifndef LANEGUARD_TESTS_SUPPORT_LIMIT_GROWTH_H_
#define LANEGUARD_TESTS_SUPPORT_LIMIT_GROWTH_H_

#include <sys/resource.h>
#include <unistd.h>

#include <cstddef>
#include <fstream>
#include <string>

namespace laneguard::testing_support {

// Lets the calling process grow its address space by at most `bytes` more and gives it 20 s.
inline void LimitGrowth(size_t bytes) {
  std::ifstream status("/proc/self/status");
  std::string word;
  size_t vm_kb = 0;
  while (status >> word)
    if (word == "VmSize:" && status >> vm_kb) break;
  const rlim_t limit = vm_kb * 1024 + bytes;
  const rlimit r{limit, limit};
  setrlimit(RLIMIT_AS, &r);
  alarm(20);
}

}  // namespace laneguard::testing_support

#endif  // LANEGUARD_TESTS_SUPPORT_LIMIT_GROWTH_H_
