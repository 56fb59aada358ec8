// Runs a job file's jobs as subprocess worker calls, as many at once as the lane and global limits
// allow, and reports what happened.
//
// Thread safety: a BatchRunner runs one batch at a time (Run() is not reentrant); the cancel token
// may be triggered from any thread.
#ifndef LANEGUARD_SRC_CLI_BATCH_H_
#define LANEGUARD_SRC_CLI_BATCH_H_

#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "cli/job_file.h"
#include "laneguard/metrics.h"
#include "laneguard/process.h"

namespace laneguard::cli {

struct JobOutcome {
  const Job* job = nullptr;
  bool started = false;  // false: skipped (fail-fast or cancelled before its turn)
  ProcessResult result;
  double queue_wait_ms = 0;  // from the batch's start until the job got its slot
  double start_ms = 0;       // since the batch's start
  double end_ms = 0;
};

struct BatchOptions {
  bool fail_fast = false;  // the first failure cancels the running jobs and skips the rest
  enum class Progress { kNone, kLines, kBar } progress = Progress::kLines;
  std::FILE* progress_stream = stderr;
  std::chrono::milliseconds progress_interval{1000};
  // Called with each job's queue wait as it gets its slot (the telemetry layer's hook).
  std::function<void(const Job&, double queue_wait_seconds)> on_queue_wait;
};

struct BatchReport {
  std::vector<JobOutcome> jobs;  // in file order
  double elapsed_ms = 0;
  bool cancelled = false;  // the cancel token fired
  Statistics statistics;   // the manager's, at the end
  int failed() const;
  int skipped() const;
  int succeeded() const;
};

class BatchRunner {
 public:
  BatchRunner(ProcessRunner& runner, BatchOptions options);
  // Output of each job is captured (up to 1 MB per stream) so concurrent jobs do not interleave;
  // a failed job's last stderr line appears in the summary.
  BatchReport Run(const std::vector<Job>& jobs, const std::stop_token& cancel);

 private:
  ProcessRunner& runner_;
  BatchOptions options_;
};

// The summary: the spec's statistics, a per-lane table, the slowest jobs and every failure.
void PrintSummaryTable(const BatchReport& report, const Config& config, std::FILE* out);
std::string SummaryJson(const BatchReport& report, const Config& config);

}  // namespace laneguard::cli

#endif  // LANEGUARD_SRC_CLI_BATCH_H_
