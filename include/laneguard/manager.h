// ResourceBudgetManager: lane-aware admission, two-phase timeouts, memory guards and call metrics
// (the spec's ResourceBudgetManager). A worker call asks for a Slot, does its work, and releases
// it:
//
//   auto manager = laneguard::ResourceBudgetManager::Create(config).value();
//   auto slot = manager->TryAcquire("task-123", "tool_call", /*timeout_ms=*/30000);
//   if (!slot.ok()) { log(slot.error().message()); return; }
//   DoWork(slot->stop_token());
//   slot->Release(/*success=*/true);
//
// Admission checks the lane and the global limit and takes both places in one compare-and-swap on a
// word holding every count (when the lanes' counts fit in 64 bits: the spec's five lanes do up to a
// global limit of 1,023). Neither count ever exceeds its limit, so no two racing callers can both
// take the last place, and no lock is taken. Where the counts do not fit, the lane place and then
// the global one are taken by a compare-and-swap each (the lane place handed back if the global
// count is full); a caller racing with one that reserved a lane place and handed it back may then
// be refused for lane_limit in those few nanoseconds, as if the place had been briefly held. The
// memory guard reads RSS and heap sampled every memorySampleIntervalMs by the background thread (by
// Tick() without one; not after Shutdown()), so admission makes no syscall.
//
// Timeouts: at the call's timeout the manager requests a stop on the slot's stop_token and reports
// kTimeoutWarning; at timeout x timeoutEscalationFactor it reports kTimeoutEscalation. A call that
// set a TimeoutHandler (Slot::SetTimeoutHandler) hears each phase too, after the observers: that
// and the stop token are the only ways a call learns of its timeout. Neither phase releases the
// slot: a call past its hard deadline stays counted (as "overrunning") until it is released,
// because its work may still be running.
//
// Thread safety: every method of ResourceBudgetManager is safe to call from any thread. A Slot is
// owned by one thread at a time (move it to hand it over); its methods must not race with each
// other, but may race with any manager method. Destroying the manager while slots are outstanding
// is safe: the slots stay valid and releasable, and the internal state is freed with the last one.
// The clock passed in ManagerOptions must outlive the manager and its slots.
//
// Timeout handlers and observers run on the timer thread (inside Tick()), one after another. They
// must not call Tick(), Shutdown() or destroy the manager, and should be quick: a slow handler
// delays every other timer. They may release other calls' slots (Release() then does not wait
// for handlers of its own thread, and the handler of a call released that way does not run).
#ifndef LANEGUARD_MANAGER_H_
#define LANEGUARD_MANAGER_H_

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "laneguard/clock.h"
#include "laneguard/config.h"
#include "laneguard/error.h"
#include "laneguard/memory.h"
#include "laneguard/metrics.h"
#include "laneguard/observer.h"
#include "laneguard/result.h"

namespace laneguard {

namespace internal {
class CallGuard;
class ManagerState;
struct SlotGrant;
}  // namespace internal

// What Slot::ReleaseUnlessLate or Slot::ReleaseWithOutcome found, as the record says it.
struct ReleaseOutcome {
  bool released = false;            // false: the slot was not valid (already released, moved from)
  bool past_hard_deadline = false;  // ReleaseUnlessLate only: and so recorded as a failure
  bool timeout_reached = false;     // the timeout passed during the call (timeoutReached)
  bool escalated = false;           // and the hard deadline too
  double duration_ms = 0;
};

// Told of a call's two timeout phases on the manager's timer thread: OnWarning at the timeout
// (just after the stop request), OnEscalation at the hard deadline (timeout x
// timeoutEscalationFactor); each at most once, in that order. Release() waits for a running
// handler, so it may touch what the call owns; it must not release the slot itself.
class TimeoutHandler {
 public:
  virtual void OnWarning() = 0;
  virtual void OnEscalation() = 0;

 protected:
  ~TimeoutHandler() = default;
};

// A granted place in a lane. Move-only. Releasing twice is harmless (the second call returns
// false); a Slot destroyed without Release() is released as a failure with errorType "abandoned".
class Slot {
 public:
  Slot() = default;
  // Inline (as is the destructor): a wrapper moves its slot once per call.
  // The private copy is the move's first half (a plain copy of pointers and numbers).
  Slot(Slot&& other) noexcept : Slot(other) {  // NOLINT(performance-move-constructor-init)
    other.state_ = nullptr;
  }
  // Releases the current slot (abandoned) first.
  Slot& operator=(Slot&& other) noexcept {
    if (this != &other) {
      if (state_ != nullptr) ReleaseAbandoned();
      *this = static_cast<const Slot&>(other);
      other.state_ = nullptr;
    }
    return *this;
  }
  ~Slot() {
    if (state_ != nullptr) ReleaseAbandoned();
  }

  // False for a default-constructed, moved-from or released slot.
  bool valid() const { return state_ != nullptr; }
  // Unique within the manager, starting at 1. Calls admitted on different CPUs draw ids from
  // different blocks, so ids do not follow admission order across threads.
  uint64_t call_id() const { return call_id_; }
  // "call-<n>", the spec's callId/contextId.
  std::string call_id_string() const;

  // Settles the call: the lane and global counts drop, a record goes into the metrics ring, the
  // observers get kReleased. Returns false if the slot was not valid (already released, moved
  // from).
  bool Release(bool success, std::string_view error_type = {});
  // Release, telling what the record says: whether the deadlines passed, and the duration.
  ReleaseOutcome ReleaseWithOutcome(bool success, std::string_view error_type = {});
  // Release for a caller that fails a call returning at or past its hard deadline (the worker-call
  // wrappers do): such a call is recorded as a failure with `late_error_type` whatever `success`
  // says. One clock reading decides that and the record, so the caller and the record agree.
  ReleaseOutcome ReleaseUnlessLate(bool success, std::string_view error_type,
                                   std::string_view late_error_type);

  // Stop requested at the warning deadline (timeout), and by Shutdown() never; the call decides how
  // to stop. Created on first use, so calls that never ask pay nothing for it.
  std::stop_token stop_token();
  // Monotonic start (Clock::MonotonicNanos) and deadlines of the two phases.
  int64_t start_mono_nanos() const { return start_; }
  int64_t deadline_mono_nanos() const { return deadline_; }
  int64_t hard_deadline_mono_nanos() const { return hard_deadline_; }

  // Tells `handler` of the call's two timeout phases (see TimeoutHandler), on the manager's timer
  // thread; replaces any earlier handler, and null removes it. The handler must outlive the call
  // or be removed first. A phase that has already fired is not told again.
  void SetTimeoutHandler(TimeoutHandler* handler);

  // The global and lane counts right after this slot was granted (the spec's acquired_slot
  // globalConcurrency and laneConcurrency).
  int global_active_at_start() const { return global_active_at_start_; }
  int lane_active_at_start() const { return lane_active_at_start_; }
  // How long the request waited in its lane's queue (0 when granted at once), and whether its
  // place is borrowed from other lanes' idle capacity (lane lending). Read from the call's entry
  // (under its shard's lock: not kept in the Slot, which every call moves); 0 and false for a
  // slot that is not valid.
  int64_t wait_nanos() const;
  bool borrowed() const;

  // Only the manager can make a Key, so only the manager can use the constructor below; it is
  // public so that TryAcquire's Result can construct the Slot in place instead of moving one in.
  class Key {
    friend class internal::ManagerState;
    Key() = default;
  };
  // Inline, and from a struct the manager fills in the same expression: the compiler stores the
  // figures straight into the Result, as it did with one argument each.
  inline Slot(Key /*unused*/, const internal::SlotGrant& grant);

 private:
  friend class internal::ManagerState;
  friend class ResourceBudgetManager;

  // Member-wise copies for the moves above; private, so a Slot cannot be copied from outside.
  Slot(const Slot&) = default;
  Slot& operator=(const Slot&) = default;
  void ReleaseAbandoned();

  internal::ManagerState* state_ = nullptr;
  uint32_t index_ = 0;
  uint32_t generation_ = 0;
  uint64_t call_id_ = 0;
  int64_t start_ = 0;
  int64_t deadline_ = 0;
  int64_t hard_deadline_ = 0;
  int global_active_at_start_ = 0;
  int lane_active_at_start_ = 0;
};

namespace internal {
// What the manager fills in to grant a Slot (see Slot's members of the same names).
struct SlotGrant {
  ManagerState* state = nullptr;
  uint32_t index = 0;
  uint32_t generation = 0;
  uint64_t call_id = 0;
  int64_t start = 0;
  int64_t deadline = 0;
  int64_t hard_deadline = 0;
  int global_active = 0;
  int lane_active = 0;
};
}  // namespace internal

inline Slot::Slot(Key /*unused*/, const internal::SlotGrant& grant)
    : state_(grant.state),
      index_(grant.index),
      generation_(grant.generation),
      call_id_(grant.call_id),
      start_(grant.start),
      deadline_(grant.deadline),
      hard_deadline_(grant.hard_deadline),
      global_active_at_start_(grant.global_active),
      lane_active_at_start_(grant.lane_active) {}

// A waiting request's class. Within a class requests are served first come, first served; across
// classes by age as well (see AcquireOptions::priority).
enum class Priority : uint8_t { kLow = 0, kNormal = 1, kHigh = 2 };
// "low", "normal", "high".
std::string_view ToString(Priority priority);

// What Acquire is asked for, besides the task id and the lane.
struct AcquireOptions {
  // The call's run timeout, as for TryAcquire (defaultTimeoutMs when empty). Its clock starts when
  // the slot is granted, not when the request starts waiting.
  std::optional<int64_t> timeout_ms;
  // How long the request may wait for a place: 0 does not wait (TryAcquire's answer), empty waits
  // until granted, cancelled or Shutdown(). Within [0, kMaxTimeoutMs], else invalid_wait. The wait
  // ends on the manager's timer (timerTickMs resolution) with wait_timeout.
  std::optional<int64_t> wait_ms;
  // Queue order: a request of a higher class is served first, unless a lower one has waited more
  // than queueAgingMs per class between them (one step: normal over low, high over normal; two:
  // high over low). So no request starves: in a lane of limit L whose calls hold their slot at
  // most H, a request waits at most 2 x queueAgingMs + ceil(Q / L) x H, Q being the lane's queue
  // limit, whatever arrives after it (the queue never holds more than Q requests ahead of it, and
  // none that arrives more than 2 x queueAgingMs after it is served before it).
  Priority priority = Priority::kNormal;
  Metadata metadata;
  // Stopping it cancels the wait (refused with cancelled); it has no effect once the slot is
  // granted.
  std::stop_token stop_token;
  // The call's TimeoutHandler from the grant on (Slot::SetTimeoutHandler). Must outlive the call.
  TimeoutHandler* timeout_handler = nullptr;
};

// Called exactly once per AcquireAsync, with the slot or the refusal.
using AcquireCallback = std::function<void(Result<Slot>)>;

struct ManagerOptions {
  // Defaults to FastClock::Get(). Must outlive the manager and its slots.
  const Clock* clock = nullptr;
  // Defaults to NewProcMemoryProbe().
  std::unique_ptr<MemoryProbe> memory_probe;
  // When false there is no background thread: timers fire and memory is sampled only when the
  // owner calls Tick() (tests with a ManualClock do this).
  bool start_background_thread = true;
  std::vector<std::shared_ptr<Observer>> observers;
  // The most UpdateConfig may raise globalConcurrencyLimit to: the admission counts are laid out
  // for max(this, the config's) when the manager is made (a larger limit needs a restart). 0: the
  // config's. Within [0, kMaxConcurrencyLimit]. A daemon that reloads passes a roomy value; up to
  // 1,023 keeps the spec's five lanes in one admission word (see the file comment).
  int max_global_limit = 0;
};

class ResourceBudgetManager {
 public:
  // Validates `config` (see ValidateConfig) and starts the background thread.
  static Result<std::unique_ptr<ResourceBudgetManager>> Create(Config config,
                                                               ManagerOptions options = {});
  ~ResourceBudgetManager();
  ResourceBudgetManager(const ResourceBudgetManager&) = delete;
  ResourceBudgetManager& operator=(const ResourceBudgetManager&) = delete;

  // Asks for a place in `lane`, without waiting. `timeout_ms` defaults to defaultTimeoutMs; a
  // value <= 0 or above kMaxTimeoutMs is rejected with kInvalidTimeout. Rejections, in order of
  // checking: kShuttingDown, kUnknownLane, kInvalidTimeout, kMemoryLimit, kLaneLimit, kGlobalLimit
  // (and kTaskQuota with per-task quotas). While requests wait (Acquire), a place that a waiter
  // can use is not taken: TryAcquire goes behind the queue, and is then decided under the queue's
  // lock instead of lock-free (so is every call when quotas or lane lending are configured). A
  // refusal is an Error whose rejection() is the Rejection (its code: CodeOf(reason)). With a
  // short task id (<= 39 bytes) and no metadata the granted path makes no syscall and, once warm,
  // no heap allocation. Nor does a rejection naming a lane of up to 15 bytes, once this manager
  // has refused the calling thread before (the first time registers the thread's rejection
  // counters). The only exception it can throw is std::bad_alloc, and then no count is taken.
  //
  // The overloads differ only in what they cost the caller: the two-argument form builds no
  // optional and no metadata, and `metadata` is copied only when it is not empty (moved when given
  // as an rvalue).
  Result<Slot> TryAcquire(std::string_view task_id, std::string_view lane);
  Result<Slot> TryAcquire(std::string_view task_id, std::string_view lane,
                          const std::optional<int64_t>& timeout_ms, const Metadata& metadata = {});
  Result<Slot> TryAcquire(std::string_view task_id, std::string_view lane,
                          const std::optional<int64_t>& timeout_ms, Metadata&& metadata);
  // Asks for a place and waits for one if the lane (or the global limit) is full: the request joins
  // the lane's queue and is granted when a place frees, in priority order (AcquireOptions). The
  // queue is bounded (laneQueueLimits, defaultQueueLimit): a full queue refuses at once with
  // kQueueFull. A wait that runs out is refused with kWaitTimeout, a cancelled one with kCancelled,
  // a waiting request at Shutdown() with kShuttingDown. Over its task's quota
  // (taskConcurrencyLimit, laneTaskConcurrencyLimits) a request is refused with kTaskQuota or
  // queued, as taskQuotaAction says. The other refusals are TryAcquire's, at once.
  //
  // Guarantees: a released place goes to the first waiter that can use it before anyone else can
  // take it (no barging: TryAcquire and new requests go behind the queue); a place goes to exactly
  // one waiter or back to the lane, never both and never neither, whatever races with a grant (a
  // timeout, a cancellation, Shutdown); no thread is kept per waiting request.
  //
  // Three forms. Blocking: returns the slot or the refusal.
  Result<Slot> Acquire(std::string_view task_id, std::string_view lane,
                       AcquireOptions options = {});
  // Asynchronous: `done` is called exactly once, with the slot or the refusal: before AcquireAsync
  // returns when the answer is immediate; else later on the thread that decides it (the one whose
  // release frees the place, the timer thread for wait_timeout, the thread that stops the token,
  // the one calling Shutdown). It must be quick (post the result to your event loop) and must not
  // throw; it may call the manager, this one included, but not Tick(), Shutdown() or the
  // manager's destructor (it may run inside them). A Slot it drops is released as abandoned.
  void AcquireAsync(std::string_view task_id, std::string_view lane, AcquireOptions options,
                    AcquireCallback done);
  // As a future (the callback sets it).
  std::future<Result<Slot>> AcquireFuture(std::string_view task_id, std::string_view lane,
                                          AcquireOptions options = {});
  // Same as slot.Release(success, error_type).
  bool Release(Slot& slot, bool success, std::string_view error_type = {});

  // The per-call records in the ring, oldest first (at most metricsCapacity).
  std::vector<WorkerCallMetrics> GetMetrics() const;
  Statistics GetStatistics() const;
  // The latest sample (at most memorySampleIntervalMs old). SampleMemoryNow() takes a fresh one.
  MemorySnapshot GetMemorySnapshot() const;
  MemorySnapshot SampleMemoryNow();
  ConcurrencyStatus GetConcurrencyStatus() const;
  // The config in effect. The reference stays valid, and its config unchanged, until the manager
  // is destroyed, whatever UpdateConfig does meanwhile (every config the manager has had is kept);
  // call config() again to see a newer one.
  const Config& config() const;

  // Changes the limits of a running manager. Held slots are kept: a limit lowered below what a
  // lane holds stops new grants until enough are released; a limit raised grants waiting
  // requests at once (on the calling thread, as a release would). Returns an error naming the key
  // and value when `config` does not validate (ValidateConfig) or changes what cannot change live,
  // and then changes nothing. The returned Config is the one now in effect (config() returns it
  // too).
  //
  // Live: globalConcurrencyLimit (up to ManagerOptions::max_global_limit), the values of
  // laneConcurrencyLimits, defaultQueueLimit, laneQueueLimits, queueAgingMs (requests queued from
  // now on), the task quotas and taskQuotaAction, the lending percents, defaultTimeoutMs and
  // timeoutEscalationFactor (calls admitted from now on), maxRssMb, heapWarningMb,
  // enableMemoryGuards, memorySampleIntervalMs. A lowered queue limit refuses nothing already
  // queued. Quotas configured afresh count the calls granted from then on, not those already held.
  // Not live (an error naming the key, the value asked for and the current one): adding or
  // removing a lane (key laneConcurrencyLimits), metricsCapacity, timerTickMs, enableSpanEmission
  // and spanSampleRate. Each limit changes on its own: a call admitted while the update runs may
  // see some of the new limits and some of the old, never a count above what either allowed.
  Result<Config> UpdateConfig(Config config);
  // The clock the manager measures with (deadlines are on its monotonic scale).
  const Clock& clock() const;

  // Observers see every event from now on. Thread-safe; never blocks TryAcquire.
  void AddObserver(std::shared_ptr<Observer> observer);

  // Fires due timers and samples memory if the interval has passed. The background thread calls
  // this every timerTickMs; call it yourself when start_background_thread is false.
  void Tick();

  // From now on TryAcquire rejects with kShuttingDown and the background thread stops (timers no
  // longer fire). Outstanding slots stay valid and are released as usual. Idempotent.
  void Shutdown();

 private:
  // The worker-call wrapper acquires through the state, with its timeout handler on the call from
  // the admission (one store under the shard lock it takes anyway, instead of a second locking).
  friend class internal::CallGuard;
  explicit ResourceBudgetManager(internal::ManagerState* state) : state_(state) {}
  internal::ManagerState* state_;
};

// The process-wide default manager (the spec's getResourceBudgetManager(partialConfig)). The first
// call creates it from `config` (defaults when omitted); later calls return the same instance, and
// are an error if they pass a config different from the one it was created with (rather than
// silently ignoring it). The instance lives until the process exits.
Result<ResourceBudgetManager*> GetResourceBudgetManager(
    std::optional<Config> config = std::nullopt);
// As above, with a partial JSON config merged over the defaults.
Result<ResourceBudgetManager*> GetResourceBudgetManagerFromJson(std::string_view partial_json);

}  // namespace laneguard

#endif  // LANEGUARD_MANAGER_H_
