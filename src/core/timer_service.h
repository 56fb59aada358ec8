// Timers: each call's two-phase timeout. At the timeout the call's stop source is asked to stop
// and observers hear kTimeoutWarning; at timeout x timeoutEscalationFactor they hear
// kTimeoutEscalation and the call counts as overrunning. The call's TimeoutHandler, if it set
// one, hears each phase after the observers. Neither phase releases the call.
//
// Each shard keeps its own ShardTimers. A call's timer is armed lazily: most calls end long before
// their timeout, so admission only queues the call and the next tick (or admission, once
// kMaxUnarmed calls wait) arms it; a call that ends before then never touches the timer heap.
// Timers only fire in a tick, so a timer armed there before the due ones are collected fires
// exactly when one armed at admission would have.
//
// TimerService fires the due timers of every shard, in deadline order across shards as a single
// queue would. Handlers run outside the shard locks; Release() waits for a running one (see
// CallTable::LockEntry) unless it runs on the timer thread itself.
//
// Thread safety: ShardTimers is not thread-safe (a Shard guards it with the shard's lock).
// TimerService::FireDue is safe from any thread; concurrent calls run one after another.
#ifndef LANEGUARD_SRC_CORE_TIMER_SERVICE_H_
#define LANEGUARD_SRC_CORE_TIMER_SERVICE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/call_slab.h"
#include "core/statistics.h"
#include "core/timer_queue.h"
#include "laneguard/internal/mutex.h"
#include "laneguard/internal/thread_annotations.h"

namespace laneguard::internal {

class CallEvents;
class CallTable;
class Admission;
struct Shard;

class ShardTimers {
 public:
  ShardTimers() { unarmed_.reserve(kMaxUnarmed); }

  // Before admission claims an entry: arms the waiting timers if the queue of unarmed ones is
  // full, so that Queue() cannot allocate. May throw (TimerQueue::Arm allocates).
  void MakeRoom(CallSlab& calls) {
    if (unarmed_.size() == kMaxUnarmed) ArmWaiting(calls);
  }
  // Queues the timer of a call just admitted (CallSlab::Tag); never throws after MakeRoom().
  void Queue(uint64_t tag) { unarmed_.push_back(tag); }
  void Cancel(TimerQueue::Handle handle) { queue_.Cancel(handle); }

  // Arms the timers of the queued calls that are still running.
  void ArmWaiting(CallSlab& calls);
  // Pops the due timers and moves each call on to its next phase (re-arming the warned ones for
  // their hard deadline); `expired` is scratch space. Appends what fired to `fired`.
  struct Fired;
  void CollectDue(Shard* shard, int64_t now, CallSlab& calls, CallRecords& records,
                  std::vector<TimerQueue::Expired>* expired, std::vector<Fired>* fired);

 private:
  // Reserved up front, so queuing a call's timer never allocates.
  static constexpr size_t kMaxUnarmed = 256;

  TimerQueue queue_;
  // Calls whose timer is not armed yet, as CallSlab::Tag(entry, generation).
  std::vector<uint64_t> unarmed_;
};

// A timer that fired, carried out of the shard lock to be reported.
struct ShardTimers::Fired {
  EventKind kind = EventKind::kTimeoutWarning;
  int64_t deadline = 0;
  Shard* shard = nullptr;
  uint32_t entry = 0, generation = 0;
  uint64_t call_id = 0;
  uint32_t lane = 0;
  int64_t timeout_ms = 0;
  std::string task_id;
  std::stop_source stop{std::nostopstate};
  TimeoutHandler* handler = nullptr;
};

class TimerService {
 public:
  // Every argument must outlive this.
  TimerService(CallTable& calls, const Admission& admission, const CallEvents& events,
               double escalation_factor)
      : calls_(calls),
        admission_(admission),
        events_(events),
        escalation_factor_(escalation_factor) {}
  TimerService(const TimerService&) = delete;
  TimerService& operator=(const TimerService&) = delete;

  // Fires every timer due at `now`. Observers and handlers run on the calling thread; they must
  // not call FireDue themselves.
  void FireDue(int64_t now) EXCLUDES(mu_);
  // timeoutEscalationFactor changed live: the hard deadlines of calls already admitted stay as they
  // were; only the escalation message's figure uses the new factor.
  void SetEscalationFactor(double factor) {
    escalation_factor_.store(factor, std::memory_order_relaxed);
  }

 private:
  using Fired = ShardTimers::Fired;
  void Report(const Fired& f, int64_t now) const;
  static void RunHandler(const Fired& f);

  CallTable& calls_;
  const Admission& admission_;
  const CallEvents& events_;
  std::atomic<double> escalation_factor_;
  Mutex mu_;
  std::vector<TimerQueue::Expired> expired_ GUARDED_BY(mu_);  // kept: its capacity is reused
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_CORE_TIMER_SERVICE_H_
