#include "cli/batch.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <deque>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <system_error>
#include <thread>
#include <utility>

#include "laneguard/internal/mutex.h"

namespace laneguard::cli {
namespace {

using Steady = std::chrono::steady_clock;
constexpr size_t kStderrTail = 4096;

double MsSince(Steady::time_point start) {
  return std::chrono::duration<double, std::milli>(Steady::now() - start).count();
}

std::string FormatClock(double ms) {
  const int64_t s = static_cast<int64_t>(ms / 1000);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%02lld:%02lld", static_cast<long long>(s / 60),
                static_cast<long long>(s % 60));
  return buf;
}

std::string LastLine(const std::string& text) {
  size_t end = text.find_last_not_of("\n\r ");
  if (end == std::string::npos) return {};
  size_t begin = text.rfind('\n', end);
  std::string line = text.substr(begin == std::string::npos ? 0 : begin + 1,
                                 end + 1 - (begin == std::string::npos ? 0 : begin + 1));
  if (line.size() > 160) {
    size_t cut = 157;
    // Not inside a UTF-8 sequence: back up over continuation bytes (10xxxxxx).
    while (cut > 0 && (static_cast<unsigned char>(line[cut]) & 0xC0) == 0x80) --cut;
    line = line.substr(0, cut) + "...";
  }
  return line;
}

// The last `n` lines (a final line without its newline counts), oldest first, each cut short.
std::vector<std::string> LastLines(std::string_view text, int n) {
  std::vector<std::string> lines;
  if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  while (!text.empty() && static_cast<int>(lines.size()) < n) {
    const size_t newline = text.rfind('\n');
    const size_t begin = newline == std::string_view::npos ? 0 : newline + 1;
    lines.emplace_back(text.substr(begin, kMaxStdoutLineBytes));
    text = text.substr(0, newline == std::string_view::npos ? 0 : newline);
  }
  std::reverse(lines.begin(), lines.end());
  return lines;
}

}  // namespace

int BatchReport::failed() const {
  return static_cast<int>(
      std::count_if(jobs.begin(), jobs.end(), [](const JobOutcome& j) { return j.failed(); }));
}
int BatchReport::cancelled_jobs() const {
  return static_cast<int>(
      std::count_if(jobs.begin(), jobs.end(), [](const JobOutcome& j) { return j.cancelled(); }));
}
int BatchReport::skipped() const {
  return static_cast<int>(
      std::count_if(jobs.begin(), jobs.end(), [](const JobOutcome& j) { return !j.started; }));
}
int BatchReport::succeeded() const {
  return static_cast<int>(jobs.size()) - failed() - cancelled_jobs() - skipped();
}
int BatchReport::output_errors() const {
  return static_cast<int>(std::count_if(
      jobs.begin(), jobs.end(), [](const JobOutcome& j) { return !j.output_error.empty(); }));
}

std::string EscapeForTerminal(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  char buf[8];
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    // C1 controls (CSI is U+009B) act like ESC sequences on many terminals.
    if (c == 0xC2 && i + 1 < text.size() &&
        (static_cast<unsigned char>(text[i + 1]) & 0xE0) == 0x80) {
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned char>(text[++i]));
      out += buf;
    } else if (c >= 0x20 && c != 0x7F) {
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else {
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

std::vector<std::string> OutputFileNames(const std::vector<Job>& jobs) {
  constexpr size_t kMaxName = 100;
  auto plain = [](unsigned char c) { return std::isalnum(c) || c == '.' || c == '_' || c == '-'; };
  std::vector<std::string> names(jobs.size());
  std::set<std::string, std::less<>> taken;
  // Plain ids first: they keep their own name whatever the other ids turn into.
  for (size_t i = 0; i < jobs.size(); ++i) {
    const std::string& id = jobs[i].id;
    if (!id.empty() && id.size() <= kMaxName && id[0] != '.' &&
        std::all_of(id.begin(), id.end(), plain) && taken.insert(id).second)
      names[i] = id;
  }
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (!names[i].empty()) continue;
    std::string base = jobs[i].id.substr(0, kMaxName);
    for (char& c : base)
      if (!plain(static_cast<unsigned char>(c))) c = '_';
    if (base.empty() || base[0] == '.') base.insert(0, "_");
    std::string name = base;
    for (int k = 0; taken.count(name) > 0; ++k)
      name = base + "~" + std::to_string(jobs[i].line) + (k > 0 ? "." + std::to_string(k) : "");
    taken.insert(name);
    names[i] = name;
  }
  return names;
}

namespace {

// Writes the job's captured streams side by side; returns why not, or "".
std::string WriteJobOutput(const std::string& base, const ProcessResult& result) {
  for (const auto& [suffix, data] :
       {std::pair{".stdout", &result.stdout_data}, std::pair{".stderr", &result.stderr_data}}) {
    const std::string path = base + suffix;
    // CLOEXEC: no fd leaks into jobs forked meanwhile. NOFOLLOW: a symlink planted under a
    // job's name does not send its output elsewhere.
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    std::FILE* f = fd < 0 ? nullptr : fdopen(fd, "w");
    if (f == nullptr) {
      const int err = errno;
      if (fd >= 0) close(fd);
      return path + ": " + std::generic_category().message(err);
    }
    const bool wrote = std::fwrite(data->data(), 1, data->size(), f) == data->size();
    int err = errno;
    const bool closed = std::fclose(f) == 0;
    if (wrote && !closed) err = errno;
    if (!wrote || !closed) return path + ": " + std::generic_category().message(err);
  }
  return {};
}

// One batch's run. The calling thread dispatches: it hands out slots to each lane's jobs in file
// order as the limits allow; worker threads run the granted jobs. Shared state is under mu_.
class BatchExecution {
 public:
  BatchExecution(ProcessRunner& runner, const BatchOptions& options, const std::vector<Job>& jobs,
                 const std::stop_token& cancel, std::atomic<bool>& progress_requested)
      : runner_(runner),
        manager_(runner.calls().manager()),
        options_(options),
        jobs_(jobs),
        cancel_(cancel),
        progress_requested_(progress_requested),
        forward_(cancel, [this] { stop_.request_stop(); }),
        undispatched_(jobs.size()) {
    report_.jobs.resize(jobs.size());
    for (size_t i = 0; i < jobs.size(); ++i) report_.jobs[i].job = &jobs[i];
    if (!options.output_dir.empty()) output_names_ = OutputFileNames(jobs);
    // Lanes in the order their first job appears; within a lane, file order.
    for (size_t i = 0; i < jobs.size(); ++i) {
      auto& queue = pending_[jobs[i].lane];
      if (queue.empty() &&
          std::find(lane_order_.begin(), lane_order_.end(), jobs[i].lane) == lane_order_.end())
        lane_order_.push_back(jobs[i].lane);
      queue.push_back(i);
    }
  }

  BatchReport Run() {
    const int limit = manager_.config().global_concurrency_limit;
    const size_t thread_count =
        std::min<size_t>(jobs_.size(), static_cast<size_t>(std::max(1, limit)));
    std::vector<std::thread> threads;
    threads.reserve(thread_count);
    for (size_t i = 0; i < thread_count; ++i) threads.emplace_back([this] { WorkerLoop(); });
    internal::MutexLock lock(mu_);
    Steady::time_point next_progress = Steady::now();
    for (;;) {
      const bool stopping = stop_.stop_requested();
      if (!stopping) DispatchPass();
      if ((stopping || undispatched_ == 0) && running_ == 0) break;
      const bool asked = progress_requested_.exchange(false);
      if (asked || Steady::now() >= next_progress) {
        PrintProgress(/*final_line=*/false, /*forced=*/asked);
        next_progress = Steady::now() + options_.progress_interval;
      }
      // Woken by a finished job; the timeout re-checks a memory-limit refusal, the progress and
      // a progress request.
      const int seen = finished_;
      dispatcher_cv_.WaitFor(lock, std::chrono::milliseconds(50), [&]() REQUIRES(mu_) {
        return finished_ != seen || stop_.stop_requested() != stopping;
      });
    }
    closing_ = true;
    PrintProgress(/*final_line=*/true, /*forced=*/false);
    lock.Unlock();
    worker_cv_.NotifyAll();
    for (std::thread& t : threads) t.join();
    report_.elapsed_ms = MsSince(start_);
    report_.cancelled = cancel_.stop_requested();
    report_.statistics = manager_.GetStatistics();
    return std::move(report_);
  }

 private:
  // One pass over the lanes: each hands out places in file order until its limit; a global
  // refusal ends the pass. Caller holds mu_.
  void DispatchPass() REQUIRES(mu_) {
    for (const std::string& lane : lane_order_)
      if (!DispatchLane(pending_[lane])) break;
  }

  // False when the refusal was global (all lanes full, or our own memory above maxRssMb), so
  // other lanes need not be tried. Caller holds mu_.
  bool DispatchLane(std::deque<size_t>& queue) REQUIRES(mu_) {
    while (!queue.empty()) {
      const size_t index = queue.front();
      const Job& job = jobs_[index];
      JobOutcome& outcome = report_.jobs[index];
      auto slot = manager_.TryAcquire(job.id, job.lane, job.timeout_ms, job.metadata);
      if (!slot.ok()) {
        const RejectReason reason = slot.error().rejection()->reason;
        if (reason == RejectReason::kLaneLimit) return true;
        // Our own RSS over maxRssMb comes down as jobs finish, but not with nothing running.
        if (reason == RejectReason::kGlobalLimit ||
            (reason == RejectReason::kMemoryLimit && running_ > 0))
          return false;
        // Nothing else clears by waiting: the job fails without running.
        outcome.result.error = slot.error().message();
        ++finished_;
        ++failed_;
        if (options_.fail_fast) stop_.request_stop();
      } else {
        outcome.queue_wait_ms = MsSince(start_);
        if (options_.on_queue_wait) options_.on_queue_wait(job, outcome.queue_wait_ms / 1000);
        work_.emplace_back(index, std::move(slot).value());
        ++running_;
        ++running_by_lane_[job.lane];
        worker_cv_.NotifyOne();
      }
      outcome.started = true;
      queue.pop_front();
      --undispatched_;
    }
    return true;
  }

  void WorkerLoop() {
    internal::MutexLock lock(mu_);
    for (;;) {
      worker_cv_.Wait(lock, [&]() REQUIRES(mu_) { return closing_ || !work_.empty(); });
      if (work_.empty()) return;
      auto [index, slot] = std::move(work_.front());
      work_.pop_front();
      lock.Unlock();
      if (stop_.stop_requested()) {
        // Granted just before a cancel or a fail-fast stop: hand the place back, run nothing.
        slot.Release(false, "cancelled");
        lock.Lock();
        report_.jobs[index].started = false;
        JobDone(jobs_[index], /*ran=*/false);
        continue;
      }
      ProcessResult result = RunJob(index, std::move(slot));
      lock.Lock();
      JobOutcome& outcome = report_.jobs[index];
      outcome.result = std::move(result);
      JobDone(jobs_[index], /*ran=*/true);
      if (outcome.cancelled()) {
        ++cancelled_;
      } else if (outcome.failed()) {
        ++failed_;
        PrintLine("FAILED " + EscapeForTerminal(outcome.job->id) + " [" +
                  EscapeForTerminal(outcome.job->lane) +
                  "]: " + EscapeForTerminal(outcome.result.Reason()));
        if (options_.fail_fast) stop_.request_stop();
      }
      if (!outcome.output_error.empty())
        PrintLine("laneguard batch: --output: " + EscapeForTerminal(outcome.output_error),
                  /*always=*/true);
    }
  }

  // Runs the job's program to its end, without mu_; fills in the outcome's times and files.
  ProcessResult RunJob(size_t index, Slot slot) {
    const Job& job = jobs_[index];
    ProcessSpec spec = job.spec;
    spec.stdin_null = true;  // jobs share our terminal; a job reading it would stop (SIGTTIN)
    spec.capture_output = true;
    spec.max_capture_bytes = output_names_.empty() ? size_t{1} << 20 : kMaxJobOutputBytes;
    CallOptions call;
    call.lane = job.lane;
    call.timeout_ms = job.timeout_ms;
    call.metadata = job.metadata;
    JobOutcome& outcome = report_.jobs[index];
    outcome.start_ms = MsSince(start_);
    ProcessResult result =
        runner_.RunWithSlot(std::move(slot), job.id, spec, call, stop_.get_token());
    outcome.end_ms = MsSince(start_);
    if (!output_names_.empty() && result.pid > 0) {
      outcome.output_file = options_.output_dir + "/" + output_names_[index];
      outcome.output_error = WriteJobOutput(outcome.output_file, result);
    }
    if (options_.stdout_lines > 0 && result.pid > 0)
      outcome.stdout_lines = LastLines(result.stdout_data, options_.stdout_lines);
    // Only a tail of stderr is reported; the rest would only hold memory for the whole batch.
    result.stdout_data.clear();
    result.stdout_data.shrink_to_fit();
    if (result.stderr_data.size() > kStderrTail)
      result.stderr_data.erase(0, result.stderr_data.size() - kStderrTail);
    result.stderr_data.shrink_to_fit();
    return result;
  }

  void JobDone(const Job& job, bool ran) REQUIRES(mu_) {
    --running_;
    --running_by_lane_[job.lane];
    if (ran) ++finished_;
    dispatcher_cv_.NotifyAll();
  }

  // A line among the progress output (the bar is cleared first); `always` even without progress.
  void PrintLine(const std::string& text, bool always = false) REQUIRES(mu_) {
    if (options_.progress == BatchOptions::Progress::kNone && !always) return;
    Emit((options_.progress == BatchOptions::Progress::kBar ? "\r\033[K" : "") + text + "\n");
  }

  void PrintProgress(bool final_line, bool forced) REQUIRES(mu_) {
    BatchOptions::Progress mode = options_.progress;
    if (mode == BatchOptions::Progress::kNone) {
      if (!forced) return;
      mode = BatchOptions::Progress::kLines;
    }
    const double elapsed = MsSince(start_);
    const size_t total = jobs_.size();
    std::string lanes;
    for (const auto& [lane, count] : running_by_lane_)
      if (count > 0) lanes += " " + EscapeForTerminal(lane) + ":" + std::to_string(count);
    std::string eta = "--:--";
    if (finished_ > 0 && static_cast<size_t>(finished_) < total)
      eta = FormatClock(elapsed / finished_ * static_cast<double>(total - finished_));
    std::string counts = std::to_string(finished_) + "/" + std::to_string(total) + " done, " +
                         std::to_string(failed_) + " failed";
    if (cancelled_ > 0) counts += ", " + std::to_string(cancelled_) + " cancelled";
    std::string line;
    if (mode == BatchOptions::Progress::kBar) {
      constexpr int kWidth = 24;
      const int filled =
          total ? static_cast<int>(size_t{kWidth} * static_cast<size_t>(finished_) / total)
                : kWidth;
      std::string bar(filled, '#');
      bar.resize(kWidth, '.');
      line = "\r\033[K[" + bar + "] " + counts;
    } else {
      line = "progress: " + counts;
    }
    line += " | running" + (lanes.empty() ? std::string(" none") : lanes) + " | " +
            FormatClock(elapsed) + " elapsed, ETA " + eta;
    if (mode != BatchOptions::Progress::kBar || final_line) line += "\n";
    Emit(line);
  }

  // A failed write (EPIPE from `| head`, a full disk) ends our printing, never the jobs.
  void Emit(const std::string& text) REQUIRES(mu_) {
    if (progress_broken_) return;
    std::fputs(text.c_str(), options_.progress_stream);
    std::fflush(options_.progress_stream);
    if (std::ferror(options_.progress_stream)) progress_broken_ = true;
  }

  ProcessRunner& runner_;
  ResourceBudgetManager& manager_;
  const BatchOptions& options_;
  const std::vector<Job>& jobs_;
  const std::stop_token cancel_;
  std::atomic<bool>& progress_requested_;
  const Steady::time_point start_ = Steady::now();
  std::vector<std::string> output_names_;  // empty without an output directory
  // Not under mu_: a job's outcome is written by the dispatcher before it is queued and by the
  // one worker running it after (the queue under mu_ hands it over); the rest after the join.
  BatchReport report_;
  // Stops the running jobs: the caller's cancel (a signal) or the first failure with fail_fast.
  std::stop_source stop_;
  std::stop_callback<std::function<void()>> forward_;

  internal::Mutex mu_;
  internal::CondVar dispatcher_cv_, worker_cv_;
  std::deque<std::pair<size_t, Slot>> work_ GUARDED_BY(mu_);  // granted, waiting for a worker
  std::map<std::string, int, std::less<>> running_by_lane_ GUARDED_BY(mu_);
  int running_ GUARDED_BY(mu_) = 0;
  int finished_ GUARDED_BY(mu_) = 0;
  int failed_ GUARDED_BY(mu_) = 0;
  int cancelled_ GUARDED_BY(mu_) = 0;
  size_t undispatched_ GUARDED_BY(mu_);
  bool closing_ GUARDED_BY(mu_) = false;
  bool progress_broken_ GUARDED_BY(mu_) = false;
  // Set up by the constructor, then read by the dispatcher only.
  std::vector<std::string> lane_order_;
  std::map<std::string, std::deque<size_t>, std::less<>> pending_ GUARDED_BY(mu_);
};

}  // namespace

BatchRunner::BatchRunner(ProcessRunner& runner, BatchOptions options)
    : runner_(runner), options_(std::move(options)) {}

BatchReport BatchRunner::Run(const std::vector<Job>& jobs, const std::stop_token& cancel) {
  return BatchExecution(runner_, options_, jobs, cancel, progress_requested_).Run();
}

// ---- summary ------------------------------------------------------------------------------------

namespace {

struct LaneSummary {
  int jobs = 0, ok = 0, failed = 0, cancelled = 0, skipped = 0, timeouts = 0, max_overlap = 0;
  double total_ms = 0, max_ms = 0;
};

// Most jobs of a lane running at the same moment, from their start and end times.
std::map<std::string, LaneSummary> SummarizeLanes(const BatchReport& report) {
  std::map<std::string, LaneSummary> lanes;
  std::map<std::string, std::vector<std::pair<double, int>>> edges;
  for (const JobOutcome& j : report.jobs) {
    LaneSummary& s = lanes[j.job->lane];
    ++s.jobs;
    if (!j.started) {
      ++s.skipped;
      continue;
    }
    if (j.result.success())
      ++s.ok;
    else if (j.cancelled())
      ++s.cancelled;
    else
      ++s.failed;
    if (j.result.outcome == ProcessOutcome::kTimedOut) ++s.timeouts;
    s.total_ms += j.result.duration_ms;
    s.max_ms = std::max(s.max_ms, j.result.duration_ms);
    if (j.result.pid > 0) {
      edges[j.job->lane].push_back({j.start_ms, +1});
      edges[j.job->lane].push_back({j.end_ms, -1});
    }
  }
  for (auto& [lane, e] : edges) {
    std::sort(e.begin(), e.end());  // an end (-1) sorts before a start at the same time
    int now = 0;
    for (const auto& [t, d] : e)
      lanes[lane].max_overlap = std::max(lanes[lane].max_overlap, now += d);
  }
  return lanes;
}

std::vector<const JobOutcome*> Slowest(const BatchReport& report, size_t n) {
  std::vector<const JobOutcome*> started;
  for (const JobOutcome& j : report.jobs)
    if (j.started && j.result.pid > 0) started.push_back(&j);
  std::sort(started.begin(), started.end(), [](const JobOutcome* a, const JobOutcome* b) {
    return a->result.duration_ms > b->result.duration_ms;
  });
  if (started.size() > n) started.resize(n);
  return started;
}

std::string FailureReason(const JobOutcome& j) {
  if (!j.result.error.empty() && j.result.pid == 0) return j.result.error;
  std::string reason = j.result.Reason();
  const std::string err = LastLine(j.result.stderr_data);
  if (!err.empty()) reason += " — stderr: " + err;
  return reason;
}

}  // namespace

// Every string from a job file or a job is escaped here: ids, lanes and stderr reach a terminal.
void PrintSummaryTable(const BatchReport& report, const Config& config, std::FILE* out) {
  const Statistics& s = report.statistics;
  std::fprintf(out,
               "\nlaneguard batch: %zu jobs: %d succeeded, %d failed, %d cancelled, %d skipped in "
               "%.1f s%s\n",
               report.jobs.size(), report.succeeded(), report.failed(), report.cancelled_jobs(),
               report.skipped(), report.elapsed_ms / 1000, report.cancelled ? " (cancelled)" : "");
  std::fprintf(
      out,
      "\nStatistics\n  totalCalls %lld  successCount %lld  failureCount %lld  timeoutCount "
      "%lld  escalations %lld\n  averageDurationMs %.1f  p50 %.1f  p95 %.1f  p99 %.1f  "
      "averageRssDeltaMb %.2f  maxConcurrentCalls %d\n",
      static_cast<long long>(s.total_calls), static_cast<long long>(s.success_count),
      static_cast<long long>(s.failure_count), static_cast<long long>(s.timeout_count),
      static_cast<long long>(s.escalation_count), s.average_duration_ms, s.p50_duration_ms,
      s.p95_duration_ms, s.p99_duration_ms, s.average_rss_delta_mb, s.max_concurrent_calls);
  std::fprintf(out, "\n  %-16s %5s %5s %5s %6s %9s %7s %8s %9s %9s %11s\n", "lane", "limit", "jobs",
               "ok", "failed", "cancelled", "skipped", "timeouts", "avg ms", "max ms",
               "max running");
  for (const auto& [lane, l] : SummarizeLanes(report)) {
    auto limit = config.lane_concurrency_limits.find(lane);
    const int started = l.ok + l.failed + l.cancelled;
    std::fprintf(out, "  %-16s %5d %5d %5d %6d %9d %7d %8d %9.1f %9.1f %11d\n",
                 EscapeForTerminal(lane).c_str(),
                 limit == config.lane_concurrency_limits.end() ? 0 : limit->second, l.jobs, l.ok,
                 l.failed, l.cancelled, l.skipped, l.timeouts, started ? l.total_ms / started : 0.0,
                 l.max_ms, l.max_overlap);
  }
  std::fprintf(out, "\nSlowest\n");
  for (const JobOutcome* j : Slowest(report, 5))
    std::fprintf(out, "  %-24s %-16s %9.1f ms  %s\n", EscapeForTerminal(j->job->id).c_str(),
                 EscapeForTerminal(j->job->lane).c_str(), j->result.duration_ms,
                 std::string(ToString(j->result.outcome)).c_str());
  if (report.failed() > 0) {
    std::fprintf(out, "\nFailures\n");
    for (const JobOutcome& j : report.jobs)
      if (j.failed())
        std::fprintf(out, "  %-24s %-16s exit %3d  %s\n", EscapeForTerminal(j.job->id).c_str(),
                     EscapeForTerminal(j.job->lane).c_str(), j.result.ShellStatus(),
                     EscapeForTerminal(FailureReason(j)).c_str());
  }
  if (report.output_errors() > 0) {
    std::fprintf(out, "\nOutput not saved\n");
    for (const JobOutcome& j : report.jobs)
      if (!j.output_error.empty())
        std::fprintf(out, "  %-24s %s\n", EscapeForTerminal(j.job->id).c_str(),
                     EscapeForTerminal(j.output_error).c_str());
  }
  std::fflush(out);
}

std::string SummaryJson(const BatchReport& report, const Config& config) {
  using nlohmann::json;
  const Statistics& s = report.statistics;
  json out;
  out["jobs"] = report.jobs.size();
  out["succeeded"] = report.succeeded();
  out["failed"] = report.failed();
  out["cancelledJobs"] = report.cancelled_jobs();  // "cancelled" says whether the batch was
  out["skipped"] = report.skipped();
  out["elapsedMs"] = report.elapsed_ms;
  out["cancelled"] = report.cancelled;
  out["statistics"] = {{"totalCalls", s.total_calls},
                       {"successCount", s.success_count},
                       {"failureCount", s.failure_count},
                       {"averageDurationMs", s.average_duration_ms},
                       {"averageRssDeltaMb", s.average_rss_delta_mb},
                       {"maxConcurrentCalls", s.max_concurrent_calls},
                       {"timeoutCount", s.timeout_count},
                       {"escalationCount", s.escalation_count},
                       {"p50DurationMs", s.p50_duration_ms},
                       {"p95DurationMs", s.p95_duration_ms},
                       {"p99DurationMs", s.p99_duration_ms}};
  json lanes = json::object();
  for (const auto& [lane, l] : SummarizeLanes(report)) {
    auto limit = config.lane_concurrency_limits.find(lane);
    const int started = l.ok + l.failed + l.cancelled;
    lanes[lane] = {{"limit", limit == config.lane_concurrency_limits.end() ? 0 : limit->second},
                   {"jobs", l.jobs},
                   {"succeeded", l.ok},
                   {"failed", l.failed},
                   {"cancelled", l.cancelled},
                   {"skipped", l.skipped},
                   {"timeouts", l.timeouts},
                   {"averageDurationMs", started ? l.total_ms / started : 0.0},
                   {"maxDurationMs", l.max_ms},
                   {"maxRunning", l.max_overlap}};
  }
  out["lanes"] = lanes;
  json slowest = json::array();
  for (const JobOutcome* j : Slowest(report, 5))
    slowest.push_back({{"id", j->job->id},
                       {"lane", j->job->lane},
                       {"durationMs", j->result.duration_ms},
                       {"outcome", ToString(j->result.outcome)}});
  out["slowest"] = slowest;
  json results = json::array();
  for (const JobOutcome& j : report.jobs) {
    json r = {{"id", j.job->id}, {"lane", j.job->lane}, {"line", j.job->line}};
    if (!j.started) {
      r["outcome"] = "skipped";
    } else {
      r["outcome"] = ToString(j.result.outcome);
      r["status"] = j.result.ShellStatus();
      r["durationMs"] = j.result.duration_ms;
      r["queueWaitMs"] = j.queue_wait_ms;
      r["peakRssBytes"] = j.result.peak_rss_bytes;
      r["timeoutPhase"] = ToString(j.result.timeout_phase);
      r["oomKilled"] = j.result.oom_killed;
      if (!j.result.success()) r["reason"] = FailureReason(j);
      if (!j.output_file.empty()) {
        r["stdoutFile"] = j.output_file + ".stdout";
        r["stderrFile"] = j.output_file + ".stderr";
        if (j.result.dropped_output_bytes > 0)
          r["outputDroppedBytes"] = j.result.dropped_output_bytes;
      }
      if (!j.output_error.empty()) r["outputError"] = j.output_error;
      if (j.stdout_lines) r["stdoutLines"] = *j.stdout_lines;
    }
    results.push_back(std::move(r));
  }
  out["results"] = results;
  // Job output is whatever the job printed: invalid UTF-8 is replaced, never a reason to fail.
  return out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace laneguard::cli
