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
#include "laneguard/observer.h"

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

// Fail-fast's watch on the batch's own calls. A failed job's release hands its place straight to
// the next waiting job, before the failed job's worker can report the failure; the manager tells
// observers of a release before it hands the place on, so a worker that checks this first never
// starts a job on the place of a failure. The manager keeps it after the batch (observers cannot
// be removed); by then it watches no call.
class FailureWatch final : public Observer {
 public:
  void Watch(uint64_t call_id) {
    internal::MutexLock lock(mu_);
    calls_.insert(call_id);
  }
  void Clear() {
    internal::MutexLock lock(mu_);
    calls_.clear();
  }
  bool failed() const { return failed_.load(std::memory_order_acquire); }
  void OnEvent(const CallEvent& event) override {
    if (event.kind != EventKind::kReleased) return;
    internal::MutexLock lock(mu_);
    if (calls_.erase(event.call_id) > 0 && event.record != nullptr && !event.record->success)
      failed_.store(true, std::memory_order_release);
  }

 private:
  internal::Mutex mu_;
  std::set<uint64_t> calls_ GUARDED_BY(mu_);
  std::atomic<bool> failed_{false};
};

// One batch's run. The jobs wait for their places in the manager's lane queues (AcquireAsync, in
// priority then file order), not in a dispatcher of our own: the manager decides who goes next.
// The calling thread is the batch's loop: it asks for places, takes the answers the callbacks
// post to its inbox, hands granted jobs to the worker threads (one per place the global limit
// allows, none per waiting job) and prints progress. Locks: mu_ (the work queue and counts), then
// inbox_mu_ (the answers), never the other way: a callback takes only inbox_mu_, so a release, a
// stop request or an ask may run it with mu_ held or not.
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
        undispatched_(jobs.size()),
        forward_(cancel, [this] {
          stop_.request_stop();
          Wake();
        }) {
    report_.jobs.resize(jobs.size());
    for (size_t i = 0; i < jobs.size(); ++i) report_.jobs[i].job = &jobs[i];
    if (!options.output_dir.empty()) output_names_ = OutputFileNames(jobs);
    if (options.leases) {
      internal::MutexLock lock(leases_mu_);
      leases_.resize(jobs.size());
    }
    SetUpLanes();
    if (options.fail_fast) {
      watch_ = std::make_shared<FailureWatch>();
      manager_.AddObserver(watch_);
    }
    // An answer per ask outstanding at most: the callbacks never allocate.
    inbox_.reserve(jobs.size());
    answers_.reserve(jobs.size());
  }

  BatchReport Run() {
    const int limit = manager_.config().global_concurrency_limit;
    const size_t thread_count =
        std::min<size_t>(jobs_.size(), static_cast<size_t>(std::max(1, limit)));
    std::vector<std::thread> threads;
    threads.reserve(thread_count);
    for (size_t i = 0; i < thread_count; ++i) threads.emplace_back([this] { WorkerLoop(); });
    Steady::time_point next_progress = Steady::now();
    for (;;) {
      const bool stopping = stop_.stop_requested();
      if (!stopping) Ask();
      TakeAnswers();
      internal::MutexLock lock(mu_);
      for (Answer& answer : answers_) OnAnswer(answer.index, std::move(answer.slot));
      answers_.clear();
      if ((stopping || undispatched_ == 0) && asked_total_ == 0 && running_ == 0) break;
      const bool asked = progress_requested_.exchange(false);
      if (asked || Steady::now() >= next_progress) {
        PrintProgress(/*final_line=*/false, /*forced=*/asked);
        next_progress = Steady::now() + options_.progress_interval;
      }
      lock.Unlock();
      // Woken by an answer or a finished job; the timeout re-asks after a memory-limit refusal,
      // and prints the progress and a progress request.
      WaitForEvent(stopping);
    }
    if (watch_) watch_->Clear();
    internal::MutexLock lock(mu_);
    closing_ = true;
    PrintProgress(/*final_line=*/true, /*forced=*/false);
    lock.Unlock();
    worker_cv_.NotifyAll();
    for (std::thread& t : threads) t.join();
    for (std::thread& t : lease_threads_) t.join();
    // Whatever lease is still held (granted as the batch was stopped) goes back.
    for (size_t i = 0; i < jobs_.size(); ++i)
      ReleaseLease(i, {.success = false, .error_type = "cancelled", .rss_mb = std::nullopt});
    report_.elapsed_ms = MsSince(start_);
    report_.cancelled = cancel_.stop_requested();
    report_.statistics = manager_.GetStatistics();
    return std::move(report_);
  }

 private:
  // A lane's jobs not yet asked for, by their place in the start order.
  struct Lane {
    std::set<size_t> pending;
    int asked = 0;  // asks not answered yet
    int max_asked = 1;
  };
  struct Answer {
    size_t index;
    Result<Slot> slot;
  };

  // The start order (priority, then file order) and each lane's share of it. A lane has at most
  // its queue limit of asks outstanding (at least one), so our own asks never find its queue
  // full; the rest wait here, in the same order.
  void SetUpLanes() {
    order_.resize(jobs_.size());
    for (size_t i = 0; i < jobs_.size(); ++i) order_[i] = i;
    std::stable_sort(order_.begin(), order_.end(),
                     [&](size_t a, size_t b) { return jobs_[a].priority > jobs_[b].priority; });
    const Config& config = manager_.config();
    std::map<std::string_view, size_t> lane_index;
    lane_of_.resize(jobs_.size());
    rank_of_.resize(jobs_.size());
    for (size_t rank = 0; rank < order_.size(); ++rank) {
      const Job& job = jobs_[order_[rank]];
      auto [it, added] = lane_index.emplace(job.lane, lanes_.size());
      if (added) {
        auto queue_limit = config.lane_queue_limits.find(job.lane);
        int max_asked =
            std::max(1, queue_limit == config.lane_queue_limits.end() ? config.default_queue_limit
                                                                      : queue_limit->second);
        // Under leases each ask is a thread and a connection parked on the daemon: twice the
        // lane's limit keeps the next jobs ready without a thread per queued job.
        if (options_.leases) {
          auto limit = config.lane_concurrency_limits.find(job.lane);
          if (limit != config.lane_concurrency_limits.end())
            max_asked = std::min(max_asked, 2 * std::max(1, limit->second));
        }
        lanes_.emplace_back().max_asked = max_asked;
      }
      lane_of_[order_[rank]] = it->second;
      rank_of_[order_[rank]] = rank;
      lanes_[it->second].pending.insert(rank);
    }
  }

  // Asks for a place for every job its lane has room to queue, in start order. A job put back
  // after a refusal is asked again after the next event (an answer, a finished job) or 50 ms.
  void Ask() {
    for (Lane& lane : lanes_) {
      while (!lane.pending.empty() && lane.asked < lane.max_asked) {
        const size_t index = order_[*lane.pending.begin()];
        lane.pending.erase(lane.pending.begin());
        ++lane.asked;
        ++asked_total_;
        if (options_.leases && !HoldsLease(index)) {
          // The lease first, on a thread of its own: the wait for the daemon holds no place here.
          lease_threads_.emplace_back([this, index] { LeaseThenAsk(index); });
          continue;
        }
        AskLocally(index);
      }
    }
  }

  // On the loop's thread, or on a lease thread once the job holds its lease.
  void AskLocally(size_t index) {
    const Job& job = jobs_[index];
    AcquireOptions ask;
    ask.timeout_ms = job.timeout_ms;
    // Under a lease, the lease's timeout (the daemon's phases) is the call's.
    if (const std::optional<Lease> lease = LeaseOf(index); lease && lease->timeout_ms > 0)
      ask.timeout_ms = lease->timeout_ms;
    ask.priority = job.priority;
    ask.metadata = job.metadata;
    ask.stop_token = stop_.get_token();  // a cancel or fail-fast refuses the waiting jobs
    manager_.AcquireAsync(job.id, job.lane, std::move(ask),
                          [this, index](Result<Slot> slot) { Post(index, std::move(slot)); });
  }

  // The callback: posts the answer to the loop, which starts the job (never from here: this may
  // run on another job's worker as it releases its place, or on the thread stopping the batch).
  void Post(size_t index, Result<Slot> slot) {
    internal::MutexLock lock(inbox_mu_);
    inbox_.push_back({index, std::move(slot)});
    inbox_cv_.NotifyAll();
  }

  void Wake() {
    internal::MutexLock lock(inbox_mu_);
    ++events_;
    inbox_cv_.NotifyAll();
  }

  void TakeAnswers() {
    internal::MutexLock lock(inbox_mu_);
    answers_.swap(inbox_);  // both keep their reserved capacity
    seen_events_ = events_;
  }

  void WaitForEvent(bool stopping) {
    internal::MutexLock lock(inbox_mu_);
    inbox_cv_.WaitFor(lock, std::chrono::milliseconds(50), [&]() REQUIRES(inbox_mu_) {
      return !inbox_.empty() || events_ != seen_events_ || stop_.stop_requested() != stopping;
    });
  }

  // A granted job goes to a worker; a refusal that clears by waiting puts the job back in its
  // lane's turn; a cancelled one (stopping) stays not started; any other fails the job unrun.
  void OnAnswer(size_t index, Result<Slot> slot) REQUIRES(mu_) {
    Lane& lane = lanes_[lane_of_[index]];
    --lane.asked;
    --asked_total_;
    const Job& job = jobs_[index];
    JobOutcome& outcome = report_.jobs[index];
    if (slot.ok()) {
      outcome.queue_wait_ms = MsSince(start_);
      outcome.wait_ms = static_cast<double>(slot->wait_nanos()) / 1e6;
      if (options_.on_queue_wait) options_.on_queue_wait(job, outcome.queue_wait_ms / 1000);
      if (watch_) watch_->Watch(slot->call_id());
      work_.emplace_back(index, std::move(slot).value());
      ++running_;
      ++running_by_lane_[job.lane];
      worker_cv_.NotifyOne();
    } else {
      const Rejection* rejection = slot.error().rejection();
      // Not a local refusal: the daemon refused the lease, or could not be asked.
      const RejectReason reason =
          rejection == nullptr ? RejectReason::kUnknownLane : rejection->reason;
      if (reason == RejectReason::kCancelled) {
        ReleaseLease(index, {.success = false, .error_type = "cancelled", .rss_mb = std::nullopt});
        return;
      }
      if (reason == RejectReason::kShuttingDown) {  // the manager is gone: so is the batch
        stop_.request_stop();
        return;
      }
      // Our own RSS over maxRssMb comes down as jobs finish, but not with nothing running.
      if (reason == RejectReason::kQueueFull || reason == RejectReason::kLaneLimit ||
          reason == RejectReason::kGlobalLimit ||
          (reason == RejectReason::kMemoryLimit && (running_ > 0 || asked_total_ > 0))) {
        lane.pending.insert(rank_of_[index]);
        return;
      }
      outcome.result.error = slot.error().message();
      ReleaseLease(index, {.success = false, .error_type = "refused", .rss_mb = std::nullopt});
      ++finished_;
      ++failed_;
      if (options_.fail_fast) stop_.request_stop();
    }
    outcome.started = true;
    --undispatched_;
  }

  void WorkerLoop() {
    internal::MutexLock lock(mu_);
    for (;;) {
      worker_cv_.Wait(lock, [&]() REQUIRES(mu_) { return closing_ || !work_.empty(); });
      if (work_.empty()) return;
      auto [index, slot] = std::move(work_.front());
      work_.pop_front();
      lock.Unlock();
      if (stop_.stop_requested() || (watch_ && watch_->failed())) {
        // Granted just before a cancel or a fail-fast stop: hand the place back, run nothing
        // (stopping first, so that the place goes to no other waiting job either).
        stop_.request_stop();
        slot.Release(false, "cancelled");
        ReleaseLease(index, {.success = false, .error_type = "cancelled", .rss_mb = std::nullopt});
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
    std::optional<Lease> lease = LeaseOf(index);
    std::stop_source job_stop;
    const std::stop_callback forward(stop_.get_token(), [&job_stop] { job_stop.request_stop(); });
    std::optional<LeaseRenewer> renewer;
    if (lease) {
      call.timeout_ms = lease->timeout_ms > 0 ? std::optional(lease->timeout_ms) : job.timeout_ms;
      call.parent = ParseTraceparent(lease->traceparent);
      call.metadata.emplace_back("leaseId", lease->id);
      spec.traceparent_env = true;
      renewer.emplace(options_.leases->address, options_.leases->token, *lease,
                      [&job_stop](const std::string&) { job_stop.request_stop(); });
    }
    outcome.start_ms = MsSince(start_);
    ProcessResult result =
        runner_.RunWithSlot(std::move(slot), job.id, spec, call, job_stop.get_token());
    if (renewer) {
      renewer->Stop();
      if (!renewer->stop_reason().empty()) {
        // Said in the summary: the job's own stderr tail would not say why it stopped.
        result.stderr_data += "\nlaneguard: " + renewer->stop_reason() + "\n";
      }
      ReleaseOutcome released{.success = result.success(),
                              .error_type = std::string(result.ErrorType()),
                              .rss_mb = std::nullopt};
      if (result.peak_rss_bytes > 0)
        released.rss_mb = static_cast<double>(result.peak_rss_bytes) / (1 << 20);
      if (renewer->gone()) ForgetLease(index);
      ReleaseLease(index, released);
    }
    // The program's end, not ours: its place went to the next job as RunWithSlot released it,
    // before this clock reading, and the two must not look as if they overlapped.
    outcome.end_ms = std::min(MsSince(start_), outcome.start_ms + result.duration_ms);
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

  // ---- leases (BatchOptions::leases)

  bool HoldsLease(size_t index) {
    internal::MutexLock lock(leases_mu_);
    return leases_[index].has_value();
  }
  std::optional<Lease> LeaseOf(size_t index) {
    internal::MutexLock lock(leases_mu_);
    return leases_.empty() ? std::nullopt : leases_[index];
  }
  void ForgetLease(size_t index) {
    internal::MutexLock lock(leases_mu_);
    leases_[index].reset();
  }
  // Gives the job's lease back, if it holds one (a failure to is said on stderr: the daemon
  // reclaims it at its TTL anyway).
  void ReleaseLease(size_t index, const ReleaseOutcome& outcome) {
    std::optional<Lease> lease;
    {
      internal::MutexLock lock(leases_mu_);
      if (leases_.empty() || !leases_[index]) return;
      lease.swap(leases_[index]);
    }
    LeaseClient client(options_.leases->address, options_.leases->token);
    auto released = client.Release(lease->id, outcome);
    if (!released.ok())
      std::fprintf(stderr, "laneguard batch: warning: %s: the lease was not released: %s\n",
                   EscapeForTerminal(jobs_[index].id).c_str(),
                   EscapeForTerminal(released.error().message()).c_str());
  }

  // On a lease thread: waits for the job's lease (in chunks when the wait is unbounded, taking
  // the daemon's refusals for a full lane as "not yet"), then asks for the local place, whose
  // answer the loop takes as usual. A refusal, or a daemon that cannot be asked, is the answer.
  void LeaseThenAsk(size_t index) {
    const Job& job = jobs_[index];
    const BatchOptions::Leases& leases = *options_.leases;
    LeaseClient client(leases.address, leases.token);
    constexpr int64_t kChunkMs = 30000;
    LeaseRequest request{.lane = job.lane,
                         .task_id = job.id,
                         .timeout_ms = job.timeout_ms,
                         .wait_ms = leases.wait_ms.value_or(kChunkMs),
                         .priority = job.priority,
                         .ttl_ms = leases.ttl_ms,
                         .metadata = job.metadata,
                         .traceparent = {}};
    const std::stop_token stop = stop_.get_token();
    for (;;) {
      auto lease = client.Acquire(request, stop);
      if (lease.ok()) {
        {
          internal::MutexLock lock(leases_mu_);
          leases_[index] = std::move(lease).value();
        }
        AskLocally(index);
        return;
      }
      const Error& error = lease.error();
      const bool not_yet = error.field() == kLeaseRefusalField &&
                           (error.value() == "wait_timeout" || error.value() == "lane_limit" ||
                            error.value() == "global_limit" || error.value() == "queue_full" ||
                            error.value() == "memory_limit");
      if (error.code() == ErrorCode::kCancelled || stop.stop_requested()) {
        Post(index, Error(Rejection(RejectReason::kCancelled, job.lane)));
        return;
      }
      if (leases.wait_ms || !not_yet) {
        Post(index, Error(error.code(), std::string(error.field()), error.value(),
                          "lease refused: " + error.message()));
        return;
      }
      // Unbounded: ask again after a pause a cancel cuts short.
      internal::MutexLock lock(leases_mu_);
      leases_cv_.WaitFor(lock, std::chrono::milliseconds(200),
                         [&] { return stop.stop_requested(); });
    }
  }

  void JobDone(const Job& job, bool ran) REQUIRES(mu_) {
    --running_;
    --running_by_lane_[job.lane];
    if (ran) ++finished_;
    Wake();
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

  internal::Mutex mu_;
  internal::CondVar worker_cv_;
  std::deque<std::pair<size_t, Slot>> work_ GUARDED_BY(mu_);  // granted, waiting for a worker
  std::map<std::string, int, std::less<>> running_by_lane_ GUARDED_BY(mu_);
  int running_ GUARDED_BY(mu_) = 0;
  int finished_ GUARDED_BY(mu_) = 0;
  int failed_ GUARDED_BY(mu_) = 0;
  int cancelled_ GUARDED_BY(mu_) = 0;
  size_t undispatched_ GUARDED_BY(mu_);
  bool closing_ GUARDED_BY(mu_) = false;
  bool progress_broken_ GUARDED_BY(mu_) = false;

  // The answers the callbacks post, and the finished jobs' wake-ups (events_), for the loop.
  internal::Mutex inbox_mu_ ACQUIRED_AFTER(mu_);
  internal::CondVar inbox_cv_;
  std::vector<Answer> inbox_ GUARDED_BY(inbox_mu_);
  uint64_t events_ GUARDED_BY(inbox_mu_) = 0;

  // The loop's own (the calling thread's), set up by the constructor.
  std::vector<size_t> order_;    // job indices in start order: priority, then file order
  std::vector<size_t> rank_of_;  // by job index: its place in order_
  std::vector<size_t> lane_of_;  // by job index: its entry in lanes_
  std::vector<Lane> lanes_;
  int asked_total_ = 0;  // asks not answered yet, all lanes
  uint64_t seen_events_ = 0;
  std::vector<Answer> answers_;          // taken from the inbox
  std::shared_ptr<FailureWatch> watch_;  // with fail_fast

  // BatchOptions::leases: each job's lease while held, and the threads that wait for them.
  internal::Mutex leases_mu_;
  internal::CondVar leases_cv_;
  std::vector<std::optional<Lease>> leases_ GUARDED_BY(leases_mu_);
  std::vector<std::thread> lease_threads_;  // the loop's own

  // Last: destroyed first, so a late cancel never finds the rest gone.
  std::stop_callback<std::function<void()>> forward_;
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
      r["waitMs"] = j.wait_ms;
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
