// Runs a job file's jobs as subprocess worker calls, as many at once as the lane and global limits
// allow, and reports what happened. Jobs wait for their places in the manager's lane queues
// (ResourceBudgetManager::AcquireAsync) and start in priority order, then file order.
//
// Thread safety: a BatchRunner runs one batch at a time (Run() is not reentrant); the cancel token
// may be triggered, and RequestProgress() called, from any thread.
#ifndef LANEGUARD_SRC_CLI_BATCH_H_
#define LANEGUARD_SRC_CLI_BATCH_H_

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "cli/job_file.h"
#include "cli/lease_client.h"
#include "laneguard/metrics.h"
#include "laneguard/process.h"

namespace laneguard::cli {

struct JobOutcome {
  const Job* job = nullptr;
  bool started = false;  // false: skipped (fail-fast or cancelled before its turn)
  ProcessResult result;
  double queue_wait_ms = 0;  // from the batch's start until the job got its slot
  double wait_ms = 0;        // of which in its lane's queue (the slot's wait_nanos)
  double start_ms = 0;       // since the batch's start
  double end_ms = 0;
  // With BatchOptions::output_dir, once its program ran: <dir>/<name> (add .stdout or .stderr),
  // or why the files could not be written.
  std::string output_file;
  std::string output_error;
  // With BatchOptions::stdout_lines, once its program ran: its last lines of stdout.
  std::optional<std::vector<std::string>> stdout_lines;
  bool cancelled() const { return started && result.outcome == ProcessOutcome::kCancelled; }
  bool failed() const { return started && !result.success() && !cancelled(); }
};

struct BatchOptions {
  bool fail_fast = false;  // the first failure cancels the running jobs and skips the rest
  enum class Progress { kNone, kLines, kBar } progress = Progress::kLines;
  std::FILE* progress_stream = stderr;
  std::chrono::milliseconds progress_interval{1000};
  // Called with each job's queue wait as it gets its slot (the telemetry layer's hook).
  std::function<void(const Job&, double queue_wait_seconds)> on_queue_wait;
  // Non-empty: each started job's stdout and stderr are written to <output_dir>/<name>.stdout and
  // .stderr, <name> from OutputFileNames(). The directory must exist.
  std::string output_dir;
  // > 0: each job's last `stdout_lines` lines of stdout (of what was captured, each line cut at
  // kMaxStdoutLineBytes) are kept for the JSON summary.
  int stdout_lines = 0;
  // With a daemon (batch --server): each job takes a lease before it asks for its local place
  // (so a job waiting for the daemon holds no local place), runs inside the lease's trace and
  // timeout, renews it and releases it with its outcome. A job the daemon refuses fails unrun.
  struct Leases {
    ServerAddress address;
    std::string token;
    std::optional<int64_t> wait_ms;  // none: until granted
    int64_t ttl_ms = 15000;
  };
  std::optional<Leases> leases;
};

inline constexpr int kMaxStdoutLines = 1000;
inline constexpr size_t kMaxStdoutLineBytes = 4096;

// Per-stream capture with an output directory; past it the rest is dropped and counted.
inline constexpr size_t kMaxJobOutputBytes = size_t{8} << 20;

struct BatchReport {
  std::vector<JobOutcome> jobs;  // in file order
  double elapsed_ms = 0;
  bool cancelled = false;  // the cancel token fired
  Statistics statistics;   // the manager's, at the end
  // Each job is counted once: succeeded + failed + cancelled + skipped == jobs.size().
  int failed() const;
  int cancelled_jobs() const;  // stopped by the cancel token or by fail-fast while running
  int skipped() const;
  int succeeded() const;
  int output_errors() const;
};

class BatchRunner {
 public:
  BatchRunner(ProcessRunner& runner, BatchOptions options);
  // Output of each job is captured (up to 1 MB per stream, or kMaxJobOutputBytes with an output
  // directory) so concurrent jobs do not interleave; a failed job's last stderr line appears in
  // the summary. Without an output directory stdout is dropped.
  BatchReport Run(const std::vector<Job>& jobs, const std::stop_token& cancel);
  // The running batch prints a progress line as soon as it can, even with Progress::kNone (the
  // answer to SIGUSR1).
  void RequestProgress() { progress_requested_.store(true); }

 private:
  ProcessRunner& runner_;
  BatchOptions options_;
  std::atomic<bool> progress_requested_{false};
};

// File names (without directory or suffix) for the jobs' output files, in job order: the id when
// it is a plain name ([A-Za-z0-9._-], not starting with '.', at most 100 bytes); otherwise the id
// with every other byte replaced by '_' (and a leading '.' too), cut to 100 bytes, with "~<line>"
// appended when that name is taken by another job.
std::vector<std::string> OutputFileNames(const std::vector<Job>& jobs);

// Text from jobs or files, made safe for a terminal: control characters (C0, DEL and the UTF-8
// encoded C1 range) become visible escapes (\n, \t, \r, \x1b, \u009b); everything else, invalid
// UTF-8 included, is kept. JSON output needs none of this (JSON escapes them itself).
std::string EscapeForTerminal(std::string_view text);

// The summary: the spec's statistics, a per-lane table, the slowest jobs and every failure.
void PrintSummaryTable(const BatchReport& report, const Config& config, std::FILE* out);
std::string SummaryJson(const BatchReport& report, const Config& config);

}  // namespace laneguard::cli

#endif  // LANEGUARD_SRC_CLI_BATCH_H_
