#include "cli/batch.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

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

}  // namespace

int BatchReport::failed() const {
  return static_cast<int>(std::count_if(jobs.begin(), jobs.end(), [](const JobOutcome& j) {
    return j.started && !j.result.success();
  }));
}
int BatchReport::skipped() const {
  return static_cast<int>(
      std::count_if(jobs.begin(), jobs.end(), [](const JobOutcome& j) { return !j.started; }));
}
int BatchReport::succeeded() const { return static_cast<int>(jobs.size()) - failed() - skipped(); }

BatchRunner::BatchRunner(ProcessRunner& runner, BatchOptions options)
    : runner_(runner), options_(std::move(options)) {}

BatchReport BatchRunner::Run(const std::vector<Job>& jobs, const std::stop_token& cancel) {
  ResourceBudgetManager& manager = runner_.calls().manager();
  BatchReport report;
  report.jobs.resize(jobs.size());
  for (size_t i = 0; i < jobs.size(); ++i) report.jobs[i].job = &jobs[i];
  const Steady::time_point start = Steady::now();

  // Stops the running jobs: the caller's cancel (a signal) or the first failure with fail_fast.
  std::stop_source stop;
  std::stop_callback forward(cancel, [&stop] { stop.request_stop(); });

  std::mutex mu;
  std::condition_variable dispatcher_cv, worker_cv;
  std::deque<std::pair<size_t, Slot>> work;  // granted, waiting for a worker thread
  std::map<std::string, int, std::less<>> running_by_lane;
  int running = 0, finished = 0, failed = 0;
  bool closing = false;

  // Lanes in the order their first job appears; within a lane, file order.
  std::vector<std::string> lane_order;
  std::map<std::string, std::deque<size_t>, std::less<>> pending;
  for (size_t i = 0; i < jobs.size(); ++i) {
    auto& queue = pending[jobs[i].lane];
    if (queue.empty() &&
        std::find(lane_order.begin(), lane_order.end(), jobs[i].lane) == lane_order.end())
      lane_order.push_back(jobs[i].lane);
    queue.push_back(i);
  }

  auto worker = [&] {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      worker_cv.wait(lock, [&] { return closing || !work.empty(); });
      if (work.empty()) return;
      auto [index, slot] = std::move(work.front());
      work.pop_front();
      lock.unlock();
      const Job& job = jobs[index];
      if (stop.stop_requested()) {
        // Granted just before a cancel or a fail-fast stop: hand the place back, run nothing.
        slot.Release(false, "cancelled");
        lock.lock();
        report.jobs[index].started = false;
        --running;
        --running_by_lane[job.lane];
        dispatcher_cv.notify_all();
        continue;
      }
      ProcessSpec spec = job.spec;
      spec.stdin_null = true;  // jobs share our terminal; a job reading it would stop (SIGTTIN)
      spec.capture_output = true;
      spec.max_capture_bytes = 1 << 20;
      CallOptions call;
      call.lane = job.lane;
      call.timeout_ms = job.timeout_ms;
      call.metadata = job.metadata;
      JobOutcome& outcome = report.jobs[index];
      outcome.start_ms = MsSince(start);
      ProcessResult result =
          runner_.RunWithSlot(std::move(slot), job.id, spec, call, stop.get_token());
      const double end_ms = MsSince(start);
      // Only a tail of stderr is reported; the rest would only hold memory for the whole batch.
      result.stdout_data.clear();
      result.stdout_data.shrink_to_fit();
      if (result.stderr_data.size() > kStderrTail)
        result.stderr_data.erase(0, result.stderr_data.size() - kStderrTail);
      result.stderr_data.shrink_to_fit();
      lock.lock();
      outcome.result = std::move(result);
      outcome.end_ms = end_ms;
      --running;
      --running_by_lane[job.lane];
      ++finished;
      if (!outcome.result.success()) {
        ++failed;
        if (options_.progress != BatchOptions::Progress::kNone) {
          std::fprintf(options_.progress_stream, "%sFAILED %s [%s]: %s\n",
                       options_.progress == BatchOptions::Progress::kBar ? "\r\033[K" : "",
                       job.id.c_str(), job.lane.c_str(), outcome.result.Reason().c_str());
        }
        if (options_.fail_fast) stop.request_stop();
      }
      dispatcher_cv.notify_all();
    }
  };
  const int limit = manager.config().global_concurrency_limit;
  const size_t thread_count =
      std::min<size_t>(jobs.size(), static_cast<size_t>(std::max(1, limit)));
  std::vector<std::thread> threads;
  threads.reserve(thread_count);
  for (size_t i = 0; i < thread_count; ++i) threads.emplace_back(worker);

  auto print_progress = [&](bool final_line) {  // caller holds mu
    if (options_.progress == BatchOptions::Progress::kNone) return;
    const double elapsed = MsSince(start);
    const size_t total = jobs.size();
    std::string lanes;
    for (const auto& [lane, count] : running_by_lane)
      if (count > 0) lanes += " " + lane + ":" + std::to_string(count);
    std::string eta = "--:--";
    if (finished > 0 && static_cast<size_t>(finished) < total)
      eta = FormatClock(elapsed / finished * static_cast<double>(total - finished));
    char head[160];
    if (options_.progress == BatchOptions::Progress::kBar) {
      constexpr int kWidth = 24;
      const int filled =
          total ? static_cast<int>(size_t{kWidth} * static_cast<size_t>(finished) / total) : kWidth;
      std::string bar(filled, '#');
      bar.resize(kWidth, '.');
      std::snprintf(head, sizeof head, "\r\033[K[%s] %d/%zu done, %d failed", bar.c_str(), finished,
                    total, failed);
    } else {
      std::snprintf(head, sizeof head, "progress: %d/%zu done, %d failed", finished, total, failed);
    }
    std::fprintf(options_.progress_stream, "%s | running%s | %s elapsed, ETA %s%s", head,
                 lanes.empty() ? " none" : lanes.c_str(), FormatClock(elapsed).c_str(), eta.c_str(),
                 options_.progress == BatchOptions::Progress::kBar && !final_line ? "" : "\n");
    std::fflush(options_.progress_stream);
  };

  size_t undispatched = jobs.size();
  // Hands out places to the lane's queued jobs (caller holds mu). False when the refusal was
  // global (all lanes full, or our own memory above maxRssMb), so other lanes need not be tried.
  auto dispatch_lane = [&](std::deque<size_t>& queue) {
    while (!queue.empty()) {
      const size_t index = queue.front();
      const Job& job = jobs[index];
      JobOutcome& outcome = report.jobs[index];
      auto slot = manager.TryAcquire(job.id, job.lane, job.timeout_ms, job.metadata);
      if (!slot.ok()) {
        const RejectReason reason = slot.error().reason;
        if (reason == RejectReason::kLaneLimit) return true;
        // Our own RSS over maxRssMb comes down as jobs finish, but not with nothing running.
        if (reason == RejectReason::kGlobalLimit ||
            (reason == RejectReason::kMemoryLimit && running > 0))
          return false;
        // Nothing else clears by waiting: the job fails without running.
        outcome.result.error = slot.error().message();
        ++finished;
        ++failed;
        if (options_.fail_fast) stop.request_stop();
      } else {
        outcome.queue_wait_ms = MsSince(start);
        if (options_.on_queue_wait) options_.on_queue_wait(job, outcome.queue_wait_ms / 1000);
        work.emplace_back(index, std::move(slot).value());
        ++running;
        ++running_by_lane[job.lane];
        worker_cv.notify_one();
      }
      outcome.started = true;
      queue.pop_front();
      --undispatched;
    }
    return true;
  };

  std::unique_lock<std::mutex> lock(mu);
  Steady::time_point next_progress = Steady::now();
  for (;;) {
    const bool stopping = stop.stop_requested();
    // One pass over the lanes: each hands out places in file order until its limit; a global
    // refusal ends the pass.
    for (const std::string& lane : lane_order) {
      if (stopping || !dispatch_lane(pending[lane])) break;
    }
    if ((stopping || undispatched == 0) && running == 0) break;
    if (Steady::now() >= next_progress) {
      print_progress(false);
      next_progress = Steady::now() + options_.progress_interval;
    }
    // Woken by a finished job; the timeout re-checks a memory-limit refusal and the progress.
    const int seen = finished;
    dispatcher_cv.wait_for(lock, std::chrono::milliseconds(50),
                           [&] { return finished != seen || stop.stop_requested() != stopping; });
  }
  closing = true;
  print_progress(true);
  lock.unlock();
  worker_cv.notify_all();
  for (std::thread& t : threads) t.join();
  report.elapsed_ms = MsSince(start);
  report.cancelled = cancel.stop_requested();
  report.statistics = manager.GetStatistics();
  return report;
}

// ---- summary ------------------------------------------------------------------------------------

namespace {

struct LaneSummary {
  int jobs = 0, ok = 0, failed = 0, skipped = 0, timeouts = 0, max_overlap = 0;
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

void PrintSummaryTable(const BatchReport& report, const Config& config, std::FILE* out) {
  const Statistics& s = report.statistics;
  std::fprintf(out,
               "\nlaneguard batch: %zu jobs: %d succeeded, %d failed, %d skipped in %.1f s%s\n",
               report.jobs.size(), report.succeeded(), report.failed(), report.skipped(),
               report.elapsed_ms / 1000, report.cancelled ? " (cancelled)" : "");
  std::fprintf(
      out,
      "\nStatistics\n  totalCalls %lld  successCount %lld  failureCount %lld  timeoutCount "
      "%lld  escalations %lld\n  averageDurationMs %.1f  p50 %.1f  p95 %.1f  p99 %.1f  "
      "averageRssDeltaMb %.2f  maxConcurrentCalls %d\n",
      static_cast<long long>(s.total_calls), static_cast<long long>(s.success_count),
      static_cast<long long>(s.failure_count), static_cast<long long>(s.timeout_count),
      static_cast<long long>(s.escalation_count), s.average_duration_ms, s.p50_duration_ms,
      s.p95_duration_ms, s.p99_duration_ms, s.average_rss_delta_mb, s.max_concurrent_calls);
  std::fprintf(out, "\n  %-16s %5s %5s %5s %6s %7s %8s %9s %9s %11s\n", "lane", "limit", "jobs",
               "ok", "failed", "skipped", "timeouts", "avg ms", "max ms", "max running");
  for (const auto& [lane, l] : SummarizeLanes(report)) {
    auto limit = config.lane_concurrency_limits.find(lane);
    const int started = l.ok + l.failed;
    std::fprintf(out, "  %-16s %5d %5d %5d %6d %7d %8d %9.1f %9.1f %11d\n", lane.c_str(),
                 limit == config.lane_concurrency_limits.end() ? 0 : limit->second, l.jobs, l.ok,
                 l.failed, l.skipped, l.timeouts, started ? l.total_ms / started : 0.0, l.max_ms,
                 l.max_overlap);
  }
  std::fprintf(out, "\nSlowest\n");
  for (const JobOutcome* j : Slowest(report, 5))
    std::fprintf(out, "  %-24s %-16s %9.1f ms  %s\n", j->job->id.c_str(), j->job->lane.c_str(),
                 j->result.duration_ms, std::string(ToString(j->result.outcome)).c_str());
  if (report.failed() > 0) {
    std::fprintf(out, "\nFailures\n");
    for (const JobOutcome& j : report.jobs)
      if (j.started && !j.result.success())
        std::fprintf(out, "  %-24s %-16s exit %3d  %s\n", j.job->id.c_str(), j.job->lane.c_str(),
                     j.result.ShellStatus(), FailureReason(j).c_str());
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
    const int started = l.ok + l.failed;
    lanes[lane] = {{"limit", limit == config.lane_concurrency_limits.end() ? 0 : limit->second},
                   {"jobs", l.jobs},
                   {"succeeded", l.ok},
                   {"failed", l.failed},
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
    }
    results.push_back(std::move(r));
  }
  out["results"] = results;
  // Job output is whatever the job printed: invalid UTF-8 is replaced, never a reason to fail.
  return out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace laneguard::cli
