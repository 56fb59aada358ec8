// Appends JSON lines to a stream so that a reader never finds a cut line: the JSON-lines span
// exporter and the JSON logger write through it. A disk that fills (ENOSPC), a file size limit
// (EFBIG) or /dev/full must cost whole lines, counted by the caller, never leave a half line
// that turns the whole file into invalid JSON lines.
//
// Each call is one write() of the complete buffer (looping only on short writes). If the kernel
// takes only part of it, the file is cut back after the last whole line that made it (ftruncate:
// regular files only; a pipe or a device cannot be cut back, but /dev/full takes nothing).
// laneguard assumes it is the only writer of the file while it runs.
//
// Thread safety: none; callers serialize writes to one stream (both callers hold a mutex).
#ifndef LANEGUARD_SRC_BASE_LINE_FILE_H_
#define LANEGUARD_SRC_BASE_LINE_FILE_H_

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <string_view>

namespace laneguard::internal {

struct AppendResult {
  size_t lines = 0;  // whole lines now in the file
  int error = 0;     // errno of the failed write; 0 when every line was written
};

inline size_t CountLines(std::string_view text) {
  return static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
}

// Writes `text` (whole lines, each ending in '\n') to `fd`; see above. One write() when it goes
// well: the file is looked at only after a failure.
inline AppendResult AppendLinesToFd(int fd, std::string_view text) {
  size_t done = 0;
  int error = 0;
  while (done < text.size()) {
    const ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      error = n < 0 ? errno : EIO;  // a write of 0 bytes makes no progress either
      break;
    }
  }
  if (error == 0) return {CountLines(text), 0};
  const size_t last_newline = done == 0 ? std::string_view::npos : text.rfind('\n', done - 1);
  const size_t keep = last_newline == std::string_view::npos ? 0 : last_newline + 1;
  struct stat st {};
  if (keep < done && fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
    // The offset is just past what was written, O_APPEND or not.
    const off_t after = lseek(fd, 0, SEEK_CUR);
    const off_t end = after - static_cast<off_t>(done - keep);
    if (after >= 0 && end >= 0 && ftruncate(fd, end) == 0) lseek(fd, end, SEEK_SET);
  }
  return {CountLines(text.substr(0, keep)), error};
}

// The same on a stdio stream. A stream with a descriptor is flushed of anything its owner
// buffered, then written through the descriptor; one without (open_memstream) through stdio.
inline AppendResult AppendLines(std::FILE* stream, std::string_view text) {
  const int fd = fileno(stream);
  if (fd >= 0) {
    if (std::fflush(stream) != 0) return {0, errno != 0 ? errno : EIO};
    return AppendLinesToFd(fd, text);
  }
  errno = 0;
  if (std::fwrite(text.data(), 1, text.size(), stream) == text.size() && std::fflush(stream) == 0)
    return {CountLines(text), 0};
  return {0, errno != 0 ? errno : EIO};
}

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_BASE_LINE_FILE_H_
