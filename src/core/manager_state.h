// ManagerState: what a ResourceBudgetManager and its Slots share, and the two paths every worker
// call takes through it: TryAcquire (admission, then an entry in the calling CPU's shard) and
// Release (a record, the totals, then the counts handed back). The parts each live in their own
// file: admission.h (lanes, counts, rejections), call_table.h (shards and call entries),
// timer_service.h (the two timeout phases), memory_sampler.h (the memory guard's figures),
// statistics.h (records and the reads), call_events.h (observers), ticker.h (the background
// thread).
//
// Lifetime: made by ResourceBudgetManager::Create. The manager's destructor shuts it down and
// marks it orphaned; it is freed then if no call is active, else by the last call's release.
//
// Live config (UpdateConfig): every Config the manager has had is kept, immutable, until the state
// is freed, and the one in effect is published through an atomic pointer, so config() can return
// a reference that stays valid (and unchanging) however often the config changes; a reload is
// rare and a Config is small. The figures the hot paths read are relaxed atomics of their own
// (a plain load, as the const members they replace), not read through that pointer.
//
// Thread safety: every method is safe from any thread. A Slot's calls into it must not race with
// each other (Slot is owned by one thread at a time).
#ifndef LANEGUARD_SRC_CORE_MANAGER_STATE_H_
#define LANEGUARD_SRC_CORE_MANAGER_STATE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <stop_token>
#include <string_view>
#include <vector>

#include "core/admission.h"
#include "core/call_events.h"
#include "core/call_table.h"
#include "core/memory_sampler.h"
#include "core/ticker.h"
#include "core/timer_service.h"
#include "core/waiting.h"
#include "laneguard/internal/mutex.h"
#include "laneguard/manager.h"

namespace laneguard::internal {

class ManagerState {
 public:
  // `config` must be valid (ValidateConfig).
  ManagerState(Config config, ManagerOptions options);
  ManagerState(const ManagerState&) = delete;
  ManagerState& operator=(const ManagerState&) = delete;

  // `metadata` is a const Metadata& (copied into the call when not empty) or a Metadata&&
  // (moved). The timeout by reference: an optional passed by value is often written in two parts
  // and read back whole, a store-forwarding stall of about 5 ns in the caller. A granted call has
  // `handler` as its TimeoutHandler from the start (Slot::SetTimeoutHandler without locking the
  // shard a second time): it may be told of a phase before the caller has the slot.
  template <typename M>
  Result<Slot> TryAcquire(std::string_view task_id, std::string_view lane_name,
                          const std::optional<int64_t>& timeout_ms, M&& metadata,
                          TimeoutHandler* handler = nullptr);
  // ResourceBudgetManager::AcquireAsync (the blocking and future forms are built on it there).
  void AcquireAsync(std::string_view task_id, std::string_view lane_name, AcquireOptions&& options,
                    AcquireCallback&& done);
  // A waiting request's stop_token was stopped (CancelWait).
  void CancelWaiter(Waiter* w);
  // With `fail_if_late`, Slot::ReleaseUnlessLate; without, Slot::Release. May free this state
  // (the last release of a destroyed manager's call).
  ReleaseOutcome Release(Slot& slot, bool success, std::string_view error_type,
                         bool fail_if_late = false, std::string_view late_error_type = {});
  std::stop_token StopToken(const Slot& slot);
  void SetTimeoutHandler(const Slot& slot, TimeoutHandler* handler);
  // Slot::wait_nanos and Slot::borrowed.
  struct Queued {
    int64_t wait_ns = 0;
    bool borrowed = false;
  };
  Queued QueuedOf(const Slot& slot);

  std::vector<WorkerCallMetrics> GetMetrics();
  Statistics GetStatistics();
  ConcurrencyStatus GetConcurrencyStatus();
  MemorySnapshot LatestSnapshot() const { return memory_.Latest(); }
  MemorySnapshot SampleMemoryNow() { return memory_.Sample(clock_->MonotonicNanos()); }
  void AddObserver(std::shared_ptr<Observer> observer) { events_.Add(std::move(observer)); }
  // The config in effect (see the file comment for why the reference stays valid).
  const Config& config() const { return *config_.load(std::memory_order_acquire); }
  // ResourceBudgetManager::UpdateConfig.
  Result<Config> UpdateConfig(Config config) EXCLUDES(update_mu_);
  const Clock& clock() const { return *clock_; }

  void StartBackground();
  void Tick() EXCLUDES(tick_mu_);
  void Shutdown();
  // Called by ~ResourceBudgetManager (after Shutdown). Returns true if the state can be freed
  // now; otherwise the last outstanding slot frees it.
  bool Orphan() { return waiting_.Orphan(); }

 private:
  // What a call starts with, besides its task id and metadata.
  struct CallStart {
    size_t lane = 0;
    int64_t now = 0, timeout_ms = 0, hard_deadline = 0;
    double rss = 0;
    int global_now = 0, lane_now = 0;
    TimeoutHandler* handler = nullptr;
    QueueMark queue;
  };

  std::optional<Refusal> Check(std::string_view lane_name, const std::optional<int64_t>& timeout_ms,
                               const LaneState** lane, int64_t* timeout, double* rss) const;
  // Opens the call of an admitted request (its counts taken) and makes its Slot.
  template <typename M>
  Result<Slot> Grant(std::string_view task_id, const CallStart& admitted, M&& metadata);
  void Unadmit(size_t lane, std::string_view task_id) noexcept;
  // TryAcquire while admission is gated (AdmissionLayout::kGated): decided under Waiting's lock.
  template <typename M>
  [[gnu::noinline]] Result<Slot> TryAcquireGated(std::string_view task_id, const LaneState& lane,
                                                 int64_t timeout, M&& metadata,
                                                 TimeoutHandler* handler);
  // A release found the gate set: give the place back and hand freed places on
  // (Waiting::Released), and complete the waiters that got one. Frees this state if that was the
  // last call of a destroyed manager.
  [[gnu::noinline]] void HandOn(size_t lane) noexcept;
  // Completes decided waiters: grants (their counts taken), or refusals for `reason`.
  void CompleteGranted(WaiterList& granted) noexcept;
  void CompleteRefused(WaiterList& refused, RejectReason reason) noexcept;
  [[gnu::noinline]] void ReleaseQuota(const CallEntry& c) noexcept;
  // Calls w's callback with `result` and frees w.
  static void Finish(Waiter* w, Result<Slot> result) noexcept;

  Result<Slot> Reject(const Refusal& f, std::string_view task_id, std::string_view lane_name,
                      const LaneState* lane);
  [[gnu::noinline]] void NotifyRejected(const Refusal& f, std::string_view task_id,
                                        std::string_view lane_name, const LaneState* lane);
  // Where a call was set up in its shard.
  struct OpenedCall {
    uint32_t entry = 0, generation = 0;
    uint64_t call_id = 0;
    const Metadata* metadata = nullptr;  // the call's own, untouched until it is released
  };
  // Takes an entry in `shard` for a call admitted into start.lane. Throws only std::bad_alloc,
  // and then has taken nothing.
  template <typename M>
  OpenedCall OpenCall(Shard& shard, std::string_view task_id, const CallStart& start, M&& metadata);
  // `start`'s now and hard_deadline are not read (`now` is the grant's time).
  [[gnu::noinline]] void NotifyAdmitted(int64_t now, uint64_t call_id, std::string_view task_id,
                                        CallStart start, const Metadata& metadata) noexcept;
  [[gnu::always_inline]] void FillRecord(CallEntry& c, int64_t now, bool success,
                                         std::string_view error_type, RingRecord& r) const;
  [[gnu::noinline]] void UnlockAndNotifyReleased(Shard& shard, const RingRecord& r, int64_t now,
                                                 size_t lane, const Metadata& metadata) noexcept
      RELEASE(shard.lock);

  Mutex update_mu_;  // one UpdateConfig at a time
  // Every config this manager has had, oldest first; never shrinks (see the file comment).
  std::vector<std::unique_ptr<const Config>> configs_ GUARDED_BY(update_mu_);
  std::atomic<const Config*> config_;  // the last of configs_
  // What admission and release read of the config, each on its own (UpdateConfig stores them).
  std::atomic<int64_t> default_timeout_ms_;
  std::atomic<double> timeout_escalation_factor_;
  std::atomic<double> max_rss_mb_;
  std::atomic<bool> enable_memory_guards_;
  const int64_t metrics_capacity_;  // not live (sizes the rings)
  const Clock* const clock_;
  const int64_t unix_offset_;  // wall time = monotonic + offset: one clock read per event
  Admission admission_;
  Waiting waiting_;
  MemorySampler memory_;
  CallTable calls_;
  CallEvents events_;
  TimerService timers_;
  Mutex tick_mu_;  // one Tick() at a time
  Ticker ticker_;
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_CORE_MANAGER_STATE_H_
