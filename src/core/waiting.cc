#include "core/waiting.h"

#include <algorithm>
#include <limits>
#include <utility>

namespace laneguard::internal {
namespace {

constexpr int64_t kNoDeadline = std::numeric_limits<int64_t>::max();

int Percent(int limit, int percent) {
  return static_cast<int>(static_cast<int64_t>(limit) * percent / 100);
}

int Lookup(const std::map<std::string, int, std::less<>>& map, const std::string& lane, int none) {
  const auto it = map.find(lane);
  return it != map.end() ? it->second : none;
}

}  // namespace

Waiting::Waiting(const Config& config, Admission& admission)
    : admission_(admission), lane_task_held_(admission.lane_count()) {
  MutexLock lock(mu_);
  lanes_ = std::vector<Lane>(admission.lane_count());
  SetLimits(config);
  UpdateGate();
}

void Waiting::SetLimits(const Config& config) {
  aging_ns_ = config.queue_aging_ms * 1'000'000;
  task_limit_ = config.task_concurrency_limit;
  const bool quotas = task_limit_ > 0 || !config.lane_task_concurrency_limits.empty();
  if (!quotas) {
    // Forgotten, so that turning quotas on again starts from nothing rather than from counts
    // whose releases were not dropped meanwhile.
    task_held_.clear();
    for (TaskCounts& counts : lane_task_held_) counts.clear();
  }
  has_quotas_.store(quotas, std::memory_order_relaxed);
  quota_queues_ = config.task_quota_action == TaskQuotaAction::kQueue;
  lending_ = !config.lane_borrowing_limit_percent.empty();
  always_gated_ = quotas || lending_;
  std::vector<int> lane_limits(lanes_.size());
  for (size_t i = 0; i < lanes_.size(); ++i) {
    const std::string& name = admission_.lane(i).name;
    Lane& l = lanes_[i];
    l.limit = Lookup(config.lane_concurrency_limits, name, l.limit);
    l.borrow_limit = Percent(l.limit, Lookup(config.lane_borrowing_limit_percent, name, 0));
    l.lendable = Percent(l.limit, Lookup(config.lane_lendable_percent, name, 0));
    l.task_limit = Lookup(config.lane_task_concurrency_limits, name, 0);
    l.queue_limit = Lookup(config.lane_queue_limits, name, config.default_queue_limit);
    lane_limits[i] = l.limit;
  }
  admission_.SetLimits(config.global_concurrency_limit, lane_limits);
}

void Waiting::Update(const Config& config, WaiterList* granted) {
  MutexLock lock(mu_);
  SetLimits(config);
  // Also sets or clears the gate for the new flags. Nothing is queued after Shutdown.
  Dispatch(granted);
}

Admitted Waiting::Admit(Waiter* w, bool may_wait, int64_t now, WaiterList* granted) {
  MutexLock lock(mu_);
  if (admission_.shutting_down()) return {Admitted::kRefused, {RejectReason::kShuttingDown}};
  if (w->cancel_requested) return {Admitted::kRefused, {RejectReason::kCancelled}};
  Dispatch(granted);
  // Set before the last look at the counts: a release after that look sees the bit and comes
  // here to hand its place on (see AdmissionLayout::kGated). Also keeps lock-free takes out while
  // Blocked and Take decide.
  if (!gate_set_) {
    admission_.SetGate();
    gate_set_ = true;
  }
  std::optional<Refusal> blocked = Blocked(*w);
  if (!blocked && Take(*w)) {
    UpdateGate();
    return {Admitted::kGranted};
  }
  if (!blocked) blocked = Blocked(*w);  // Take failed: the global count filled meanwhile
  Refusal refusal = blocked.value_or(
      Refusal{RejectReason::kGlobalLimit, admission_.global_limit(), admission_.global_limit()});
  Lane& lane = lanes_[w->lane];
  if (!may_wait || (refusal.reason == RejectReason::kTaskQuota && !quota_queues_)) {
    UpdateGate();
    return {Admitted::kRefused, refusal};
  }
  if (lane.queue.size() >= static_cast<size_t>(lane.queue_limit)) {
    UpdateGate();
    return {Admitted::kRefused,
            {RejectReason::kQueueFull, static_cast<int64_t>(lane.queue.size()), lane.queue_limit}};
  }
  w->arrived = now;
  w->key = now - static_cast<int64_t>(w->priority) * aging_ns_;
  w->deadline = w->wait_ms < 0 ? kNoDeadline : now + w->wait_ms * 1'000'000;
  w->seq = next_seq_++;
  w->queued = true;
  lane.queue.insert(w);
  if (w->deadline != kNoDeadline) deadlines_.insert(w);
  ++queued_;
  return {Admitted::kQueued};
}

void Waiting::ReleaseQuota(std::string_view task_id, size_t lane) noexcept {
  MutexLock lock(mu_);
  Drop(task_held_, task_id);
  Drop(lane_task_held_[lane], task_id);
}

uint64_t Waiting::Released(size_t lane, WaiterList* granted) {
  MutexLock lock(mu_);
  const uint64_t after = admission_.GiveBackGated(lane);
  if (!(after & AdmissionLayout::kOrphaned)) Dispatch(granted);  // no waiter after Shutdown
  return after;
}

bool Waiting::Orphan() {
  MutexLock lock(mu_);
  return admission_.Orphan();
}

void Waiting::Expire(int64_t now, WaiterList* expired) {
  MutexLock lock(mu_);
  while (!deadlines_.empty() && (*deadlines_.begin())->deadline <= now) {
    Waiter* w = *deadlines_.begin();
    Remove(w);
    expired->Push(w);
  }
  UpdateGate();
}

bool Waiting::Cancel(Waiter* w) {
  MutexLock lock(mu_);
  if (!w->queued) {
    w->cancel_requested = true;
    return false;
  }
  Remove(w);
  UpdateGate();
  return true;
}

void Waiting::TakeAll(WaiterList* out) {
  MutexLock lock(mu_);
  for (Lane& l : lanes_) {
    while (!l.queue.empty()) {
      Waiter* w = *l.queue.begin();
      Remove(w);
      out->Push(w);
    }
  }
  UpdateGate();
}

int Waiting::Queued(size_t lane) const {
  MutexLock lock(mu_);
  return static_cast<int>(lanes_[lane].queue.size());
}

Waiting::QueueFigures Waiting::Figures(size_t lane) const {
  MutexLock lock(mu_);
  return {static_cast<int>(lanes_[lane].queue.size()), lanes_[lane].queue_limit};
}

std::optional<Refusal> Waiting::Blocked(const Waiter& w) const {
  const Lane& l = lanes_[w.lane];
  const int lane_now = admission_.LaneActive(w.lane);
  if (lane_now >= l.limit + (lending_ ? l.borrow_limit : 0) ||
      (lending_ && !LendingHolds(w.lane))) {
    return Refusal{RejectReason::kLaneLimit, lane_now, l.limit};
  }
  const int global_now = admission_.GlobalActive();
  if (global_now >= admission_.global_limit())
    return Refusal{RejectReason::kGlobalLimit, global_now, admission_.global_limit()};
  if (task_limit_ > 0) {
    const int held = Held(task_held_, w.task_id);
    if (held >= task_limit_) return Refusal{RejectReason::kTaskQuota, held, task_limit_};
  }
  if (l.task_limit > 0) {
    const int held = Held(lane_task_held_[w.lane], w.task_id);
    if (held >= l.task_limit) return Refusal{RejectReason::kTaskQuota, held, l.task_limit};
  }
  return std::nullopt;
}

bool Waiting::Take(Waiter& w) {
  const Lane& l = lanes_[w.lane];
  if (!admission_.TakeGated(w.lane, l.limit + (lending_ ? l.borrow_limit : 0), &w.lane_now,
                            &w.global_now)) {
    return false;
  }
  w.borrowed = w.lane_now > l.limit;
  // Counted whether or not a limit applies, so a release can always drop what it finds.
  if (has_quotas_.load(std::memory_order_relaxed)) {
    ++task_held_[w.task_id];
    ++lane_task_held_[w.lane][w.task_id];
  }
  return true;
}

void Waiting::Dispatch(WaiterList* granted) {
  while (queued_ > 0) {
    // The smallest key among the lanes' first waiters that can have a place. Within a lane, a
    // waiter blocked only by its task's quota does not hold up the ones behind it.
    Waiter* best = nullptr;
    for (Lane& l : lanes_) {
      for (Waiter* w : l.queue) {
        const std::optional<Refusal> blocked = Blocked(*w);
        if (!blocked) {
          if (best == nullptr || ByKey()(w, best)) best = w;
          break;
        }
        if (blocked->reason != RejectReason::kTaskQuota) break;
      }
    }
    if (best == nullptr || !Take(*best)) break;
    Remove(best);
    granted->Push(best);
  }
  UpdateGate();
}

void Waiting::Remove(Waiter* w) {
  lanes_[w->lane].queue.erase(w);
  if (w->deadline != kNoDeadline) deadlines_.erase(w);
  w->queued = false;
  --queued_;
}

void Waiting::UpdateGate() {
  const bool want = always_gated_ || queued_ > 0;
  if (want == gate_set_) return;
  if (want) {
    admission_.SetGate();
  } else {
    admission_.ClearGate();
  }
  gate_set_ = want;
}

bool Waiting::LendingHolds(size_t lane) const {
  int64_t borrowed = 0, lendable = 0;
  for (size_t i = 0; i < lanes_.size(); ++i) {
    const Lane& l = lanes_[i];
    const int active = admission_.LaneActive(i) + (i == lane ? 1 : 0);
    borrowed += std::max(0, active - l.limit);
    lendable += std::min(l.lendable, std::max(0, l.limit - active));
  }
  return borrowed <= lendable;
}

int Waiting::Held(const TaskCounts& counts, std::string_view task_id) {
  const auto it = counts.find(task_id);
  return it != counts.end() ? it->second : 0;
}

void Waiting::Drop(TaskCounts& counts, std::string_view task_id) {
  const auto it = counts.find(task_id);
  if (it != counts.end() && --it->second == 0) counts.erase(it);
}

}  // namespace laneguard::internal
