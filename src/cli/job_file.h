// The batch job file (JSON lines) and the command line's duration syntax.
//
// Thread safety: free functions with no shared state.
#ifndef LANEGUARD_SRC_CLI_JOB_FILE_H_
#define LANEGUARD_SRC_CLI_JOB_FILE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "laneguard/config.h"
#include "laneguard/manager.h"
#include "laneguard/observer.h"
#include "laneguard/process.h"
#include "laneguard/result.h"

namespace laneguard::cli {

// "500ms", "30s", "1.5s", "2m", "1h", and sums of them in any order: "1m30s", "1h2m3s",
// "2m0.5s". A bare number is seconds (as timeout(1)). The result is in milliseconds, > 0 and
// <= kMaxTimeoutMs. The error (kInvalidArgument, field `flag`, value `text`) names `flag` and the
// value in its message (an empty value is an error too).
Result<int64_t> ParseDurationMs(std::string_view text, std::string_view flag);

// One line of the job file:
//   {"id": "read-1", "lane": "file_read", "cmd": ["cat", "a.txt"] | "cat a.txt | wc -l",
//    "timeoutMs": 30000, "maxRssMb": 256, "metadata": {...}, "env": {"K": "V"}, "cwd": "/tmp",
//    "priority": "high" | "normal" | "low"}
// Only cmd is required. id defaults to "line-<n>" and must be unique; lane defaults to
// "tool_call" and must be configured; a string cmd runs under /bin/sh -c; metadata values may be
// strings, numbers or booleans (kept as text); env values must be strings. timeoutMs and maxRssMb
// are integers (1500.0 is accepted, as in the config). No string that reaches the process (cmd,
// env names and values, cwd) may contain NUL: execve would silently cut it there.
struct Job {
  int line = 0;
  std::string id;
  std::string lane;
  std::optional<int64_t> timeout_ms;
  Priority priority = Priority::kNormal;
  Metadata metadata;
  ProcessSpec spec;
};

// A job file's error: field() is the position, "line 3: lane" ("line 3" when the line is not a
// JSON object at all, "" for the file as a whole), message() the whole sentence, "line 3: field
// 'lane': unknown lane 'gpu' (configured: ...)". A file that cannot be read has the system's code
// (kNotFound, kPermissionDenied, ...), every other error is kInvalidArgument.
Error JobError(int line, std::string_view field, std::string_view message);

// Validates every line before anything runs; blank lines are skipped. Returns every error found
// (not just the first), so a user fixes the file in one go. Values in messages are shortened to
// about 80 characters. `text` is already in memory, so no size cap applies: the caps are on
// reading (LoadJobFile). Warnings (when `warnings` is given; the jobs still load): a field given
// twice on one line (the last value is used), at most kMaxPrintedJobErrors of them.
Result<std::vector<Job>, std::vector<Error>> ParseJobs(
    std::string_view text, const Config& config, std::vector<std::string>* warnings = nullptr);
// A job file (or standard input) is read at most this far: 256 MiB is millions of small jobs,
// and `batch -` fed forever (or `batch /dev/zero`) stops here instead of reading until
// memory runs out. More jobs than that go in several files, one batch each.
inline constexpr size_t kMaxJobFileBytes = size_t{256} << 20;
// One line of a job file is at most this long: a job is a command and a few fields, and without a
// line cap a stream with no newline (/dev/zero) would be held whole before any check. Large data
// belongs in files the job names.
inline constexpr size_t kMaxJobLineBytes = size_t{1} << 20;
// At most this many jobs (non-blank lines) in one job file: each checked job costs about 600
// bytes, so 256 MiB of the smallest jobs ({"cmd":"true"}) would still cost some 10 GB. A million
// jobs is hours of work for one batch, and about 600 MB.
inline constexpr size_t kMaxJobsPerFile = 1'000'000;

// Reads the file at `path` ("-": standard input) line by line as it arrives, checking each line
// as ParseJobs does. Errors that stop the reading are the only error returned: an unreadable
// file (no line, the message starts with the path and has the system's reason: no such file,
// permission denied, is a directory), an input larger than kMaxJobFileBytes (no line, with the
// path, field ""), a line longer than kMaxJobLineBytes or the job past kMaxJobsPerFile (that line's
// number). A FIFO or a pipe
// (`batch <(...)`, `batch -`) works like a file.
Result<std::vector<Job>, std::vector<Error>> LoadJobFile(
    const std::string& path, const Config& config, std::vector<std::string>* warnings = nullptr);

// How many errors (or warnings) a bad job file prints before "and N more errors".
inline constexpr size_t kMaxPrintedJobErrors = 20;

// One line per error, each starting with `prefix` (e.g. "laneguard batch: jobs.jsonl: "), at most
// `max` of them, then "<prefix>and N more errors". A file with 100,000 bad lines stays readable.
std::string FormatJobErrors(const std::vector<Error>& errors, std::string_view prefix,
                            size_t max = kMaxPrintedJobErrors);

}  // namespace laneguard::cli

#endif  // LANEGUARD_SRC_CLI_JOB_FILE_H_
