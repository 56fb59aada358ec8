#include "laneguard/manager.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "laneguard/timer_queue.h"
#include "spin_lock.h"

namespace laneguard {

std::string_view ToString(RejectReason reason) {
  switch (reason) {
    case RejectReason::kLaneLimit:
      return "lane_limit";
    case RejectReason::kGlobalLimit:
      return "global_limit";
    case RejectReason::kMemoryLimit:
      return "memory_limit";
    case RejectReason::kUnknownLane:
      return "unknown_lane";
    case RejectReason::kShuttingDown:
      return "shutting_down";
    case RejectReason::kInvalidTimeout:
      return "invalid_timeout";
  }
  return "unknown";
}

std::string_view ToString(EventKind kind) {
  switch (kind) {
    case EventKind::kAcquired:
      return "acquired";
    case EventKind::kRejected:
      return "rejected";
    case EventKind::kReleased:
      return "released";
    case EventKind::kTimeoutWarning:
      return "timeout_warning";
    case EventKind::kTimeoutEscalation:
      return "timeout_escalation";
    case EventKind::kHeapWarning:
      return "heap_warning";
  }
  return "unknown";
}

namespace internal {
namespace {

constexpr int64_t kNanosPerMs = 1'000'000;
constexpr uint8_t kRunning = 0, kWarned = 1, kEscalated = 2;

using ObserverList = std::vector<std::shared_ptr<Observer>>;

struct LaneState {
  std::string name;
  int limit = 0;
  // Written under the admission lock, read without it for the lock-free early rejection.
  std::atomic<int> active{0};
  // One counter per reason, so a rejection costs a single atomic add; totals are summed on read.
  std::atomic<int64_t> rejections[kRejectReasonCount] = {};
  // Under the admission lock.
  int overrunning = 0;
  int64_t total = 0, success = 0, failure = 0, timeouts = 0;
  double duration_sum_ms = 0;
};

// One active (or free) call. Entries live in a deque so references stay valid as it grows, and are
// reused through a free list, so a warm manager allocates nothing per call.
struct CallEntry {
  uint32_t generation = 0;
  bool in_use = false;
  uint8_t phase = kRunning;
  bool hook_running = false;
  uint32_t lane = 0;
  uint64_t call_id = 0;
  int64_t start_mono = 0;
  int64_t timeout_ms = 0;
  int64_t hard_deadline = 0;
  double rss_start = 0, heap_start = 0;
  int concurrent_at_start = 0;
  TimerQueue::Handle timer;
  std::string task_id;
  Metadata metadata;
  std::stop_source stop{std::nostopstate};
  std::function<void()> hook;
  std::thread::id hook_thread;
};

// What the ring keeps per call; strings other than the task id are produced on read.
struct RingRecord {
  uint64_t call_id = 0;
  uint32_t lane = 0;
  bool success = false, timeout_reached = false, escalated = false;
  int concurrent_at_start = 0, concurrent_at_end = 0;
  double duration_ms = 0;
  double rss_start = 0, rss_end = 0, heap_start = 0, heap_end = 0;
  int64_t timeout_ms = 0;
  int64_t start_unix = 0;
  std::string task_id;
  std::string error_type;
};

uint64_t Tag(uint32_t index, uint32_t generation) {
  return (static_cast<uint64_t>(index) << 32) | generation;
}

double Percentile(std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  auto rank = static_cast<size_t>(std::ceil(p * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

}  // namespace

struct ManagerState {
  ManagerState(Config cfg, ManagerOptions options)
      : config(std::move(cfg)),
        clock(options.clock ? options.clock : &SystemClock::Get()),
        probe(options.memory_probe ? std::move(options.memory_probe) : NewProcMemoryProbe()),
        unix_offset(clock->UnixNanos() - clock->MonotonicNanos()),
        lane_count(config.lane_concurrency_limits.size()),
        lanes(new LaneState[lane_count]) {
    size_t i = 0;
    for (const auto& [name, limit] : config.lane_concurrency_limits) {
      lanes[i].name = name;
      lanes[i].limit = limit;
      ++i;
    }
    if (!options.observers.empty()) SetObservers(std::move(options.observers));
    SampleMemory(clock->MonotonicNanos());
  }

  // ---- admission ----------------------------------------------------------------------------

  int FindLane(std::string_view name) const {
    // Lanes are few (the spec has five), so a scan of short strings beats hashing.
    for (size_t i = 0; i < lane_count; ++i)
      if (lanes[i].name == name) return static_cast<int>(i);
    return -1;
  }

  bool FullRejection(const LaneState& lane, int lane_active, int all_active, Rejection* r) const {
    if (lane_active >= lane.limit) {
      r->reason = RejectReason::kLaneLimit;
      r->active = lane_active;
      r->limit = lane.limit;
      return true;
    }
    if (all_active >= config.global_concurrency_limit) {
      r->reason = RejectReason::kGlobalLimit;
      r->active = all_active;
      r->limit = config.global_concurrency_limit;
      return true;
    }
    return false;
  }

  Rejection Reject(Rejection r, std::string_view task_id, std::string_view lane_name,
                   LaneState* ls) {
    r.lane.assign(lane_name);
    (ls != nullptr ? ls->rejections : laneless_rejections)[static_cast<int>(r.reason)].fetch_add(
        1, std::memory_order_relaxed);
    if (HasObservers()) {
      const std::string message = r.message();
      CallEvent e;
      e.kind = EventKind::kRejected;
      e.time_unix_nanos = clock->UnixNanos();
      e.task_id = task_id;
      e.lane = r.lane;
      e.global_active = global_active.load(std::memory_order_relaxed);
      e.global_limit = config.global_concurrency_limit;
      if (ls != nullptr) {
        e.lane_active = ls->active.load(std::memory_order_relaxed);
        e.lane_limit = ls->limit;
      }
      e.reason = r.reason;
      e.message = message;
      MemorySnapshot mem;
      if (r.reason == RejectReason::kMemoryLimit) {
        mem = LatestSnapshot();
        e.memory = &mem;
      }
      Notify(e);
    }
    return r;
  }

  Result<Slot, Rejection> TryAcquire(std::string_view task_id, std::string_view lane_name,
                                     std::optional<int64_t> timeout_ms, Metadata&& metadata) {
    Rejection r;  // the lane name is copied into it only on the rejecting paths
    if (shutting_down.load(std::memory_order_relaxed)) {
      r.reason = RejectReason::kShuttingDown;
      return Reject(std::move(r), task_id, lane_name, nullptr);
    }
    const int lane_index = FindLane(lane_name);
    if (lane_index < 0) {
      r.reason = RejectReason::kUnknownLane;
      return Reject(std::move(r), task_id, lane_name, nullptr);
    }
    LaneState& lane = lanes[lane_index];
    const int64_t timeout = timeout_ms.value_or(config.default_timeout_ms);
    if (timeout <= 0 || timeout > kMaxTimeoutMs) {
      r.reason = RejectReason::kInvalidTimeout;
      r.timeout_ms = timeout;
      return Reject(std::move(r), task_id, lane_name, &lane);
    }
    const double rss = rss_mb.load(std::memory_order_relaxed);
    if (config.enable_memory_guards && rss > config.max_rss_mb) {
      r.reason = RejectReason::kMemoryLimit;
      r.rss_mb = rss;
      r.max_rss_mb = config.max_rss_mb;
      return Reject(std::move(r), task_id, lane_name, &lane);
    }
    // A lane or the whole manager seen full is a valid answer without the lock: that count was
    // true at the moment it was read, so rejecting then is linearizable and costs no write.
    if (FullRejection(lane, lane.active.load(std::memory_order_relaxed),
                      global_active.load(std::memory_order_relaxed), &r))
      return Reject(std::move(r), task_id, lane_name, &lane);

    Metadata metadata_for_observers;
    if (HasObservers()) metadata_for_observers = metadata;
    const int64_t now = clock->MonotonicNanos();
    const auto timeout_ns = timeout * kNanosPerMs;
    const auto hard_ns =
        static_cast<int64_t>(static_cast<double>(timeout_ns) * config.timeout_escalation_factor);
    uint32_t index = 0, generation = 0;
    uint64_t call_id = 0;
    int global_now = 0, lane_now = 0;
    bool full;
    {
      std::lock_guard<SpinLock> guard(lock);
      const int lane_active = lane.active.load(std::memory_order_relaxed);
      const int all_active = global_active.load(std::memory_order_relaxed);
      full = FullRejection(lane, lane_active, all_active, &r);
      if (!full) {
        lane_now = lane_active + 1;
        global_now = all_active + 1;
        lane.active.store(lane_now, std::memory_order_relaxed);
        global_active.store(global_now, std::memory_order_relaxed);
        max_concurrent = std::max(max_concurrent, global_now);

        if (free_calls.empty()) {
          index = static_cast<uint32_t>(calls.size());
          calls.push_back(std::make_unique<CallEntry>());
        } else {
          index = free_calls.back();
          free_calls.pop_back();
        }
        CallEntry& c = *calls[index];
        generation = c.generation;
        c.in_use = true;
        c.phase = kRunning;
        c.lane = static_cast<uint32_t>(lane_index);
        c.call_id = call_id = next_call_id++;
        c.start_mono = now;
        c.timeout_ms = timeout;
        c.hard_deadline = now + hard_ns;
        c.rss_start = rss;
        c.heap_start = heap_used_mb.load(std::memory_order_relaxed);
        c.concurrent_at_start = global_now;
        c.task_id.assign(task_id);
        if (!metadata.empty()) c.metadata = std::move(metadata);
        c.timer = timers.Arm(now + timeout_ns, Tag(index, generation));
      }
    }
    if (full) return Reject(std::move(r), task_id, lane_name, &lane);
    Slot slot(this, index, generation, call_id, now + timeout_ns, now + hard_ns);
    if (HasObservers()) {
      CallEvent e;
      e.kind = EventKind::kAcquired;
      e.time_unix_nanos = now + unix_offset;
      e.call_id = call_id;
      e.task_id = task_id;
      e.lane = lane.name;
      e.global_active = global_now;
      e.lane_active = lane_now;
      e.global_limit = config.global_concurrency_limit;
      e.lane_limit = lane.limit;
      e.timeout_ms = timeout;
      e.metadata = &metadata_for_observers;
      Notify(e);
    }
    if (config.enable_memory_guards && heap_warning_pending.load(std::memory_order_relaxed) &&
        heap_warning_pending.exchange(false, std::memory_order_relaxed) && HasObservers()) {
      MemorySnapshot mem = LatestSnapshot();
      std::string message = "heap " + std::to_string(mem.heap_used_mb) +
                            " MB exceeds heapWarningMb " + std::to_string(config.heap_warning_mb) +
                            "; call admitted";
      CallEvent e;
      e.kind = EventKind::kHeapWarning;
      e.time_unix_nanos = now + unix_offset;
      e.call_id = call_id;
      e.task_id = task_id;
      e.lane = lane.name;
      e.global_active = global_now;
      e.lane_active = lane_now;
      e.message = message;
      e.memory = &mem;
      Notify(e);
    }
    return slot;
  }

  // Locks and returns the entry for (index, generation), or nullptr (and unlocked) if the slot was
  // already released. Waits for a hard-timeout hook running on another thread.
  CallEntry* LockEntry(uint32_t index, uint32_t generation) {
    lock.lock();
    for (;;) {
      if (index >= calls.size() || calls[index]->generation != generation ||
          !calls[index]->in_use) {
        lock.unlock();
        return nullptr;
      }
      CallEntry& c = *calls[index];
      if (!c.hook_running || c.hook_thread == std::this_thread::get_id()) return &c;
      lock.unlock();
      std::this_thread::yield();
      lock.lock();
    }
  }

  bool Release(Slot& slot, bool success, std::string_view error_type) {
    const uint32_t index = slot.index_, generation = slot.generation_;
    slot.state_ = nullptr;
    const int64_t now = clock->MonotonicNanos();
    CallEntry* c = LockEntry(index, generation);
    if (c == nullptr) return false;
    LaneState& lane = lanes[c->lane];
    timers.Cancel(c->timer);

    const int lane_now = lane.active.load(std::memory_order_relaxed) - 1;
    const int global_before = global_active.load(std::memory_order_relaxed);
    lane.active.store(lane_now, std::memory_order_relaxed);
    global_active.store(global_before - 1, std::memory_order_relaxed);
    if (c->phase == kEscalated) {
      --lane.overrunning;
      --global_overrunning;
    }

    if (ring.size() < static_cast<size_t>(config.metrics_capacity)) ring.emplace_back();
    RingRecord& r = ring[ring_next];
    ring_next = (ring_next + 1) % static_cast<size_t>(config.metrics_capacity);
    r.call_id = c->call_id;
    r.lane = c->lane;
    r.success = success;
    r.timeout_reached = c->phase >= kWarned;
    r.escalated = c->phase == kEscalated;
    r.concurrent_at_start = c->concurrent_at_start;
    r.concurrent_at_end = global_before;
    r.duration_ms = static_cast<double>(now - c->start_mono) / kNanosPerMs;
    r.rss_start = c->rss_start;
    r.rss_end = rss_mb.load(std::memory_order_relaxed);
    r.heap_start = c->heap_start;
    r.heap_end = heap_used_mb.load(std::memory_order_relaxed);
    r.timeout_ms = c->timeout_ms;
    r.start_unix = c->start_mono + unix_offset;
    r.task_id.swap(c->task_id);  // the entry inherits the old buffer: no allocation either way
    if (error_type.empty()) {
      r.error_type.clear();
    } else {
      r.error_type.assign(error_type);
    }

    ++total_calls;
    (success ? success_count : failure_count) += 1;
    timeout_count += r.timeout_reached;
    escalation_count += r.escalated;
    duration_sum_ms += r.duration_ms;
    rss_delta_sum_mb += r.rss_end - r.rss_start;
    ++lane.total;
    (success ? lane.success : lane.failure) += 1;
    lane.timeouts += r.timeout_reached;
    lane.duration_sum_ms += r.duration_ms;

    // Destroyed after unlocking: freeing memory or a stop state is not admission work. Most calls
    // have none of these, so they are only touched when present.
    std::stop_source stop(std::nostopstate);
    if (c->stop.stop_possible()) std::swap(stop, c->stop);
    std::function<void()> hook;
    if (c->hook) std::swap(hook, c->hook);
    Metadata metadata;
    if (!c->metadata.empty()) std::swap(metadata, c->metadata);
    c->in_use = false;
    ++c->generation;
    free_calls.push_back(index);

    const bool notify = HasObservers();
    const uint64_t call_id = r.call_id;
    WorkerCallMetrics record;
    if (notify) record = ToPublic(r);
    const bool last_after_destroy = !manager_alive && global_before - 1 == 0;
    lock.unlock();

    if (notify) {
      CallEvent e;
      e.kind = EventKind::kReleased;
      e.time_unix_nanos = now + unix_offset;
      e.call_id = call_id;
      e.task_id = record.task_id;
      e.lane = lane.name;
      e.global_active = global_before - 1;
      e.lane_active = lane_now;
      e.global_limit = config.global_concurrency_limit;
      e.lane_limit = lane.limit;
      e.timeout_ms = record.timeout_ms;
      e.metadata = &metadata;
      e.record = &record;
      Notify(e);
    }
    if (last_after_destroy) delete this;
    return true;
  }

  std::stop_token StopToken(const Slot& slot) {
    std::stop_source fresh;  // allocated outside the lock, used only if the entry has none yet
    CallEntry* c = LockEntry(slot.index_, slot.generation_);
    if (c == nullptr) return {};
    if (!c->stop.stop_possible()) c->stop = std::move(fresh);
    std::stop_source stop = c->stop;
    const bool past_deadline = c->phase >= kWarned;
    lock.unlock();
    if (past_deadline) stop.request_stop();
    return stop.get_token();
  }

  void SetHook(const Slot& slot, std::function<void()> hook) {
    CallEntry* c = LockEntry(slot.index_, slot.generation_);
    if (c == nullptr) return;
    std::swap(c->hook, hook);
    lock.unlock();
  }

  // ---- timers and memory ----------------------------------------------------------------------

  struct Fired {
    EventKind kind = EventKind::kTimeoutWarning;
    uint32_t index = 0, generation = 0;
    uint64_t call_id = 0;
    uint32_t lane = 0;
    int64_t timeout_ms = 0;
    std::string task_id;
    std::stop_source stop{std::nostopstate};
    std::function<void()> hook;
  };

  void Tick() {
    std::lock_guard<std::mutex> tick_guard(tick_mu);
    const int64_t now = clock->MonotonicNanos();
    if (now >= next_sample_mono) SampleMemory(now);

    std::vector<Fired> fired;
    {
      std::lock_guard<SpinLock> guard(lock);
      // An escalation re-armed at or before `now` (escalation factor 1) fires in the same tick.
      while (timers.NextDeadline() <= now) {
        expired.clear();
        timers.PopExpired(now, &expired);
        for (const TimerQueue::Expired& x : expired) {
          const auto index = static_cast<uint32_t>(x.tag >> 32);
          const auto generation = static_cast<uint32_t>(x.tag);
          CallEntry& c = *calls[index];
          if (!c.in_use || c.generation != generation) continue;
          Fired f;
          f.kind = EventKind::kTimeoutWarning;
          f.index = index;
          f.generation = generation;
          f.call_id = c.call_id;
          f.lane = c.lane;
          f.timeout_ms = c.timeout_ms;
          f.task_id = c.task_id;
          if (c.phase == kRunning) {
            c.phase = kWarned;
            f.stop = c.stop;
            c.timer = timers.Arm(c.hard_deadline, x.tag);
          } else {
            c.phase = kEscalated;
            f.kind = EventKind::kTimeoutEscalation;
            ++lanes[c.lane].overrunning;
            ++global_overrunning;
            if (c.hook) {
              f.hook = c.hook;
              c.hook_running = true;
              c.hook_thread = std::this_thread::get_id();
            }
          }
          fired.push_back(std::move(f));
        }
      }
    }
    for (Fired& f : fired) {
      if (f.stop.stop_possible()) f.stop.request_stop();
      if (HasObservers()) {
        const bool warning = f.kind == EventKind::kTimeoutWarning;
        const int64_t phase_ms = warning ? f.timeout_ms
                                         : static_cast<int64_t>(static_cast<double>(f.timeout_ms) *
                                                                config.timeout_escalation_factor);
        std::string message =
            std::string(warning ? "worker call exceeded its timeout of "
                                : "worker call exceeded its hard deadline of ") +
            std::to_string(phase_ms) + " ms" +
            (warning ? "; stop requested" : "; escalating (slot held until the call returns)");
        CallEvent e;
        e.kind = f.kind;
        e.time_unix_nanos = now + unix_offset;
        e.call_id = f.call_id;
        e.task_id = f.task_id;
        e.lane = lanes[f.lane].name;
        e.global_active = global_active.load(std::memory_order_relaxed);
        e.lane_active = lanes[f.lane].active.load(std::memory_order_relaxed);
        e.global_limit = config.global_concurrency_limit;
        e.lane_limit = lanes[f.lane].limit;
        e.timeout_ms = f.timeout_ms;
        e.message = message;
        Notify(e);
      }
      if (f.hook) {
        try {
          f.hook();
        } catch (...) {
          // A failing kill hook must not take down the timer thread; the call stays overrunning.
        }
        std::lock_guard<SpinLock> guard(lock);
        CallEntry& c = *calls[f.index];
        if (c.generation == f.generation) c.hook_running = false;
      }
    }
  }

  MemorySnapshot SampleMemory(int64_t now) {
    MemorySnapshot s = probe->Sample();
    s.timestamp_unix_nanos = now + unix_offset;
    s.timestamp = FormatIso8601(s.timestamp_unix_nanos);
    rss_mb.store(s.rss_mb, std::memory_order_relaxed);
    heap_used_mb.store(s.heap_used_mb, std::memory_order_relaxed);
    heap_warning_pending.store(s.heap_used_mb > config.heap_warning_mb, std::memory_order_relaxed);
    std::lock_guard<std::mutex> guard(memory_mu);
    snapshot = s;
    next_sample_mono = now + config.memory_sample_interval_ms * kNanosPerMs;
    return s;
  }

  MemorySnapshot LatestSnapshot() const {
    std::lock_guard<std::mutex> guard(memory_mu);
    return snapshot;
  }

  // ---- reads ----------------------------------------------------------------------------------

  WorkerCallMetrics ToPublic(const RingRecord& r) const {
    WorkerCallMetrics m;
    m.call_id = "call-" + std::to_string(r.call_id);
    m.task_id = r.task_id;
    m.lane = lanes[r.lane].name;
    m.duration_ms = r.duration_ms;
    m.success = r.success;
    m.error_type = r.error_type;
    m.rss_start_mb = r.rss_start;
    m.rss_end_mb = r.rss_end;
    m.rss_delta_mb = r.rss_end - r.rss_start;
    m.heap_start_mb = r.heap_start;
    m.heap_end_mb = r.heap_end;
    m.heap_delta_mb = r.heap_end - r.heap_start;
    m.concurrent_calls_at_start = r.concurrent_at_start;
    m.concurrent_calls_at_end = r.concurrent_at_end;
    m.timeout_reached = r.timeout_reached;
    m.escalated = r.escalated;
    m.timeout_ms = r.timeout_ms;
    m.timestamp_unix_nanos = r.start_unix;
    m.timestamp = FormatIso8601(r.start_unix);
    return m;
  }

  std::vector<WorkerCallMetrics> GetMetrics() {
    std::vector<RingRecord> copy;
    {
      std::lock_guard<SpinLock> guard(lock);
      copy.reserve(ring.size());
      // Once full, ring_next points at the oldest record.
      for (size_t i = 0; i < ring.size(); ++i)
        copy.push_back(
            ring[(ring.size() == static_cast<size_t>(config.metrics_capacity) ? ring_next + i : i) %
                 ring.size()]);
    }
    std::vector<WorkerCallMetrics> out;
    out.reserve(copy.size());
    for (const RingRecord& r : copy) out.push_back(ToPublic(r));
    return out;
  }

  Statistics GetStatistics() {
    Statistics s;
    std::vector<double> durations;
    std::vector<std::vector<double>> lane_durations(lane_count);
    int64_t by_reason[kRejectReasonCount] = {};
    {
      std::lock_guard<SpinLock> guard(lock);
      s.total_calls = total_calls;
      s.success_count = success_count;
      s.failure_count = failure_count;
      s.timeout_count = timeout_count;
      s.escalation_count = escalation_count;
      s.max_concurrent_calls = max_concurrent;
      s.overrunning_calls = global_overrunning;
      if (total_calls > 0) {
        s.average_duration_ms = duration_sum_ms / static_cast<double>(total_calls);
        s.average_rss_delta_mb = rss_delta_sum_mb / static_cast<double>(total_calls);
      }
      durations.reserve(ring.size());
      for (const RingRecord& r : ring) {
        durations.push_back(r.duration_ms);
        lane_durations[r.lane].push_back(r.duration_ms);
      }
      for (size_t i = 0; i < lane_count; ++i) {
        const LaneState& l = lanes[i];
        LaneStatistics& ls = s.lanes[l.name];
        ls.total_calls = l.total;
        ls.success_count = l.success;
        ls.failure_count = l.failure;
        ls.timeout_count = l.timeouts;
        ls.average_duration_ms = l.total > 0 ? l.duration_sum_ms / static_cast<double>(l.total) : 0;
        ls.active = l.active.load(std::memory_order_relaxed);
        ls.overrunning = l.overrunning;
        ls.limit = l.limit;
        for (int reason = 0; reason < kRejectReasonCount; ++reason) {
          const int64_t n = l.rejections[reason].load(std::memory_order_relaxed);
          ls.rejections += n;
          by_reason[reason] += n;
        }
      }
    }
    std::sort(durations.begin(), durations.end());
    s.p50_duration_ms = Percentile(durations, 0.50);
    s.p95_duration_ms = Percentile(durations, 0.95);
    s.p99_duration_ms = Percentile(durations, 0.99);
    for (size_t i = 0; i < lane_count; ++i) {
      std::sort(lane_durations[i].begin(), lane_durations[i].end());
      s.lanes[lanes[i].name].p95_duration_ms = Percentile(lane_durations[i], 0.95);
    }
    for (int i = 0; i < kRejectReasonCount; ++i) {
      const int64_t n = by_reason[i] + laneless_rejections[i].load(std::memory_order_relaxed);
      s.rejections_by_reason[std::string(ToString(static_cast<RejectReason>(i)))] = n;
      s.total_rejections += n;
    }
    return s;
  }

  ConcurrencyStatus GetConcurrencyStatus() {
    ConcurrencyStatus s;
    std::lock_guard<SpinLock> guard(lock);
    s.global = {global_active.load(std::memory_order_relaxed), config.global_concurrency_limit,
                global_overrunning};
    for (size_t i = 0; i < lane_count; ++i)
      s.lanes[lanes[i].name] = {lanes[i].active.load(std::memory_order_relaxed), lanes[i].limit,
                                lanes[i].overrunning};
    return s;
  }

  // ---- observers ------------------------------------------------------------------------------

  bool HasObservers() const { return observers.load(std::memory_order_acquire) != nullptr; }

  void Notify(const CallEvent& e) const {
    const ObserverList* list = observers.load(std::memory_order_acquire);
    if (list == nullptr) return;
    for (const auto& o : *list) {
      try {
        o->OnEvent(e);
      } catch (...) {
        // Telemetry must never fail or leak a worker call.
      }
    }
  }

  // Lists are published by pointer and retired lists are kept until the manager dies, so a reader
  // never takes a lock or a reference count.
  void SetObservers(ObserverList list) {
    std::lock_guard<std::mutex> guard(observers_mu);
    observer_lists.push_back(std::make_unique<ObserverList>(std::move(list)));
    observers.store(observer_lists.back().get(), std::memory_order_release);
  }

  void AddObserver(std::shared_ptr<Observer> observer) {
    ObserverList list;
    {
      std::lock_guard<std::mutex> guard(observers_mu);
      if (const ObserverList* current = observers.load(std::memory_order_acquire)) list = *current;
    }
    list.push_back(std::move(observer));
    SetObservers(std::move(list));
  }

  // ---- lifecycle ------------------------------------------------------------------------------

  void StartBackground() {
    background = std::thread([this] {
      std::unique_lock<std::mutex> guard(background_mu);
      while (!background_stop) {
        background_cv.wait_for(guard, std::chrono::milliseconds(config.timer_tick_ms));
        if (background_stop) break;
        guard.unlock();
        Tick();
        guard.lock();
      }
    });
  }

  void Shutdown() {
    shutting_down.store(true, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> guard(background_mu);
      background_stop = true;
    }
    background_cv.notify_all();
    std::lock_guard<std::mutex> guard(join_mu);
    if (background.joinable() && background.get_id() != std::this_thread::get_id())
      background.join();
  }

  // Called by ~ResourceBudgetManager. Returns true if the state can be freed now; otherwise the
  // last outstanding slot frees it.
  bool Orphan() {
    std::lock_guard<SpinLock> guard(lock);
    manager_alive = false;
    return global_active.load(std::memory_order_relaxed) == 0;
  }

  // ---- data -----------------------------------------------------------------------------------

  const Config config;
  const Clock* const clock;
  const std::unique_ptr<MemoryProbe> probe;
  const int64_t unix_offset;  // wall time = monotonic + offset: one clock read per event
  const size_t lane_count;
  const std::unique_ptr<LaneState[]> lanes;

  SpinLock lock;  // guards everything below up to the atomics, and LaneState's plain fields
  std::atomic<int> global_active{0};  // written under `lock`
  int global_overrunning = 0;
  int max_concurrent = 0;
  // unique_ptr keeps entries in place as the table grows, at one indirection (a deque of entries
  // this large costs a block lookup per access).
  std::vector<std::unique_ptr<CallEntry>> calls;
  std::vector<uint32_t> free_calls;
  TimerQueue timers;
  std::vector<RingRecord> ring;
  size_t ring_next = 0;
  uint64_t next_call_id = 1;
  int64_t total_calls = 0, success_count = 0, failure_count = 0, timeout_count = 0,
          escalation_count = 0;
  double duration_sum_ms = 0, rss_delta_sum_mb = 0;
  bool manager_alive = true;

  std::atomic<int64_t> laneless_rejections[kRejectReasonCount] = {};  // unknown lane, shutdown
  std::atomic<bool> shutting_down{false};
  std::atomic<double> rss_mb{0};
  std::atomic<double> heap_used_mb{0};
  std::atomic<bool> heap_warning_pending{false};

  mutable std::mutex memory_mu;
  MemorySnapshot snapshot;       // guarded by memory_mu
  int64_t next_sample_mono = 0;  // guarded by memory_mu (written) and tick_mu (read)

  std::mutex tick_mu;
  std::vector<TimerQueue::Expired> expired;  // guarded by tick_mu and lock

  std::atomic<const ObserverList*> observers{nullptr};
  std::mutex observers_mu;
  std::vector<std::unique_ptr<ObserverList>> observer_lists;

  std::mutex background_mu;
  std::condition_variable background_cv;
  bool background_stop = false;
  std::mutex join_mu;
  std::thread background;
};

}  // namespace internal

std::string Rejection::message() const {
  std::string m(ToString(reason));
  m += ": ";
  switch (reason) {
    case RejectReason::kLaneLimit:
      m += "lane '" + lane + "' is at its limit (" + std::to_string(active) + "/" +
           std::to_string(limit) + " active)";
      break;
    case RejectReason::kGlobalLimit:
      m += "global concurrency is at its limit (" + std::to_string(active) + "/" +
           std::to_string(limit) + " active); lane '" + lane + "' has room";
      break;
    case RejectReason::kMemoryLimit:
      m += "RSS " + std::to_string(rss_mb) + " MB is above maxRssMb " + std::to_string(max_rss_mb) +
           " (lane '" + lane + "')";
      break;
    case RejectReason::kUnknownLane:
      m += "lane '" + lane + "' is not configured in laneConcurrencyLimits";
      break;
    case RejectReason::kShuttingDown:
      m += "the resource budget manager is shutting down (lane '" + lane + "')";
      break;
    case RejectReason::kInvalidTimeout:
      m += "timeoutMs must be > 0 and <= " + std::to_string(kMaxTimeoutMs) + ", got " +
           std::to_string(timeout_ms) + " (lane '" + lane + "')";
      break;
  }
  return m;
}

// ---- Slot -------------------------------------------------------------------------------------

Slot::Slot(Slot&& other) noexcept
    : state_(std::exchange(other.state_, nullptr)),
      index_(other.index_),
      generation_(other.generation_),
      call_id_(other.call_id_),
      deadline_(other.deadline_),
      hard_deadline_(other.hard_deadline_) {}

Slot& Slot::operator=(Slot&& other) noexcept {
  if (this != &other) {
    if (state_ != nullptr) Release(false, "abandoned");
    state_ = std::exchange(other.state_, nullptr);
    index_ = other.index_;
    generation_ = other.generation_;
    call_id_ = other.call_id_;
    deadline_ = other.deadline_;
    hard_deadline_ = other.hard_deadline_;
  }
  return *this;
}

Slot::~Slot() {
  if (state_ != nullptr) Release(false, "abandoned");
}

std::string Slot::call_id_string() const { return "call-" + std::to_string(call_id_); }

bool Slot::Release(bool success, std::string_view error_type) {
  if (state_ == nullptr) return false;
  return state_->Release(*this, success, error_type);
}

std::stop_token Slot::stop_token() {
  return state_ == nullptr ? std::stop_token() : state_->StopToken(*this);
}

void Slot::SetHardTimeoutHook(std::function<void()> hook) {
  if (state_ != nullptr) state_->SetHook(*this, std::move(hook));
}

// ---- ResourceBudgetManager --------------------------------------------------------------------

Result<std::unique_ptr<ResourceBudgetManager>, ConfigError> ResourceBudgetManager::Create(
    Config config, ManagerOptions options) {
  auto valid = ValidateConfig(std::move(config));
  if (!valid.ok()) return valid.error();
  const bool start = options.start_background_thread;
  auto* state = new internal::ManagerState(std::move(valid).value(), std::move(options));
  if (start) state->StartBackground();
  return std::unique_ptr<ResourceBudgetManager>(new ResourceBudgetManager(state));
}

ResourceBudgetManager::~ResourceBudgetManager() {
  state_->Shutdown();
  if (state_->Orphan()) delete state_;
}

Result<Slot, Rejection> ResourceBudgetManager::TryAcquire(std::string_view task_id,
                                                          std::string_view lane,
                                                          std::optional<int64_t> timeout_ms,
                                                          Metadata metadata) {
  return state_->TryAcquire(task_id, lane, timeout_ms, std::move(metadata));
}

bool ResourceBudgetManager::Release(Slot& slot, bool success, std::string_view error_type) {
  if (slot.state_ != state_) return false;
  return slot.Release(success, error_type);
}

std::vector<WorkerCallMetrics> ResourceBudgetManager::GetMetrics() const {
  return state_->GetMetrics();
}
Statistics ResourceBudgetManager::GetStatistics() const { return state_->GetStatistics(); }
MemorySnapshot ResourceBudgetManager::GetMemorySnapshot() const { return state_->LatestSnapshot(); }
MemorySnapshot ResourceBudgetManager::SampleMemoryNow() {
  return state_->SampleMemory(state_->clock->MonotonicNanos());
}
ConcurrencyStatus ResourceBudgetManager::GetConcurrencyStatus() const {
  return state_->GetConcurrencyStatus();
}
const Config& ResourceBudgetManager::config() const { return state_->config; }
void ResourceBudgetManager::AddObserver(std::shared_ptr<Observer> observer) {
  state_->AddObserver(std::move(observer));
}
void ResourceBudgetManager::Tick() { state_->Tick(); }
void ResourceBudgetManager::Shutdown() { state_->Shutdown(); }

// ---- the process-wide default -------------------------------------------------------------------

namespace {
std::mutex g_default_mu;
ResourceBudgetManager* g_default =
    nullptr;  // intentionally never destroyed: slots may outlive main
}  // namespace

Result<ResourceBudgetManager*, ConfigError> GetResourceBudgetManager(std::optional<Config> config) {
  std::lock_guard<std::mutex> guard(g_default_mu);
  if (g_default != nullptr) {
    if (config && !(*config == g_default->config()))
      return ConfigError{"", "",
                         "the default resource budget manager already exists with a different "
                         "config; create an explicit ResourceBudgetManager instead"};
    return g_default;
  }
  auto created = ResourceBudgetManager::Create(config.value_or(Config{}));
  if (!created.ok()) return created.error();
  g_default = std::move(created).value().release();
  return g_default;
}

Result<ResourceBudgetManager*, ConfigError> GetResourceBudgetManagerFromJson(
    std::string_view partial_json) {
  auto config = ParseConfigJson(partial_json);
  if (!config.ok()) return config.error();
  return GetResourceBudgetManager(std::move(config).value());
}

}  // namespace laneguard
