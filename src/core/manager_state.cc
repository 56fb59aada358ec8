#include "core/manager_state.h"

#include <chrono>
#include <exception>
#include <new>
#include <string>
#include <type_traits>
#include <utility>

#include "base/spin_lock.h"
#include "core/live_config.h"

namespace laneguard::internal {
namespace {

const Metadata kNoMetadata;

// What a released call may own besides its counts, moved out of its entry to be freed outside the
// shard lock.
struct Leftovers {
  explicit Leftovers(CallEntry& c)
      : stop(std::exchange(c.stop, std::stop_source(std::nostopstate))),
        metadata(std::exchange(c.metadata, {})) {}
  std::stop_source stop;
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

}  // namespace

namespace {

std::vector<std::unique_ptr<const Config>> FirstConfig(Config config) {
  std::vector<std::unique_ptr<const Config>> configs;
  configs.push_back(std::make_unique<const Config>(std::move(config)));
  return configs;
}

}  // namespace

// The constructor runs before anyone else can see the state: update_mu_ is not needed.
ManagerState::ManagerState(Config config, ManagerOptions options)
    : configs_(FirstConfig(std::move(config))),
      config_(configs_.front().get()),
      default_timeout_ms_(config_.load()->default_timeout_ms),
      timeout_escalation_factor_(config_.load()->timeout_escalation_factor),
      max_rss_mb_(config_.load()->max_rss_mb),
      enable_memory_guards_(config_.load()->enable_memory_guards),
      metrics_capacity_(config_.load()->metrics_capacity),
      clock_(options.clock != nullptr ? options.clock : &FastClock::Get()),
      unix_offset_(clock_->UnixNanos() - clock_->MonotonicNanos()),
      admission_(*config_.load(), options.max_global_limit),
      waiting_(*config_.load(), admission_),
      memory_(options.memory_probe ? std::move(options.memory_probe) : NewProcMemoryProbe(),
              config_.load()->memory_sample_interval_ms, config_.load()->heap_warning_mb,
              unix_offset_),
      calls_(admission_.lane_count()),
      events_(admission_, unix_offset_),
      timers_(calls_, admission_, events_, config_.load()->timeout_escalation_factor) {
  if (!options.observers.empty()) events_.Set(std::move(options.observers));
  memory_.Sample(clock_->MonotonicNanos());
}

// ---- acquire ------------------------------------------------------------------------------------

template <typename M>
[[gnu::always_inline]] inline ManagerState::OpenedCall ManagerState::OpenCall(
    Shard& shard, std::string_view task_id, const CallStart& start, M&& metadata) {
  // A copy is made before the lock (allocation is not admission work) and before the point past
  // which nothing may throw.
  std::optional<Metadata> copied;
  if constexpr (std::is_lvalue_reference_v<M>) {
    if (!metadata.empty()) copied.emplace(metadata);
  }
  SpinLockGuard guard(shard.lock);
  CallSlab& calls = shard.calls;
  const uint32_t entry = calls.NextFree();
  CallEntry& c = calls.at(entry);
  c.task_id.Assign(task_id);
  shard.timers.MakeRoom(calls);
  calls.Claim();  // from here on nothing throws
  shard.timers.Queue(CallSlab::Tag(entry, c.generation));
  c.timer = {};
  c.in_use = true;
  c.phase = CallPhase::kRunning;
  c.lane = static_cast<uint32_t>(start.lane);
  c.call_id = calls.NextCallId(calls_.call_id_blocks());
  c.start_mono = start.now;
  c.timeout_ms = start.timeout_ms;
  c.hard_deadline = start.hard_deadline;
  c.rss_start = start.rss;
  c.heap_start = memory_.heap_used_mb();
  c.concurrent_at_start = start.global_now;
  c.handler = start.handler;
  c.queue = start.queue;
  if (copied) {
    c.metadata = std::move(*copied);
  } else if constexpr (!std::is_lvalue_reference_v<M>) {
    if (!metadata.empty()) c.metadata = std::forward<M>(metadata);
  }
  // The metadata is read by NotifyAdmitted after the unlock: nothing else touches it until the
  // slot, not yet returned, is released.
  return {entry, c.generation, c.call_id, &c.metadata};
}

// The checks before the counts, in the documented order. Fills `lane` and `timeout` (and
// `rss`) as it goes; inline, as most of TryAcquire's own work.
[[gnu::always_inline]] inline std::optional<Refusal> ManagerState::Check(
    std::string_view lane_name, const std::optional<int64_t>& timeout_ms, const LaneState** lane,
    int64_t* timeout, double* rss) const {
  if (admission_.shutting_down()) return Refusal{RejectReason::kShuttingDown};
  const int lane_index = admission_.FindLane(lane_name);
  if (lane_index < 0) return Refusal{RejectReason::kUnknownLane};
  *lane = &admission_.lane(lane_index);
  *timeout =
      timeout_ms.has_value() ? *timeout_ms : default_timeout_ms_.load(std::memory_order_relaxed);
  if (*timeout <= 0 || *timeout > kMaxTimeoutMs) {
    Refusal f{RejectReason::kInvalidTimeout};
    f.timeout_ms = *timeout;
    return f;
  }
  *rss = memory_.rss_mb();
  const double max_rss = max_rss_mb_.load(std::memory_order_relaxed);
  if (enable_memory_guards_.load(std::memory_order_relaxed) && *rss > max_rss) {
    Refusal f{RejectReason::kMemoryLimit};
    f.rss_mb = *rss;
    f.max_rss_mb = max_rss;
    return f;
  }
  return std::nullopt;
}

template <typename M>
Result<Slot> ManagerState::TryAcquire(std::string_view task_id, std::string_view lane_name,
                                      const std::optional<int64_t>& timeout_ms, M&& metadata,
                                      TimeoutHandler* handler) {
  const LaneState* lane = nullptr;
  int64_t timeout = 0;
  double rss = 0;
  if (std::optional<Refusal> f = Check(lane_name, timeout_ms, &lane, &timeout, &rss))
    return Reject(*f, task_id, lane_name, lane);
  int lane_now = 0, global_now = 0;
  if (std::optional<Refusal> f = admission_.Take(lane->index, &lane_now, &global_now)) {
    if (f->gated) [[unlikely]]
      return TryAcquireGated(task_id, *lane, timeout, std::forward<M>(metadata), handler);
    return Reject(*f, task_id, lane_name, lane);
  }
  return Grant(task_id,
               {.lane = lane->index,
                .timeout_ms = timeout,
                .rss = rss,
                .global_now = global_now,
                .lane_now = lane_now,
                .handler = handler},
               std::forward<M>(metadata));
}

template <typename M>
[[gnu::always_inline]] inline Result<Slot> ManagerState::Grant(std::string_view task_id,
                                                               const CallStart& admitted,
                                                               M&& metadata) {
  // Everything that can throw (allocation) comes before the entry is taken, and a throw hands
  // both counts back: no path leaks a slot, not even out-of-memory.
  const int64_t now = clock_->MonotonicNanos();
  const int64_t timeout_ns = admitted.timeout_ms * kNanosPerMs;
  const auto hard_ns = static_cast<int64_t>(
      static_cast<double>(timeout_ns) * timeout_escalation_factor_.load(std::memory_order_relaxed));
  const size_t shard_index = calls_.LocalShard();
  OpenedCall call;
  try {
    call = OpenCall(calls_.shard(shard_index), task_id,
                    {.lane = admitted.lane,
                     .now = now,
                     .timeout_ms = admitted.timeout_ms,
                     .hard_deadline = now + hard_ns,
                     .rss = admitted.rss,
                     .global_now = admitted.global_now,
                     .handler = admitted.handler,
                     .queue = admitted.queue},
                    std::forward<M>(metadata));
  } catch (...) {
    Unadmit(admitted.lane, task_id);
    throw;
  }
  if (events_.HasObservers() ||
      (enable_memory_guards_.load(std::memory_order_relaxed) && memory_.heap_warning_pending())) {
    NotifyAdmitted(now, call.call_id, task_id, admitted, *call.metadata);
  }
  // A prvalue, so it is built in the caller's Result: a named local would be moved there.
  return Result<Slot>(std::in_place_index<0>, Slot::Key(),
                      SlotGrant{.state = this,
                                .index = CallTable::PackIndex(shard_index, call.entry),
                                .generation = call.generation,
                                .call_id = call.call_id,
                                .start = now,
                                .deadline = now + timeout_ns,
                                .hard_deadline = now + hard_ns,
                                .global_active = admitted.global_now,
                                .lane_active = admitted.lane_now});
}

// Hands back the counts of a call whose entry could not be opened (out of memory). The manager is
// alive (the caller is admitting on it), so this is never the last release of a destroyed one.
void ManagerState::Unadmit(size_t lane, std::string_view task_id) noexcept {
  if (waiting_.has_quotas()) waiting_.ReleaseQuota(task_id, lane);
  if (admission_.GiveBack(lane) == AdmissionLayout::kGated) HandOn(lane);
}

Result<Slot> ManagerState::Reject(const Refusal& f, std::string_view task_id,
                                  std::string_view lane_name, const LaneState* lane) {
  admission_.CountRejection(lane != nullptr ? lane->index : admission_.lane_count(), f.reason);
  if (events_.HasObservers()) [[unlikely]]
    NotifyRejected(f, task_id, lane_name, lane);
  // Built in place, the Error's Rejection and its lane string included: a Rejection or a
  // std::string moved into the result would copy the lane's characters a second time.
  return Result<Slot>(std::in_place_index<1>, std::in_place_type<Rejection>, f.reason, lane_name,
                      static_cast<int>(f.active), static_cast<int>(f.limit), f.rss_mb, f.max_rss_mb,
                      f.timeout_ms);
}

// Out of line: its event and snapshot would otherwise give every rejection a large frame.
void ManagerState::NotifyRejected(const Refusal& f, std::string_view task_id,
                                  std::string_view lane_name, const LaneState* lane) {
  const std::string message =
      Rejection(f.reason, lane_name, static_cast<int>(f.active), static_cast<int>(f.limit),
                f.rss_mb, f.max_rss_mb, f.timeout_ms)
          .message();
  CallEvent e;
  e.kind = EventKind::kRejected;
  e.time_unix_nanos = clock_->UnixNanos();
  e.task_id = task_id;
  e.lane = lane_name;
  e.global_active = admission_.GlobalActive();
  e.global_limit = admission_.global_limit();
  if (lane != nullptr) {
    e.lane_active = admission_.LaneActive(lane->index);
    e.lane_limit = lane->Limit();
  }
  e.reason = f.reason;
  e.message = message;
  MemorySnapshot mem;
  if (f.reason == RejectReason::kMemoryLimit) {
    mem = memory_.Latest();
    e.memory = &mem;
  }
  events_.Notify(e);
}

// The acquired event and a pending heap warning, out of TryAcquire's fast path. noexcept: the
// slot is already taken and no telemetry failure may lose it.
void ManagerState::NotifyAdmitted(int64_t now, uint64_t call_id, std::string_view task_id,
                                  CallStart start, const Metadata& metadata) noexcept {
  const size_t lane = start.lane;
  const int global_now = start.global_now, lane_now = start.lane_now;
  try {
    if (events_.HasObservers()) {
      CallEvent e =
          events_.For(EventKind::kAcquired, now, call_id, task_id, lane, global_now, lane_now);
      e.timeout_ms = start.timeout_ms;
      e.wait_ns = start.queue.wait_ns();
      e.borrowed = start.queue.borrowed();
      e.metadata = &metadata;
      events_.Notify(e);
    }
    if (enable_memory_guards_.load(std::memory_order_relaxed) && memory_.heap_warning_pending() &&
        memory_.TakeHeapWarning() && events_.HasObservers()) {
      MemorySnapshot mem = memory_.Latest();
      std::string message = "heap " + std::to_string(mem.heap_used_mb) +
                            " MB exceeds heapWarningMb " +
                            std::to_string(config().heap_warning_mb) + "; call admitted";
      CallEvent e =
          events_.For(EventKind::kHeapWarning, now, call_id, task_id, lane, global_now, lane_now);
      e.message = message;
      e.memory = &mem;
      events_.Notify(e);
    }
  } catch (...) {
    // Telemetry must never fail or leak a worker call.
  }
}

template Result<Slot> ManagerState::TryAcquire<const Metadata&>(std::string_view, std::string_view,
                                                                const std::optional<int64_t>&,
                                                                const Metadata&, TimeoutHandler*);
template Result<Slot> ManagerState::TryAcquire<Metadata>(std::string_view, std::string_view,
                                                         const std::optional<int64_t>&, Metadata&&,
                                                         TimeoutHandler*);

// ---- waiting ------------------------------------------------------------------------------------

template <typename M>
Result<Slot> ManagerState::TryAcquireGated(std::string_view task_id, const LaneState& lane,
                                           int64_t timeout, M&& metadata, TimeoutHandler* handler) {
  Waiter w;
  w.task_id = task_id;
  w.lane = lane.index;
  WaiterList granted;
  const Admitted a = waiting_.Admit(&w, /*may_wait=*/false, clock_->MonotonicNanos(), &granted);
  CompleteGranted(granted);
  if (a.kind != Admitted::kGranted) return Reject(a.refusal, task_id, lane.name, &lane);
  return Grant(task_id,
               {.lane = lane.index,
                .timeout_ms = timeout,
                .rss = memory_.rss_mb(),
                .global_now = w.global_now,
                .lane_now = w.lane_now,
                .handler = handler,
                .queue = QueueMark(0, w.borrowed)},
               std::forward<M>(metadata));
}

void ManagerState::AcquireAsync(std::string_view task_id, std::string_view lane_name,
                                AcquireOptions&& options, AcquireCallback&& done) {
  const LaneState* lane = nullptr;
  int64_t timeout = 0;
  double rss = 0;
  std::optional<Refusal> f = Check(lane_name, options.timeout_ms, &lane, &timeout, &rss);
  if (!f && options.wait_ms && (*options.wait_ms < 0 || *options.wait_ms > kMaxTimeoutMs)) {
    f = Refusal{RejectReason::kInvalidWait};
    f->timeout_ms = *options.wait_ms;
  }
  if (!f && options.stop_token.stop_requested()) f = Refusal{RejectReason::kCancelled};
  if (f) return done(Reject(*f, task_id, lane_name, lane));
  if (options.wait_ms == 0) {
    return done(TryAcquire(task_id, lane_name, timeout, std::move(options.metadata),
                           options.timeout_handler));
  }
  int lane_now = 0, global_now = 0;
  f = admission_.Take(lane->index, &lane_now, &global_now);
  if (!f) {
    return done(Grant(task_id,
                      {.lane = lane->index,
                       .timeout_ms = timeout,
                       .rss = rss,
                       .global_now = global_now,
                       .lane_now = lane_now,
                       .handler = options.timeout_handler},
                      std::move(options.metadata)));
  }
  auto w = std::make_unique<Waiter>();
  w->task_id = task_id;
  w->lane = lane->index;
  w->timeout_ms = timeout;
  w->metadata = std::move(options.metadata);
  w->handler = options.timeout_handler;
  w->priority = options.priority;
  w->wait_ms = options.wait_ms.value_or(-1);
  w->done = std::move(done);
  // Before the request is queued, so a stop can never find it half-made; a stop already
  // requested runs CancelWait here and now, and Admit then refuses with cancelled.
  if (options.stop_token.stop_possible())
    w->on_stop.emplace(options.stop_token, CancelWait{this, w.get()});
  WaiterList granted;
  const Admitted a = waiting_.Admit(w.get(), /*may_wait=*/true, clock_->MonotonicNanos(), &granted);
  CompleteGranted(granted);
  switch (a.kind) {
    case Admitted::kQueued:
      static_cast<void>(w.release());  // owned by the queue; whoever decides it frees it
      return;
    case Admitted::kGranted:
      granted.Push(w.release());
      return CompleteGranted(granted);
    case Admitted::kRefused:
      Finish(w.release(), Reject(a.refusal, task_id, lane_name, lane));
      return;
  }
}

void CancelWait::operator()() const noexcept { state->CancelWaiter(waiter); }

void ManagerState::CancelWaiter(Waiter* w) {
  if (!waiting_.Cancel(w)) return;  // not queued: decided by another thread, or not queued yet
  WaiterList cancelled;
  cancelled.Push(w);
  CompleteRefused(cancelled, RejectReason::kCancelled);
}

void ManagerState::HandOn(size_t lane) noexcept {
  WaiterList granted;
  const uint64_t after = waiting_.Released(lane, &granted);
  // The last call of a destroyed manager: nothing was granted, and nobody else frees the state.
  if ((after & ~AdmissionLayout::kGated) == AdmissionLayout::kOrphaned) {
    delete this;
    return;
  }
  CompleteGranted(granted);
}

void ManagerState::CompleteGranted(WaiterList& granted) noexcept {
  while (Waiter* w = granted.Pop()) {
    const int64_t now = clock_->MonotonicNanos();
    Result<Slot> slot = Error(ErrorCode::kInternal, "", "", "");
    try {
      slot = Grant(w->task_id,
                   {.lane = w->lane,
                    .timeout_ms = w->timeout_ms,
                    .rss = memory_.rss_mb(),
                    .global_now = w->global_now,
                    .lane_now = w->lane_now,
                    .handler = w->handler,
                    .queue = QueueMark(now - w->arrived, w->borrowed)},
                   std::move(w->metadata));
    } catch (...) {
      // Grant gave the place back (and handed it on); the request learns why it has none.
      slot = Error(ErrorCode::kInternal, "", "",
                   "out of memory opening the call granted to task '" + w->task_id + "'");
    }
    Finish(w, std::move(slot));
  }
}

void ManagerState::CompleteRefused(WaiterList& refused, RejectReason reason) noexcept {
  while (Waiter* w = refused.Pop()) {
    Refusal f{reason};
    if (reason == RejectReason::kWaitTimeout) f.timeout_ms = w->wait_ms;
    const LaneState& lane = admission_.lane(w->lane);
    Finish(w, Reject(f, w->task_id, lane.name, &lane));
  }
}

void ManagerState::Finish(Waiter* w, Result<Slot> result) noexcept {
  // First, so a stop racing with this decision has returned before `w` is freed (a stop_callback's
  // destructor waits for a run on another thread; on this thread, inside CancelWait, it does not).
  w->on_stop.reset();
  AcquireCallback done = std::move(w->done);
  delete w;
  if (done) {
    try {
      done(std::move(result));
    } catch (...) {
      // Documented as must-not-throw; a throwing callback loses nothing of ours (a slot it held
      // is released by its destructor during the unwinding).
    }
  }
}

// ---- release ------------------------------------------------------------------------------------

// Inline: it is most of a release's work.
inline void ManagerState::FillRecord(CallEntry& c, int64_t now, bool success,
                                     std::string_view error_type, RingRecord& r) const {
  r.call_id = c.call_id;
  r.lane = c.lane;
  r.success = success;
  // By the clock as well as by the timer: a call that returns past a deadline before the next
  // tick (or with no timer thread) still reached it.
  r.timeout_reached = c.phase >= CallPhase::kWarned || now >= c.deadline();
  r.escalated = c.phase == CallPhase::kEscalated || now >= c.hard_deadline;
  r.concurrent_at_start = c.concurrent_at_start;
  r.queue = c.queue;
  // A snapshot of the count that still includes this call (it drops after the record).
  r.concurrent_at_end = admission_.GlobalActive();
  r.duration_ms = static_cast<double>(now - c.start_mono) / kNanosPerMs;
  r.rss_start = c.rss_start;
  r.rss_end = memory_.rss_mb();
  r.heap_start = c.heap_start;
  r.heap_end = memory_.heap_used_mb();
  r.timeout_ms = c.timeout_ms;
  r.start_unix = c.start_mono + unix_offset_;
  r.end_mono = now;
  c.task_id.MoveTo(r.task_id);
  if (error_type.empty()) {
    r.error_type.clear();
  } else {
    r.error_type.assign(error_type);
  }
}

ReleaseOutcome ManagerState::Release(Slot& slot, bool success, std::string_view error_type,
                                     bool fail_if_late, std::string_view late_error_type) {
  const int64_t now = clock_->MonotonicNanos();
  Shard* shard = nullptr;
  CallEntry* c = calls_.LockEntry(slot.index_, slot.generation_, &shard);
  slot.state_ = nullptr;
  if (c == nullptr) return {};
  shard->lock.AssertHeld();  // LockEntry returns with it held when it finds the call
  ReleaseOutcome outcome{.released = true,
                         .past_hard_deadline = fail_if_late && now >= c->hard_deadline};
  if (outcome.past_hard_deadline) {
    success = false;
    error_type = late_error_type;
  }
  const uint32_t lane = c->lane;
  // The task's quota, before the record takes the task id. Waiting's lock is taken inside the
  // shard's here and nowhere the other way round.
  if (waiting_.has_quotas()) [[unlikely]]
    ReleaseQuota(*c);
  shard->timers.Cancel(c->timer);
  if (c->phase == CallPhase::kEscalated) shard->records.RemoveOverrunning(lane);
  RingRecord& r = shard->records.Next(static_cast<size_t>(metrics_capacity_));
  FillRecord(*c, now, success, error_type, r);
  shard->records.Count(r);

  // Destroyed after unlocking: freeing memory or a stop state is not admission work. Most calls
  // have neither, so the holder is only built when one is present.
  LeftoversHolder leftovers;
  if (c->stop.stop_possible() || !c->metadata.empty()) leftovers.TakeFrom(*c);
  shard->calls.Free(CallTable::EntryOf(slot.index_));

  outcome.duration_ms = r.duration_ms;
  outcome.timeout_reached = r.timeout_reached;
  outcome.escalated = r.escalated;
  // Observers hear of the release before the counts drop: once they have, this thread may no
  // longer touch the state (a destroyed manager's last release frees it).
  if (events_.HasObservers()) {
    UnlockAndNotifyReleased(*shard, r, now, lane, leftovers.metadata());
  } else {
    shard->lock.unlock();
  }
  // The admission word is the last thing touched, unless it says otherwise: with the gate set the
  // count is kept and the place given back and handed on under the wait queue's lock (the count
  // keeps the state alive until then), and the orphan bit decides who frees a destroyed
  // manager's state.
  if (const uint64_t after = admission_.GiveBack(lane)) [[unlikely]] {
    if (after == AdmissionLayout::kGated) {
      HandOn(lane);
    } else {
      delete this;  // kOrphaned: the last call of a destroyed manager
    }
  }
  return outcome;
}

// Out of line, so the public record (a few hundred bytes, zeroed on construction) is only built
// when someone listens: building it in Release cost a third of an unobserved release.
// noexcept: whatever fails here, the shard is unlocked and the release completes.
void ManagerState::UnlockAndNotifyReleased(Shard& shard, const RingRecord& r, int64_t now,
                                           size_t lane, const Metadata& metadata) noexcept {
  std::optional<WorkerCallMetrics> record;
  try {
    record.emplace(ToPublic(r, admission_));  // under the lock: r is reused once it is released
  } catch (...) {
    // Out of memory for the observers' copy: they miss this event, the call is still released.
  }
  const uint64_t call_id = r.call_id;
  shard.lock.unlock();
  if (!record) return;
  try {
    CallEvent e = events_.For(EventKind::kReleased, now, call_id, record->task_id, lane,
                              admission_.GlobalActive() - 1, admission_.LaneActive(lane) - 1);
    e.timeout_ms = record->timeout_ms;
    e.metadata = &metadata;
    e.record = &*record;
    events_.Notify(e);
  } catch (...) {
    // Telemetry must never fail or leak a worker call.
  }
}

// ---- the call's timeout -------------------------------------------------------------------------

std::stop_token ManagerState::StopToken(const Slot& slot) {
  std::stop_source fresh;  // allocated outside the lock, used only if the entry has none yet
  Shard* shard = nullptr;
  CallEntry* c = calls_.LockEntry(slot.index_, slot.generation_, &shard);
  if (c == nullptr) return {};
  shard->lock.AssertHeld();  // LockEntry returns with it held when it finds the call
  if (!c->stop.stop_possible()) c->stop = std::move(fresh);
  std::stop_source stop = c->stop;
  const bool past_deadline = c->phase >= CallPhase::kWarned;
  shard->lock.unlock();
  if (past_deadline) stop.request_stop();
  return stop.get_token();
}

// Out of line: the task id's view is not built on releases without quotas.
void ManagerState::ReleaseQuota(const CallEntry& c) noexcept {
  waiting_.ReleaseQuota(c.task_id.view(), c.lane);
}

ManagerState::Queued ManagerState::QueuedOf(const Slot& slot) {
  Shard* shard = nullptr;
  CallEntry* c = calls_.LockEntry(slot.index_, slot.generation_, &shard);
  if (c == nullptr) return {};
  shard->lock.AssertHeld();  // LockEntry returns with it held when it finds the call
  const Queued q{c->queue.wait_ns(), c->queue.borrowed()};
  shard->lock.unlock();
  return q;
}

void ManagerState::SetTimeoutHandler(const Slot& slot, TimeoutHandler* handler) {
  Shard* shard = nullptr;
  CallEntry* c = calls_.LockEntry(slot.index_, slot.generation_, &shard);
  if (c == nullptr) return;
  shard->lock.AssertHeld();  // LockEntry returns with it held when it finds the call
  c->handler = handler;
  shard->lock.unlock();
}

// ---- reads --------------------------------------------------------------------------------------

std::vector<WorkerCallMetrics> ManagerState::GetMetrics() {
  return CollectMetrics(calls_, admission_, static_cast<size_t>(metrics_capacity_));
}

Statistics ManagerState::GetStatistics() {
  Statistics s = CollectStatistics(calls_, admission_, static_cast<size_t>(metrics_capacity_));
  for (size_t l = 0; l < admission_.lane_count(); ++l)
    s.lanes[admission_.lane(l).name].queued = waiting_.Queued(l);
  return s;
}

ConcurrencyStatus ManagerState::GetConcurrencyStatus() {
  ConcurrencyStatus s = CollectConcurrencyStatus(calls_, admission_);
  for (size_t l = 0; l < admission_.lane_count(); ++l) {
    ConcurrencyCount& lane = s.lanes[admission_.lane(l).name];
    const Waiting::QueueFigures q = waiting_.Figures(l);
    lane.queued = q.queued;
    lane.queue_limit = q.queue_limit;
  }
  return s;
}

// ---- live config --------------------------------------------------------------------------------

Result<Config> ManagerState::UpdateConfig(Config config) {
  auto valid = ValidateConfig(std::move(config));
  if (!valid.ok()) return valid.error();
  WaiterList granted;
  Config in_effect;
  {
    MutexLock lock(update_mu_);
    const Config& current = *configs_.back();
    if (std::optional<Error> e = CheckLiveChange(current, *valid, admission_.max_global_limit()))
      return *std::move(e);
    if (*valid == current) return current;  // nothing to change: no config kept for it
    configs_.push_back(std::make_unique<const Config>(std::move(valid).value()));
    const Config& next = *configs_.back();
    default_timeout_ms_.store(next.default_timeout_ms, std::memory_order_relaxed);
    timeout_escalation_factor_.store(next.timeout_escalation_factor, std::memory_order_relaxed);
    max_rss_mb_.store(next.max_rss_mb, std::memory_order_relaxed);
    enable_memory_guards_.store(next.enable_memory_guards, std::memory_order_relaxed);
    timers_.SetEscalationFactor(next.timeout_escalation_factor);
    memory_.SetHeapWarningMb(next.heap_warning_mb);
    memory_.SetSampleIntervalMs(next.memory_sample_interval_ms);
    // The admission limits change under Waiting's lock, so gated decisions see them together
    // with the queue's; waiters that can have a place now get it, as from a release.
    waiting_.Update(next, &granted);
    config_.store(&next, std::memory_order_release);
    in_effect = next;
  }
  // A fresh sample, so a changed heap mark or a shortened interval applies now rather than after
  // the old interval.
  memory_.Sample(clock_->MonotonicNanos());
  // Outside the lock: a waiter's callback may call the manager (UpdateConfig included).
  CompleteGranted(granted);
  return in_effect;
}

// ---- lifecycle ----------------------------------------------------------------------------------

void ManagerState::StartBackground() {
  ticker_.Start(std::chrono::milliseconds(config().timer_tick_ms), [this] { Tick(); });
}

void ManagerState::Tick() {
  MutexLock lock(tick_mu_);
  const int64_t now = clock_->MonotonicNanos();
  if (memory_.Due(now)) memory_.Sample(now);
  timers_.FireDue(now);
  WaiterList expired;
  waiting_.Expire(now, &expired);
  CompleteRefused(expired, RejectReason::kWaitTimeout);
}

void ManagerState::Shutdown() {
  admission_.Shutdown();
  WaiterList waiting;
  waiting_.TakeAll(&waiting);
  CompleteRefused(waiting, RejectReason::kShuttingDown);
  ticker_.Stop();
}

}  // namespace laneguard::internal
