#include "laneguard/manager.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <type_traits>

#include "base/shard_count.h"
#include "base/spin_lock.h"
#include "base/thread_counters.h"
#include "core/admission_word.h"
#include "core/lane_index.h"
#include "core/timer_queue.h"

namespace laneguard {

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
  size_t index = 0;
  uint64_t delta = 1;  // what a call adds to the admission word (AdmissionLayout::Delta)
  // The lane's count when the admission word has no room for it (!AdmissionLayout::packed()).
  std::atomic<int> active{0};
};

// Per-lane totals kept by each shard. The only totals there are: the manager's are their sum.
struct LaneTotals {
  int overrunning = 0;
  int64_t total = 0, success = 0, failure = 0, timeouts = 0, escalations = 0;
  double duration_sum_ms = 0, rss_delta_sum_mb = 0;

  LaneTotals& operator+=(const LaneTotals& o) {
    overrunning += o.overrunning;
    total += o.total;
    success += o.success;
    failure += o.failure;
    timeouts += o.timeouts;
    escalations += o.escalations;
    duration_sum_ms += o.duration_sum_ms;
    rss_delta_sum_mb += o.rss_delta_sum_mb;
    return *this;
  }
};

// A call's task id: in place up to kInline bytes (a UUID is 36), on the heap past that. Admission
// copies one per call, and std::string::assign costs about 75 instructions where this is a
// length check and a memcpy; moving one into the metrics ring copies a fixed 39 bytes.
class TaskId {
 public:
  static constexpr size_t kInline = 39;

  void Assign(std::string_view id) {  // may throw only for a long id
    if (id.size() <= kInline) {
      std::memcpy(inline_, id.data(), id.size());
      size_ = static_cast<uint8_t>(id.size());
    } else {
      heap_.assign(id);
      size_ = kOnHeap;
    }
  }
  // Leaves this one empty; a long id's buffer is swapped, not copied.
  void MoveTo(TaskId& to) {
    std::memcpy(to.inline_, inline_, sizeof inline_);
    to.size_ = size_;
    if (size_ == kOnHeap) to.heap_.swap(heap_);
    size_ = 0;
  }
  std::string_view view() const {
    return size_ == kOnHeap ? std::string_view(heap_) : std::string_view(inline_, size_);
  }

 private:
  static constexpr uint8_t kOnHeap = 0xff;
  char inline_[kInline] = {};
  uint8_t size_ = 0;
  std::string heap_;
};

// One active (or free) call. Entries are reused through a free list, so a warm manager allocates
// nothing per call.
struct CallEntry {
  uint32_t generation = 0;
  bool in_use = false;
  uint8_t phase = kRunning;
  // Hooks collected by Tick() and not yet finished. Release() waits for them to reach 0 (unless it
  // runs on the timer thread itself), so a hook may use what the call owns.
  int hooks_pending = 0;
  uint32_t lane = 0;
  uint64_t call_id = 0;
  int64_t start_mono = 0;
  int64_t timeout_ms = 0;
  int64_t hard_deadline = 0;
  double rss_start = 0, heap_start = 0;
  int concurrent_at_start = 0;
  TimerQueue::Handle timer;
  TaskId task_id;
  Metadata metadata;
  std::stop_source stop{std::nostopstate};
  std::function<void()> hook;          // at the hard deadline
  std::function<void()> warning_hook;  // at the timeout
  TimeoutHandler* listener = nullptr;  // both, before the hooks
  std::thread::id hook_thread;
};

const std::optional<int64_t> kDefaultTimeout;
const Metadata kNoMetadata;

// What a released call may own besides its counts, moved out of its entry to be freed outside the
// shard lock.
struct Leftovers {
  explicit Leftovers(CallEntry& c)
      : stop(std::exchange(c.stop, std::stop_source(std::nostopstate))),
        hook(std::exchange(c.hook, nullptr)),
        warning_hook(std::exchange(c.warning_hook, nullptr)),
        metadata(std::exchange(c.metadata, {})) {}
  std::stop_source stop;
  std::function<void()> hook, warning_hook;
  Metadata metadata;
};

// Leftovers built in place only when a call has any. Not std::optional<Leftovers>: g++ 12 zero-
// fills an optional's storage on construction, a `rep stos` that cost 15% of every release.
class LeftoversHolder {
 public:
  LeftoversHolder() {}  // NOLINT: the storage is left uninitialized on purpose
  LeftoversHolder(const LeftoversHolder&) = delete;
  LeftoversHolder& operator=(const LeftoversHolder&) = delete;
  ~LeftoversHolder() {
    if (taken_ != nullptr) taken_->~Leftovers();
  }
  void TakeFrom(CallEntry& c) { taken_ = new (storage_) Leftovers(c); }
  const Metadata& metadata() const { return taken_ != nullptr ? taken_->metadata : kNoMetadata; }

 private:
  alignas(Leftovers) unsigned char storage_[sizeof(Leftovers)];
  Leftovers* taken_ = nullptr;
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
  int64_t end_mono = 0;  // orders records across shards
  TaskId task_id;
  std::string error_type;
};

// The per-call half of the manager, one shard per CPU. A call is set up in the shard of the CPU
// its thread runs on, so on the hot path two threads share only the admission counters: call
// entries, timers, the metrics ring and the totals stay in one core's cache. A release on another
// CPU goes to the slot's shard, which is correct, just not as fast.
struct alignas(64) Shard {
  SpinLock lock;                                  // guards everything in the shard
  std::vector<std::unique_ptr<CallEntry>> calls;  // unique_ptr: entries stay put as it grows
  std::vector<uint32_t> free_calls;
  TimerQueue timers;
  // Calls whose timer is not armed yet, as Tag(entry, generation). Most calls end long before
  // their timeout, so a call's timer is armed by the next Tick() (or once kMaxUnarmed calls wait)
  // instead of at admission: a call that ends before that never touches the timer heap. Timers
  // only fire in Tick(), so a timer armed there before the due ones are collected fires exactly
  // when one armed at admission would have.
  std::vector<uint64_t> unarmed;
  std::vector<RingRecord> ring;  // each shard keeps up to metricsCapacity most recent records
  size_t ring_next = 0;
  std::vector<LaneTotals> lanes;
  // Call ids handed out from a block taken from ManagerState::next_call_id: one atomic operation
  // per kCallIdBlock calls instead of per call (each costs a store-buffer drain on x86). Ids stay
  // unique within the manager; across shards they are not in admission order.
  uint64_t next_call_id = 0, call_id_end = 0;
};

// Slot::index_ packs the shard (high 8 bits) and the entry (low 24 bits).
constexpr uint32_t kEntryBits = 24;
constexpr uint32_t kEntryMask = (1u << kEntryBits) - 1;
constexpr size_t kMaxShards = 1u << (32 - kEntryBits);
constexpr uint64_t kCallIdBlock = 64;
// Reserved up front, so queuing a call's timer never allocates.
constexpr size_t kMaxUnarmed = 256;

uint64_t Tag(uint32_t entry, uint32_t generation) {
  return (static_cast<uint64_t>(entry) << 32) | generation;
}

double Percentile(std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  auto rank = static_cast<size_t>(std::ceil(p * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

// In the order of the config's map, which is the order of ManagerState::lanes.
std::vector<std::string> LaneNames(const Config& config) {
  std::vector<std::string> names;
  for (const auto& [name, limit] : config.lane_concurrency_limits) names.push_back(name);
  return names;
}

std::atomic<size_t> shard_count_for_testing{0};

size_t ShardCount() {
  const size_t forced = shard_count_for_testing.load(std::memory_order_relaxed);
  return std::clamp<size_t>(forced != 0 ? forced : std::thread::hardware_concurrency(), 1,
                            kMaxShards);
}

// The shard for the calling thread: the CPU it runs on (glibc reads it from rseq, about 3 ns), so
// threads running at the same time use different shards whatever their number; a thread number
// where the CPU is unknown.
size_t ShardHint() {
  const int cpu = sched_getcpu();
  if (cpu >= 0) return static_cast<size_t>(cpu);
  static std::atomic<size_t> next{0};
  thread_local const size_t hint = next.fetch_add(1, std::memory_order_relaxed);
  return hint;
}

}  // namespace

size_t SetShardCountForTesting(size_t shards) {
  return shard_count_for_testing.exchange(shards, std::memory_order_relaxed);
}

struct ManagerState {
  ManagerState(Config cfg, ManagerOptions options)
      : config(std::move(cfg)),
        clock(options.clock ? options.clock : &FastClock::Get()),
        probe(options.memory_probe ? std::move(options.memory_probe) : NewProcMemoryProbe()),
        unix_offset(clock->UnixNanos() - clock->MonotonicNanos()),
        lane_count(config.lane_concurrency_limits.size()),
        layout(lane_count, config.global_concurrency_limit),
        lanes(new LaneState[lane_count]),
        lane_lookup(LaneNames(config)),
        shard_count(ShardCount()),
        shards(new Shard[shard_count]) {
    size_t i = 0;
    for (const auto& [name, limit] : config.lane_concurrency_limits) {
      lanes[i].name = name;
      lanes[i].limit = limit;
      lanes[i].index = i;
      lanes[i].delta = layout.Delta(i);
      ++i;
    }
    for (size_t s = 0; s < shard_count; ++s) {
      shards[s].lanes.resize(lane_count);
      shards[s].unarmed.reserve(kMaxUnarmed);
    }
    if (!options.observers.empty()) SetObservers(std::move(options.observers));
    SampleMemory(clock->MonotonicNanos());
  }

  // ---- admission ----------------------------------------------------------------------------

  int FindLane(std::string_view name) const { return lane_lookup.Find(name); }

  // What a rejection found; the Rejection (with its lane string) is built once, in place. The
  // counts are 64-bit so that nothing reads them as one word: the caller stores them one by one,
  // and a wider load across two such stores waits for both to reach the cache (a store-forwarding
  // stall, a third of the rejection path when the two ints were copied as one 8-byte word).
  struct Refusal {
    RejectReason reason = RejectReason::kLaneLimit;
    int64_t active = 0, limit = 0;
    double rss_mb = 0, max_rss_mb = 0;
    int64_t timeout_ms = 0;
  };

  Result<Slot, Rejection> Reject(const Refusal& f, std::string_view task_id,
                                 std::string_view lane_name, LaneState* ls) {
    rejections.Increment(RejectionCounter(ls != nullptr ? ls->index : lane_count, f.reason));
    if (HasObservers()) [[unlikely]]
      NotifyRejected(f, task_id, lane_name, ls);
    // Built in place, lane string included: a Rejection or a std::string moved into the result
    // would copy the lane's characters a second time.
    return Result<Slot, Rejection>(std::in_place_index<1>, f.reason, lane_name,
                                   static_cast<int>(f.active), static_cast<int>(f.limit), f.rss_mb,
                                   f.max_rss_mb, f.timeout_ms);
  }

  // Out of line: its event and snapshot would otherwise give every rejection a large frame.
  [[gnu::noinline]] void NotifyRejected(const Refusal& f, std::string_view task_id,
                                        std::string_view lane_name, const LaneState* ls) {
    const std::string message =
        Rejection(f.reason, lane_name, static_cast<int>(f.active), static_cast<int>(f.limit),
                  f.rss_mb, f.max_rss_mb, f.timeout_ms)
            .message();
    CallEvent e;
    e.kind = EventKind::kRejected;
    e.time_unix_nanos = clock->UnixNanos();
    e.task_id = task_id;
    e.lane = lane_name;
    e.global_active = GlobalActive();
    e.global_limit = config.global_concurrency_limit;
    if (ls != nullptr) {
      e.lane_active = LaneActive(*ls);
      e.lane_limit = ls->limit;
    }
    e.reason = f.reason;
    e.message = message;
    MemorySnapshot mem;
    if (f.reason == RejectReason::kMemoryLimit) {
      mem = LatestSnapshot();
      e.memory = &mem;
    }
    Notify(e);
  }

  // Admission where the lane counts do not fit the admission word: reserve a place in the lane,
  // then in the global count, each with a compare-and-swap that only succeeds below its limit; if
  // the global count is full the lane place is handed back. A caller racing on the same lane may
  // be refused for lane_limit in the few nanoseconds that place was reserved, as if it had been
  // taken and released.
  std::optional<Refusal> TakeUnpacked(LaneState& lane, int* lane_now, int* global_now) {
    int in_lane = lane.active.load(std::memory_order_relaxed);
    do {
      if (in_lane >= lane.limit) return Refusal{RejectReason::kLaneLimit, in_lane, lane.limit};
    } while (!lane.active.compare_exchange_weak(in_lane, in_lane + 1, std::memory_order_acquire,
                                                std::memory_order_relaxed));
    uint64_t word = admission.load(std::memory_order_relaxed);
    do {
      const int global = layout.Global(word);
      if (global >= config.global_concurrency_limit) {
        lane.active.fetch_sub(1, std::memory_order_release);
        return Refusal{RejectReason::kGlobalLimit, global, config.global_concurrency_limit};
      }
    } while (!admission.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel,
                                              std::memory_order_relaxed));
    *lane_now = in_lane;
    *global_now = layout.Global(word);
    return std::nullopt;
  }

  // Hands back what admission took for one call in `lane`. Returns true when that was the last
  // call of a destroyed manager: the caller must then free the state.
  bool GiveBack(LaneState& lane) {
    if (!layout.packed()) lane.active.fetch_sub(1, std::memory_order_release);
    return admission.fetch_sub(lane.delta, std::memory_order_acq_rel) - lane.delta ==
           AdmissionLayout::kOrphaned;
  }

  int LaneActive(const LaneState& lane) const {
    return layout.packed() ? layout.Lane(admission.load(std::memory_order_relaxed), lane.index)
                           : lane.active.load(std::memory_order_relaxed);
  }

  // `metadata` is a const Metadata& (copied into the call when not empty) or a Metadata&&
  // (moved). The timeout by reference: an optional passed by value is often written in two parts
  // and read back whole, a store-forwarding stall of about 5 ns in the caller.
  template <typename M>
  Result<Slot, Rejection> TryAcquire(std::string_view task_id, std::string_view lane_name,
                                     const std::optional<int64_t>& timeout_ms, M&& metadata) {
    if (shutting_down.load(std::memory_order_relaxed))
      return Reject({RejectReason::kShuttingDown}, task_id, lane_name, nullptr);
    const int lane_index = FindLane(lane_name);
    if (lane_index < 0) return Reject({RejectReason::kUnknownLane}, task_id, lane_name, nullptr);
    LaneState& lane = lanes[lane_index];
    const int64_t timeout = timeout_ms.value_or(config.default_timeout_ms);
    if (timeout <= 0 || timeout > kMaxTimeoutMs) {
      Refusal f{RejectReason::kInvalidTimeout};
      f.timeout_ms = timeout;
      return Reject(f, task_id, lane_name, &lane);
    }
    const double rss = rss_mb.load(std::memory_order_relaxed);
    if (config.enable_memory_guards && rss > config.max_rss_mb) {
      Refusal f{RejectReason::kMemoryLimit};
      f.rss_mb = rss;
      f.max_rss_mb = config.max_rss_mb;
      return Reject(f, task_id, lane_name, &lane);
    }
    // Admission: the lane and the global limit are checked and both counts taken in one step, so
    // neither count can ever exceed its limit and no two racing callers can both take the last
    // place (see admission_word.h).
    int lane_now = 0, global_now = 0;
    if (layout.packed()) {
      uint64_t word = admission.load(std::memory_order_relaxed);
      do {
        lane_now = layout.Lane(word, lane.index);
        global_now = layout.Global(word);
        if (lane_now >= lane.limit)
          return Reject({RejectReason::kLaneLimit, lane_now, lane.limit}, task_id, lane_name,
                        &lane);
        if (global_now >= config.global_concurrency_limit)
          return Reject({RejectReason::kGlobalLimit, global_now, config.global_concurrency_limit},
                        task_id, lane_name, &lane);
      } while (!admission.compare_exchange_weak(word, word + lane.delta, std::memory_order_acq_rel,
                                                std::memory_order_relaxed));
    } else if (std::optional<Refusal> f = TakeUnpacked(lane, &lane_now, &global_now)) {
      return Reject(*f, task_id, lane_name, &lane);
    }
    ++lane_now;
    ++global_now;
    for (int seen = max_concurrent.load(std::memory_order_relaxed);
         global_now > seen &&
         !max_concurrent.compare_exchange_weak(seen, global_now, std::memory_order_relaxed);) {
    }

    // Everything that can throw (allocation) comes before the entry is taken, and a throw hands
    // both counts back: no path leaks a slot, not even out-of-memory.
    const int64_t now = clock->MonotonicNanos();
    const int64_t timeout_ns = timeout * kNanosPerMs;
    const auto hard_ns =
        static_cast<int64_t>(static_cast<double>(timeout_ns) * config.timeout_escalation_factor);
    const size_t shard_index = ShardHint() % shard_count;
    Shard& shard = shards[shard_index];
    uint32_t entry = 0, generation = 0;
    uint64_t call_id = 0;
    const Metadata* call_metadata = nullptr;
    try {
      // A copy is made before the lock (allocation is not admission work) and before the point
      // past which nothing may throw.
      std::optional<Metadata> copied;
      if constexpr (std::is_lvalue_reference_v<M>) {
        if (!metadata.empty()) copied.emplace(metadata);
      }
      std::lock_guard<SpinLock> guard(shard.lock);
      if (shard.free_calls.empty()) {
        shard.calls.push_back(std::make_unique<CallEntry>());
        shard.free_calls.push_back(static_cast<uint32_t>(shard.calls.size() - 1));
      }
      entry = shard.free_calls.back();
      CallEntry& c = *shard.calls[entry];
      generation = c.generation;
      c.task_id.Assign(task_id);
      if (shard.next_call_id == shard.call_id_end) {
        shard.next_call_id = next_call_id.fetch_add(kCallIdBlock, std::memory_order_relaxed);
        shard.call_id_end = shard.next_call_id + kCallIdBlock;
      }
      if (shard.unarmed.size() == kMaxUnarmed) ArmWaitingTimers(shard);
      shard.free_calls.pop_back();  // from here on nothing throws
      shard.unarmed.push_back(Tag(entry, generation));
      c.timer = {};
      c.in_use = true;
      c.phase = kRunning;
      c.lane = static_cast<uint32_t>(lane_index);
      call_id = shard.next_call_id++;
      c.call_id = call_id;
      c.start_mono = now;
      c.timeout_ms = timeout;
      c.hard_deadline = now + hard_ns;
      c.rss_start = rss;
      c.heap_start = heap_used_mb.load(std::memory_order_relaxed);
      c.concurrent_at_start = global_now;
      if (copied) {
        c.metadata = std::move(*copied);
      } else if constexpr (!std::is_lvalue_reference_v<M>) {
        if (!metadata.empty()) c.metadata = std::forward<M>(metadata);
      }
      // Read by NotifyAdmitted after the unlock: nothing else touches it until the slot, not yet
      // returned, is released.
      call_metadata = &c.metadata;
    } catch (...) {
      GiveBack(lane);  // the manager is alive (TryAcquire runs on it): never the last release
      throw;
    }
    if (HasObservers() ||
        (config.enable_memory_guards && heap_warning_pending.load(std::memory_order_relaxed))) {
      NotifyAdmitted(now, call_id, task_id, lane, global_now, lane_now, timeout, *call_metadata);
    }
    // A prvalue, so it is built in the caller's Result: a named local would be moved there.
    return Result<Slot, Rejection>(std::in_place_index<0>, Slot::Key(), this,
                                   static_cast<uint32_t>(shard_index << kEntryBits) | entry,
                                   generation, call_id, now, now + timeout_ns, now + hard_ns,
                                   global_now, lane_now);
  }

  // The acquired event and a pending heap warning, out of TryAcquire's fast path. noexcept: the
  // slot is already taken and no telemetry failure may lose it.
  [[gnu::noinline]] void NotifyAdmitted(int64_t now, uint64_t call_id, std::string_view task_id,
                                        const LaneState& lane, int global_now, int lane_now,
                                        int64_t timeout, const Metadata& metadata) noexcept {
    try {
      if (HasObservers()) {
        CallEvent e =
            EventFor(EventKind::kAcquired, now, call_id, task_id, lane, global_now, lane_now);
        e.timeout_ms = timeout;
        e.metadata = &metadata;
        Notify(e);
      }
      if (config.enable_memory_guards && heap_warning_pending.load(std::memory_order_relaxed) &&
          heap_warning_pending.exchange(false, std::memory_order_relaxed) && HasObservers()) {
        MemorySnapshot mem = LatestSnapshot();
        std::string message = "heap " + std::to_string(mem.heap_used_mb) +
                              " MB exceeds heapWarningMb " +
                              std::to_string(config.heap_warning_mb) + "; call admitted";
        CallEvent e =
            EventFor(EventKind::kHeapWarning, now, call_id, task_id, lane, global_now, lane_now);
        e.message = message;
        e.memory = &mem;
        Notify(e);
      }
    } catch (...) {
      // Telemetry must never fail or leak a worker call.
    }
  }

  // Locks the slot's shard and returns its entry, or nullptr (unlocked) if the slot was already
  // released. Waits for a hard-timeout hook running on another thread.
  // Inline: it is most of a release's way in, and a call cost a tenth of the release.
  [[gnu::always_inline]] CallEntry* LockEntry(const Slot& slot, Shard** shard_out) {
    const size_t shard_index = slot.index_ >> kEntryBits;
    const uint32_t entry = slot.index_ & kEntryMask;
    if (shard_index >= shard_count) return nullptr;
    Shard& shard = shards[shard_index];
    *shard_out = &shard;
    shard.lock.lock();
    for (;;) {
      if (entry >= shard.calls.size() || shard.calls[entry]->generation != slot.generation_ ||
          !shard.calls[entry]->in_use) {
        shard.lock.unlock();
        return nullptr;
      }
      CallEntry& c = *shard.calls[entry];
      if (c.hooks_pending == 0 || c.hook_thread == std::this_thread::get_id()) return &c;
      shard.lock.unlock();
      std::this_thread::yield();
      shard.lock.lock();
    }
  }

  // With `fail_if_late`, Slot::ReleaseUnlessLate; without, Slot::Release.
  ReleaseOutcome Release(Slot& slot, bool success, std::string_view error_type,
                         bool fail_if_late = false, std::string_view late_error_type = {}) {
    const int64_t now = clock->MonotonicNanos();
    Shard* shard = nullptr;
    CallEntry* c = LockEntry(slot, &shard);
    slot.state_ = nullptr;
    if (c == nullptr) return {};
    ReleaseOutcome outcome{.released = true,
                           .past_hard_deadline = fail_if_late && now >= c->hard_deadline};
    if (outcome.past_hard_deadline) {
      success = false;
      error_type = late_error_type;
    }
    const uint32_t lane_index = c->lane;
    LaneState& lane = lanes[lane_index];
    LaneTotals& totals = shard->lanes[lane_index];
    shard->timers.Cancel(c->timer);
    if (c->phase == kEscalated) --totals.overrunning;

    const auto capacity = static_cast<size_t>(config.metrics_capacity);
    if (shard->ring.size() < capacity) {
      // Reserved whole on first use, so filling the ring never reallocates on the hot path.
      if (shard->ring.empty()) shard->ring.reserve(capacity);
      shard->ring.emplace_back();
    }
    RingRecord& r = shard->ring[shard->ring_next];
    if (++shard->ring_next == capacity) shard->ring_next = 0;  // not %: a 64-bit divide
    r.call_id = c->call_id;
    r.lane = lane_index;
    r.success = success;
    // By the clock as well as by the timer: a call that returns past a deadline before the next
    // tick (or with no timer thread) still reached it.
    r.timeout_reached = c->phase >= kWarned || now >= c->start_mono + c->timeout_ms * kNanosPerMs;
    r.escalated = c->phase == kEscalated || now >= c->hard_deadline;
    r.concurrent_at_start = c->concurrent_at_start;
    // A snapshot of the count that still includes this call (it drops below, after the record).
    r.concurrent_at_end = GlobalActive();
    r.duration_ms = static_cast<double>(now - c->start_mono) / kNanosPerMs;
    r.rss_start = c->rss_start;
    r.rss_end = rss_mb.load(std::memory_order_relaxed);
    r.heap_start = c->heap_start;
    r.heap_end = heap_used_mb.load(std::memory_order_relaxed);
    r.timeout_ms = c->timeout_ms;
    r.start_unix = c->start_mono + unix_offset;
    r.end_mono = now;
    c->task_id.MoveTo(r.task_id);
    if (error_type.empty()) {
      r.error_type.clear();
    } else {
      r.error_type.assign(error_type);
    }

    ++totals.total;
    (success ? totals.success : totals.failure) += 1;
    totals.timeouts += r.timeout_reached;
    totals.escalations += r.escalated;
    totals.duration_sum_ms += r.duration_ms;
    totals.rss_delta_sum_mb += r.rss_end - r.rss_start;

    // Destroyed after unlocking: freeing memory or a stop state is not admission work. Most calls
    // have none of these, so the holder is only built when one is present.
    LeftoversHolder leftovers;
    if (c->stop.stop_possible() || c->hook || c->warning_hook || !c->metadata.empty())
      leftovers.TakeFrom(*c);
    c->in_use = false;
    c->listener = nullptr;
    c->hooks_pending = 0;  // a hook still queued in this tick sees the new generation and skips
    ++c->generation;
    shard->free_calls.push_back(slot.index_ & kEntryMask);

    outcome.duration_ms = r.duration_ms;
    outcome.timeout_reached = r.timeout_reached;
    outcome.escalated = r.escalated;
    // Observers hear of the release before the counts drop: once they have, this thread may no
    // longer touch the state (a destroyed manager's last release frees it).
    if (HasObservers()) {
      UnlockAndNotifyReleased(*shard, r, now, lane, leftovers.metadata());
    } else {
      shard->lock.unlock();
    }
    // The global word is the last thing touched; the orphan bit in it decides who frees a
    // destroyed manager's state.
    if (GiveBack(lane)) delete this;
    return outcome;
  }

  // Out of line, so the public record (a few hundred bytes, zeroed on construction) is only built
  // when someone listens: building it in Release cost a third of an unobserved release.
  // noexcept: whatever fails here, the shard is unlocked and the release completes.
  [[gnu::noinline]] void UnlockAndNotifyReleased(Shard& shard, const RingRecord& r, int64_t now,
                                                 LaneState& lane,
                                                 const Metadata& metadata) noexcept {
    std::optional<WorkerCallMetrics> record;
    try {
      record.emplace(ToPublic(r));  // under the lock: r is reused once it is released
    } catch (...) {
      // Out of memory for the observers' copy: they miss this event, the call is still released.
    }
    const uint64_t call_id = r.call_id;
    shard.lock.unlock();
    if (!record) return;
    try {
      CallEvent e = EventFor(EventKind::kReleased, now, call_id, record->task_id, lane,
                             GlobalActive() - 1, LaneActive(lane) - 1);
      e.timeout_ms = record->timeout_ms;
      e.metadata = &metadata;
      e.record = &*record;
      Notify(e);
    } catch (...) {
      // Telemetry must never fail or leak a worker call.
    }
  }

  std::stop_token StopToken(const Slot& slot) {
    std::stop_source fresh;  // allocated outside the lock, used only if the entry has none yet
    Shard* shard = nullptr;
    CallEntry* c = LockEntry(slot, &shard);
    if (c == nullptr) return {};
    if (!c->stop.stop_possible()) c->stop = std::move(fresh);
    std::stop_source stop = c->stop;
    const bool past_deadline = c->phase >= kWarned;
    shard->lock.unlock();
    if (past_deadline) stop.request_stop();
    return stop.get_token();
  }

  void SetHook(const Slot& slot, std::function<void()> hook, bool hard) {
    Shard* shard = nullptr;
    CallEntry* c = LockEntry(slot, &shard);
    if (c == nullptr) return;
    std::swap(hard ? c->hook : c->warning_hook, hook);
    shard->lock.unlock();
  }

  void SetListener(const Slot& slot, TimeoutHandler* listener) {
    Shard* shard = nullptr;
    CallEntry* c = LockEntry(slot, &shard);
    if (c == nullptr) return;
    c->listener = listener;
    shard->lock.unlock();
  }

  // ---- timers and memory ----------------------------------------------------------------------

  struct Fired {
    EventKind kind = EventKind::kTimeoutWarning;
    int64_t deadline = 0;
    Shard* shard = nullptr;
    uint32_t entry = 0, generation = 0;
    uint64_t call_id = 0;
    uint32_t lane = 0;
    int64_t timeout_ms = 0;
    std::string task_id;
    std::stop_source stop{std::nostopstate};
    std::function<void()> hook;
    TimeoutHandler* listener = nullptr;
  };

  // Arms the timers of the shard's calls that are still running; called with the shard locked.
  void ArmWaitingTimers(Shard& shard) {
    for (const uint64_t tag : shard.unarmed) {
      CallEntry& c = *shard.calls[static_cast<uint32_t>(tag >> 32)];
      // Skipped: calls released since, and (after an Arm that threw) those already armed.
      if (!c.in_use || c.generation != static_cast<uint32_t>(tag) || c.timer.valid()) continue;
      c.timer = shard.timers.Arm(c.start_mono + c.timeout_ms * kNanosPerMs, tag);
    }
    shard.unarmed.clear();
  }

  // Pops the shard's due timers; called with the shard locked.
  void CollectDue(Shard& shard, int64_t now, std::vector<Fired>* fired) {
    ArmWaitingTimers(shard);
    // An escalation re-armed at or before `now` (escalation factor 1) fires in the same tick.
    while (shard.timers.NextDeadline() <= now) {
      expired.clear();
      shard.timers.PopExpired(now, &expired);
      for (const TimerQueue::Expired& x : expired) {
        const auto entry = static_cast<uint32_t>(x.tag >> 32);
        const auto generation = static_cast<uint32_t>(x.tag);
        CallEntry& c = *shard.calls[entry];
        if (!c.in_use || c.generation != generation) continue;
        Fired f;
        f.shard = &shard;
        f.deadline = x.deadline;
        f.entry = entry;
        f.generation = generation;
        f.call_id = c.call_id;
        f.lane = c.lane;
        f.timeout_ms = c.timeout_ms;
        f.task_id = c.task_id.view();
        if (c.phase == kRunning) {
          c.phase = kWarned;
          f.stop = c.stop;
          f.hook = c.warning_hook;
          f.listener = c.listener;
          c.timer = shard.timers.Arm(c.hard_deadline, x.tag);
        } else {
          c.phase = kEscalated;
          f.kind = EventKind::kTimeoutEscalation;
          ++shard.lanes[c.lane].overrunning;
          f.hook = c.hook;
          f.listener = c.listener;
        }
        if (f.hook || f.listener != nullptr) {
          ++c.hooks_pending;
          c.hook_thread = std::this_thread::get_id();
        }
        fired->push_back(std::move(f));
      }
    }
  }

  void Tick() {
    std::lock_guard<std::mutex> tick_guard(tick_mu);
    const int64_t now = clock->MonotonicNanos();
    if (now >= next_sample_mono.load(std::memory_order_relaxed)) SampleMemory(now);

    std::vector<Fired> fired;
    for (size_t s = 0; s < shard_count; ++s) {
      std::lock_guard<SpinLock> guard(shards[s].lock);
      CollectDue(shards[s], now, &fired);
    }
    // Across shards, report in deadline order as a single queue would.
    std::stable_sort(fired.begin(), fired.end(),
                     [](const Fired& a, const Fired& b) { return a.deadline < b.deadline; });
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
        const LaneState& lane = lanes[f.lane];
        CallEvent e =
            EventFor(f.kind, now, f.call_id, f.task_id, lane, GlobalActive(), LaneActive(lane));
        e.timeout_ms = f.timeout_ms;
        e.message = message;
        Notify(e);
      }
      if (f.hook || f.listener != nullptr) {
        // An observer or an earlier hook on this thread may have released the call meanwhile
        // (Release does not wait for its own thread): its hook must not run then.
        {
          std::lock_guard<SpinLock> guard(f.shard->lock);
          if (f.shard->calls[f.entry]->generation != f.generation) continue;
        }
        // A failing hook must not take down the timer thread; the call stays counted.
        try {
          if (f.listener != nullptr) {
            if (f.kind == EventKind::kTimeoutEscalation) {
              f.listener->OnEscalation();
            } else {
              f.listener->OnWarning();
            }
          }
        } catch (...) {
        }
        try {
          if (f.hook) f.hook();
        } catch (...) {
        }
        std::lock_guard<SpinLock> guard(f.shard->lock);
        CallEntry& c = *f.shard->calls[f.entry];
        if (c.generation == f.generation) --c.hooks_pending;
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
    next_sample_mono.store(now + config.memory_sample_interval_ms * kNanosPerMs,
                           std::memory_order_relaxed);
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
    m.task_id = r.task_id.view();
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

  // The most recent metricsCapacity records of all shards, in release order.
  std::vector<RingRecord> RecentRecords() {
    std::vector<RingRecord> all;
    for (size_t s = 0; s < shard_count; ++s) {
      std::lock_guard<SpinLock> guard(shards[s].lock);
      all.insert(all.end(), shards[s].ring.begin(), shards[s].ring.end());
    }
    std::sort(all.begin(), all.end(), [](const RingRecord& a, const RingRecord& b) {
      return a.end_mono != b.end_mono ? a.end_mono < b.end_mono : a.call_id < b.call_id;
    });
    const auto capacity = static_cast<size_t>(config.metrics_capacity);
    if (all.size() > capacity) all.erase(all.begin(), all.end() - static_cast<ptrdiff_t>(capacity));
    return all;
  }

  std::vector<WorkerCallMetrics> GetMetrics() {
    std::vector<WorkerCallMetrics> out;
    for (const RingRecord& r : RecentRecords()) out.push_back(ToPublic(r));
    return out;
  }

  // Per-lane totals summed over the shards.
  std::vector<LaneTotals> SumLaneTotals() {
    std::vector<LaneTotals> sums(lane_count);
    for (size_t i = 0; i < shard_count; ++i) {
      std::lock_guard<SpinLock> guard(shards[i].lock);
      for (size_t l = 0; l < lane_count; ++l) sums[l] += shards[i].lanes[l];
    }
    return sums;
  }

  Statistics GetStatistics() {
    Statistics s;
    const std::vector<LaneTotals> lane_totals = SumLaneTotals();
    LaneTotals all;
    for (const LaneTotals& t : lane_totals) all += t;
    s.total_calls = all.total;
    s.success_count = all.success;
    s.failure_count = all.failure;
    s.timeout_count = all.timeouts;
    s.escalation_count = all.escalations;
    s.overrunning_calls = all.overrunning;
    s.max_concurrent_calls = max_concurrent.load(std::memory_order_relaxed);
    if (all.total > 0) {
      s.average_duration_ms = all.duration_sum_ms / static_cast<double>(all.total);
      s.average_rss_delta_mb = all.rss_delta_sum_mb / static_cast<double>(all.total);
    }

    std::vector<double> durations;
    std::vector<std::vector<double>> lane_durations(lane_count);
    for (const RingRecord& r : RecentRecords()) {
      durations.push_back(r.duration_ms);
      lane_durations[r.lane].push_back(r.duration_ms);
    }
    std::sort(durations.begin(), durations.end());
    s.p50_duration_ms = Percentile(durations, 0.50);
    s.p95_duration_ms = Percentile(durations, 0.95);
    s.p99_duration_ms = Percentile(durations, 0.99);

    const std::vector<int64_t> rejected = rejections.Sums();
    int64_t by_reason[kRejectReasonCount] = {};
    for (size_t l = 0; l < lane_count; ++l) {
      const LaneTotals& t = lane_totals[l];
      LaneStatistics& ls = s.lanes[lanes[l].name];
      ls.total_calls = t.total;
      ls.success_count = t.success;
      ls.failure_count = t.failure;
      ls.timeout_count = t.timeouts;
      ls.average_duration_ms = t.total > 0 ? t.duration_sum_ms / static_cast<double>(t.total) : 0;
      ls.active = LaneActive(lanes[l]);
      ls.overrunning = t.overrunning;
      ls.limit = lanes[l].limit;
      for (int reason = 0; reason < kRejectReasonCount; ++reason) {
        const int64_t n = rejected[RejectionCounter(l, static_cast<RejectReason>(reason))];
        ls.rejections += n;
        by_reason[reason] += n;
      }
      std::sort(lane_durations[l].begin(), lane_durations[l].end());
      ls.p95_duration_ms = Percentile(lane_durations[l], 0.95);
    }
    for (int i = 0; i < kRejectReasonCount; ++i) {
      const int64_t n =
          by_reason[i] + rejected[RejectionCounter(lane_count, static_cast<RejectReason>(i))];
      s.rejections_by_reason[std::string(ToString(static_cast<RejectReason>(i)))] = n;
      s.total_rejections += n;
    }
    return s;
  }

  ConcurrencyStatus GetConcurrencyStatus() {
    ConcurrencyStatus s;
    const std::vector<LaneTotals> lane_totals = SumLaneTotals();
    s.global.active = GlobalActive();
    s.global.limit = config.global_concurrency_limit;
    for (size_t l = 0; l < lane_count; ++l) {
      s.global.overrunning += lane_totals[l].overrunning;
      s.lanes[lanes[l].name] = {LaneActive(lanes[l]), lanes[l].limit, lane_totals[l].overrunning};
    }
    return s;
  }

  // ---- observers ------------------------------------------------------------------------------

  // The fields every event about one call carries. `mono_now` is on the manager's clock.
  CallEvent EventFor(EventKind kind, int64_t mono_now, uint64_t call_id, std::string_view task_id,
                     const LaneState& lane, int global_active, int lane_active) const {
    CallEvent e;
    e.kind = kind;
    e.time_unix_nanos = mono_now + unix_offset;
    e.call_id = call_id;
    e.task_id = task_id;
    e.lane = lane.name;
    e.global_active = global_active;
    e.lane_active = lane_active;
    e.global_limit = config.global_concurrency_limit;
    e.lane_limit = lane.limit;
    return e;
  }

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
    PublishObserversLocked(std::move(list));
  }
  void PublishObserversLocked(ObserverList list) {
    observer_lists.push_back(std::make_unique<ObserverList>(std::move(list)));
    observers.store(observer_lists.back().get(), std::memory_order_release);
  }

  void AddObserver(std::shared_ptr<Observer> observer) {
    std::lock_guard<std::mutex> guard(observers_mu);  // copy and publish as one step
    ObserverList list;
    if (const ObserverList* current = observers.load(std::memory_order_acquire)) list = *current;
    list.push_back(std::move(observer));
    PublishObserversLocked(std::move(list));
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
    return AdmissionLayout::Empty(
        admission.fetch_or(AdmissionLayout::kOrphaned, std::memory_order_acq_rel));
  }

  int GlobalActive() const { return layout.Global(admission.load(std::memory_order_relaxed)); }

  // ---- data -----------------------------------------------------------------------------------

  const Config config;
  const Clock* const clock;
  const std::unique_ptr<MemoryProbe> probe;
  const int64_t unix_offset;  // wall time = monotonic + offset: one clock read per event
  const size_t lane_count;
  const AdmissionLayout layout;
  const std::unique_ptr<LaneState[]> lanes;
  const LaneIndex lane_lookup;
  const size_t shard_count;
  const std::unique_ptr<Shard[]> shards;

  // The counts every admission touches, on one cache line of their own: the global and (when
  // they fit) the lane counts, and once the manager object is destroyed the orphan bit, so "last
  // slot released after destruction" is decided by the same atomic operation as the release.
  alignas(64) std::atomic<uint64_t> admission{0};
  std::atomic<uint64_t> next_call_id{1};  // the start of the next free block of kCallIdBlock ids
  std::atomic<int> max_concurrent{0};

  // Rejections by lane (lane_count: no lane, as for unknown_lane) and reason, counted per thread:
  // under overload every caller is refused on the same lane, and a shared counter would be one
  // cache line bouncing between all their cores.
  ThreadCounters rejections{(lane_count + 1) * kRejectReasonCount};
  static size_t RejectionCounter(size_t lane, RejectReason reason) {
    return lane * kRejectReasonCount + static_cast<size_t>(reason);
  }

  alignas(64) std::atomic<bool> shutting_down{false};
  std::atomic<double> rss_mb{0};
  std::atomic<double> heap_used_mb{0};
  std::atomic<bool> heap_warning_pending{false};

  mutable std::mutex memory_mu;
  MemorySnapshot snapshot;  // guarded by memory_mu
  std::atomic<int64_t> next_sample_mono{0};

  std::mutex tick_mu;
  std::vector<TimerQueue::Expired> expired;  // guarded by tick_mu

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

// ---- Slot -------------------------------------------------------------------------------------

void Slot::ReleaseAbandoned() { Release(false, "abandoned"); }

std::string Slot::call_id_string() const { return "call-" + std::to_string(call_id_); }

bool Slot::Release(bool success, std::string_view error_type) {
  return ReleaseWithOutcome(success, error_type).released;
}

ReleaseOutcome Slot::ReleaseWithOutcome(bool success, std::string_view error_type) {
  if (state_ == nullptr) return {};
  return state_->Release(*this, success, error_type);
}

ReleaseOutcome Slot::ReleaseUnlessLate(bool success, std::string_view error_type,
                                       std::string_view late_error_type) {
  if (state_ == nullptr) return {};
  return state_->Release(*this, success, error_type, /*fail_if_late=*/true, late_error_type);
}

std::stop_token Slot::stop_token() {
  return state_ == nullptr ? std::stop_token() : state_->StopToken(*this);
}

void Slot::SetHardTimeoutHook(std::function<void()> hook) {
  if (state_ != nullptr) state_->SetHook(*this, std::move(hook), /*hard=*/true);
}

void Slot::SetTimeoutWarningHook(std::function<void()> hook) {
  if (state_ != nullptr) state_->SetHook(*this, std::move(hook), /*hard=*/false);
}

void Slot::SetTimeoutHandler(TimeoutHandler* listener) {
  if (state_ != nullptr) state_->SetListener(*this, listener);
}

// ---- ResourceBudgetManager --------------------------------------------------------------------

Result<std::unique_ptr<ResourceBudgetManager>> ResourceBudgetManager::Create(
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
                                                          std::string_view lane) {
  return state_->TryAcquire(task_id, lane, internal::kDefaultTimeout, internal::kNoMetadata);
}
Result<Slot, Rejection> ResourceBudgetManager::TryAcquire(std::string_view task_id,
                                                          std::string_view lane,
                                                          const std::optional<int64_t>& timeout_ms,
                                                          const Metadata& metadata) {
  return state_->TryAcquire(task_id, lane, timeout_ms, metadata);
}
Result<Slot, Rejection> ResourceBudgetManager::TryAcquire(std::string_view task_id,
                                                          std::string_view lane,
                                                          const std::optional<int64_t>& timeout_ms,
                                                          Metadata&& metadata) {
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
const Clock& ResourceBudgetManager::clock() const { return *state_->clock; }
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

Result<ResourceBudgetManager*> GetResourceBudgetManager(std::optional<Config> config) {
  std::lock_guard<std::mutex> guard(g_default_mu);
  if (g_default != nullptr) {
    if (config && !(*config == g_default->config()))
      return Error{ErrorCode::kFailedPrecondition, "", "",
                   "the default resource budget manager already exists with a different "
                   "config; create an explicit ResourceBudgetManager instead"};
    return g_default;
  }
  auto created = ResourceBudgetManager::Create(config.value_or(Config{}));
  if (!created.ok()) return created.error();
  g_default = std::move(created).value().release();
  return g_default;
}

Result<ResourceBudgetManager*> GetResourceBudgetManagerFromJson(std::string_view partial_json) {
  auto config = ParseConfigJson(partial_json);
  if (!config.ok()) return config.error();
  return GetResourceBudgetManager(std::move(config).value());
}

}  // namespace laneguard
