// A disk that fills up, for tests: RLIMIT_FSIZE makes writes past the limit fail with EFBIG (after
// a short write up to it), as a full disk fails them with ENOSPC. SIGXFSZ, which would kill the
// process, is ignored meanwhile. Both are restored when the object goes; keep it short-lived and
// make no assertions while it lives (the test's own output may be a file).
#ifndef LANEGUARD_TESTS_SUPPORT_FILE_SIZE_LIMIT_H_
#define LANEGUARD_TESTS_SUPPORT_FILE_SIZE_LIMIT_H_

#include <sys/resource.h>

#include <csignal>

namespace laneguard::testing_support {

class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &saved_);
    const rlimit limit{bytes, saved_.rlim_max};
    setrlimit(RLIMIT_FSIZE, &limit);
    saved_handler_ = std::signal(SIGXFSZ, SIG_IGN);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, saved_handler_);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;

 private:
  rlimit saved_{};
  void (*saved_handler_)(int) = SIG_DFL;
};

}  // namespace laneguard::testing_support

#endif  // LANEGUARD_TESTS_SUPPORT_FILE_SIZE_LIMIT_H_
