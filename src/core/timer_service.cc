#include "core/timer_service.h"

#include <algorithm>
#include <string>
#include <utility>

#include "core/admission.h"
#include "core/call_events.h"
#include "core/call_table.h"

namespace laneguard::internal {

void ShardTimers::ArmWaiting(CallSlab& calls) {
  for (const uint64_t tag : unarmed_) {
    CallEntry* c = calls.Find(tag);
    // Skipped: calls released since, and (after an Arm that threw) those already armed.
    if (c == nullptr || c->timer.valid()) continue;
    c->timer = queue_.Arm(c->deadline(), tag);
  }
  unarmed_.clear();
}

void ShardTimers::CollectDue(Shard* shard, int64_t now, CallSlab& calls, CallRecords& records,
                             std::vector<TimerQueue::Expired>* expired, std::vector<Fired>* fired) {
  ArmWaiting(calls);
  // An escalation re-armed at or before `now` (escalation factor 1) fires in the same tick.
  while (queue_.NextDeadline() <= now) {
    expired->clear();
    queue_.PopExpired(now, expired);
    for (const TimerQueue::Expired& x : *expired) {
      CallEntry* c = calls.Find(x.tag);
      if (c == nullptr) continue;
      Fired f;
      f.shard = shard;
      f.deadline = x.deadline;
      f.entry = CallSlab::TagEntry(x.tag);
      f.generation = CallSlab::TagGeneration(x.tag);
      f.call_id = c->call_id;
      f.lane = c->lane;
      f.timeout_ms = c->timeout_ms;
      f.task_id = c->task_id.view();
      f.handler = c->handler;
      if (c->phase == CallPhase::kRunning) {
        c->phase = CallPhase::kWarned;
        f.stop = c->stop;
        c->timer = queue_.Arm(c->hard_deadline, x.tag);
      } else {
        c->phase = CallPhase::kEscalated;
        f.kind = EventKind::kTimeoutEscalation;
        records.AddOverrunning(c->lane);
      }
      if (f.handler != nullptr) {
        ++c->handlers_pending;
        c->handler_thread = std::this_thread::get_id();
      }
      fired->push_back(std::move(f));
    }
  }
}

void TimerService::FireDue(int64_t now) {
  MutexLock lock(mu_);
  std::vector<Fired> fired;
  for (size_t s = 0; s < calls_.shard_count(); ++s) {
    Shard& shard = calls_.shard(s);
    SpinLockGuard guard(shard.lock);
    shard.timers.CollectDue(&shard, now, shard.calls, shard.records, &expired_, &fired);
  }
  // Across shards, report in deadline order as a single queue would.
  std::stable_sort(fired.begin(), fired.end(),
                   [](const Fired& a, const Fired& b) { return a.deadline < b.deadline; });
  for (Fired& f : fired) {
    if (f.stop.stop_possible()) f.stop.request_stop();
    if (events_.HasObservers()) Report(f, now);
    if (f.handler != nullptr) RunHandler(f);
  }
}

void TimerService::Report(const Fired& f, int64_t now) const {
  const bool warning = f.kind == EventKind::kTimeoutWarning;
  const int64_t phase_ms =
      warning ? f.timeout_ms
              : static_cast<int64_t>(static_cast<double>(f.timeout_ms) *
                                     escalation_factor_.load(std::memory_order_relaxed));
  std::string message =
      std::string(warning ? "worker call exceeded its timeout of "
                          : "worker call exceeded its hard deadline of ") +
      std::to_string(phase_ms) + " ms" +
      (warning ? "; stop requested" : "; escalating (slot held until the call returns)");
  CallEvent e = events_.For(f.kind, now, f.call_id, f.task_id, f.lane, admission_.GlobalActive(),
                            admission_.LaneActive(f.lane));
  e.timeout_ms = f.timeout_ms;
  e.message = message;
  events_.Notify(e);
}

void TimerService::RunHandler(const Fired& f) {
  Shard& shard = *f.shard;
  // An observer or an earlier handler on this thread may have released the call meanwhile
  // (Release does not wait for its own thread): its handler must not run then.
  {
    SpinLockGuard guard(shard.lock);
    if (shard.calls.at(f.entry).generation != f.generation) return;
  }
  // A failing handler must not take down the timer thread; the call stays counted.
  try {
    if (f.kind == EventKind::kTimeoutEscalation) {
      f.handler->OnEscalation();
    } else {
      f.handler->OnWarning();
    }
  } catch (...) {
  }
  SpinLockGuard guard(shard.lock);
  CallEntry& c = shard.calls.at(f.entry);
  if (c.generation == f.generation) --c.handlers_pending;
}

}  // namespace laneguard::internal
