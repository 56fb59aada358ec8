// Waiting: the manager's queues of requests waiting for a place, and every admission decision
// that cannot be made lock-free: while anyone waits, and always when per-task quotas or lane
// lending are configured (both need more than the admission word to decide). One mutex guards it;
// the lock-free path (Admission::Take) stays as it was and only learns from the word's gate bit
// (AdmissionLayout::kGated) that it must come here instead.
//
// Order: each lane's queue is ordered by a key, the request's arrival time minus one
// queueAgingMs per priority class above low, so within a class it is first come first served and a
// request of a lower class goes ahead of every request of a higher one that arrived more than the
// classes' distance x queueAgingMs after it (the aging bound in AcquireOptions). Across lanes, a
// place freed under the global limit goes to the waiter with the smallest key among the lanes that
// have room.
//
// Hand-off: a release that finds the gate set gives its counts back and then, under the lock,
// dispatches: it takes places for the waiters that can now have one, in key order, and returns
// them decided. A request arriving meanwhile finds the gate set and waits for the same lock, and
// dispatches first too: no one takes a place ahead of a waiter that can use it. Every request is
// decided exactly once, under the lock (granted, refused, expired, cancelled); the thread that
// decides it completes it, outside the lock.
//
// Live limit changes (Update): the per-lane limits and the flags are kept under the lock and
// changed there, the admission limits with them, and the waiters that can now have a place are
// granted at once (as by a release). A lowered queue limit refuses nothing already queued; a
// changed queueAgingMs orders new requests only (queued ones keep their keys).
//
// Thread safety: every method is safe from any thread; each takes the lock itself. Waiter's
// fields are owned by whoever holds the lock until it is decided, then by the deciding thread.
#ifndef LANEGUARD_SRC_CORE_WAITING_H_
#define LANEGUARD_SRC_CORE_WAITING_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <stop_token>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/admission.h"
#include "laneguard/config.h"
#include "laneguard/internal/mutex.h"
#include "laneguard/manager.h"

namespace laneguard::internal {

class ManagerState;

// Runs when a waiting request's stop_token is stopped.
struct CancelWait {
  ManagerState* state;
  struct Waiter* waiter;
  void operator()() const noexcept;
};

// One request that goes through Waiting: queued, or asked under the lock (TryAcquire while the
// gate is set). Heap-allocated when it may wait; the deciding thread frees it.
struct Waiter {
  // The request.
  std::string task_id;
  size_t lane = 0;
  int64_t timeout_ms = 0;  // valid (checked before it gets here)
  Metadata metadata;
  TimeoutHandler* handler = nullptr;
  Priority priority = Priority::kNormal;
  AcquireCallback done;  // empty for TryAcquire's requests
  std::optional<std::stop_callback<CancelWait>> on_stop;

  // Its place in the queues, under the lock.
  int64_t arrived = 0;  // monotonic ns
  int64_t key = 0;      // arrived - priority class x queueAgingMs
  int64_t deadline = 0;
  int64_t wait_ms = 0;  // as asked (for the wait_timeout message); -1: no deadline
  uint64_t seq = 0;     // breaks ties of key and deadline: arrival order
  bool queued = false;
  bool cancel_requested = false;  // the stop came before the request was queued

  // Set when granted: the counts including this call.
  int lane_now = 0, global_now = 0;
  bool borrowed = false;

  Waiter* next = nullptr;  // in a WaiterList
};

// Decided waiters on their way out of the lock, linked through Waiter::next: collecting them
// allocates nothing, so no decision is lost to an allocation failing.
struct WaiterList {
  Waiter* head = nullptr;
  Waiter* tail = nullptr;
  void Push(Waiter* w) {
    w->next = nullptr;
    (tail != nullptr ? tail->next : head) = w;
    tail = w;
  }
  Waiter* Pop() {
    Waiter* w = head;
    if (w != nullptr && (head = w->next) == nullptr) tail = nullptr;
    return w;
  }
};

// What Admit decided for a request.
struct Admitted {
  enum Kind { kGranted, kQueued, kRefused } kind = kRefused;
  Refusal refusal;  // kRefused
};

class Waiting {
 public:
  // `config` must be valid; `admission` outlives this.
  Waiting(const Config& config, Admission& admission);
  Waiting(const Waiting&) = delete;
  Waiting& operator=(const Waiting&) = delete;

  // True when a release must give back its task's quota (ReleaseQuota). Relaxed: a call counted
  // in a task's quota was counted under the lock after the flag was set, so its release (which
  // happens after its grant) sees the flag set, or cleared by a later Update that forgot the
  // counts; either way no count is left behind.
  bool has_quotas() const { return has_quotas_.load(std::memory_order_relaxed); }

  // Changes the limits to `config`'s (valid, same lanes) and sets the admission limits with
  // them, under the lock; then hands places to the waiters that can now have one (appended to
  // `granted`, decided). Quotas turned off forget the counts; turned on, they count the calls
  // granted from now on (calls already held do not count against them).
  void Update(const Config& config, WaiterList* granted) EXCLUDES(mu_);

  // Decides request `w` after it was refused lock-free (gated, or full and willing to wait):
  // first hands freed places to the queued waiters (appended to `granted`, decided), then grants
  // `w`, queues it (when `may_wait` and there is room in its lane's queue), or refuses it. May
  // throw std::bad_alloc (queueing), and then has decided nothing about `w`.
  Admitted Admit(Waiter* w, bool may_wait, int64_t now, WaiterList* granted) EXCLUDES(mu_);
  // A call of `task_id` in `lane` ends: its place in the task's quotas is given back (quotas on).
  // Allocates nothing and does not throw: a release calls it under its shard's lock.
  void ReleaseQuota(std::string_view task_id, size_t lane) noexcept EXCLUDES(mu_);
  // A release that found the gate set (Admission::GiveBack returned kGated): gives the place back
  // and hands freed places to waiters, under the lock. Returns the admission word after.
  uint64_t Released(size_t lane, WaiterList* granted) EXCLUDES(mu_);
  // Admission::Orphan under the lock, so that no release is between giving its place back and
  // unlocking when the destroyed manager's state is freed.
  bool Orphan() EXCLUDES(mu_);
  // Removes the waiters whose deadline is at or before `now` (to be refused with wait_timeout).
  void Expire(int64_t now, WaiterList* expired) EXCLUDES(mu_);
  // Removes `w` if it is still queued (true: the caller refuses it with cancelled); otherwise
  // notes the stop, so Admit refuses it if it was not queued yet.
  bool Cancel(Waiter* w) EXCLUDES(mu_);
  // Shutdown: every queued waiter, removed (to be refused with shutting_down). Admission is
  // already refusing (Admission::Shutdown), so no new waiter joins after this.
  void TakeAll(WaiterList* out) EXCLUDES(mu_);

  int Queued(size_t lane) const EXCLUDES(mu_);
  // The lane's queued requests and its queue limit, read together.
  struct QueueFigures {
    int queued = 0, queue_limit = 0;
  };
  QueueFigures Figures(size_t lane) const EXCLUDES(mu_);

 private:
  struct ByKey {
    bool operator()(const Waiter* a, const Waiter* b) const {
      return a->key != b->key ? a->key < b->key : a->seq < b->seq;
    }
  };
  struct ByDeadline {
    bool operator()(const Waiter* a, const Waiter* b) const {
      return a->deadline != b->deadline ? a->deadline < b->deadline : a->seq < b->seq;
    }
  };
  struct Lane {
    int limit = 0;         // the configured limit
    int borrow_limit = 0;  // most places beyond it (lane lending; 0: does not borrow)
    int lendable = 0;      // most of its idle places others may use (lane lending)
    int task_limit = 0;    // per task id in this lane (0: none)
    int queue_limit = 0;
    std::set<Waiter*, ByKey> queue;
  };
  // Why `w` cannot have a place now, or nullopt if it can.
  std::optional<Refusal> Blocked(const Waiter& w) const REQUIRES(mu_);
  // Takes the place and the quota for `w` (Blocked(w) was nullopt). False only if the global
  // count filled in between (then nobody can have a place).
  bool Take(Waiter& w) REQUIRES(mu_);
  void Dispatch(WaiterList* granted) REQUIRES(mu_);
  void Remove(Waiter* w) REQUIRES(mu_);
  void UpdateGate() REQUIRES(mu_);
  // Sets the lanes' limits and the flags from `config` (the constructor and Update).
  void SetLimits(const Config& config) REQUIRES(mu_);
  // Lane lending: would the borrowed places still fit the idle lendable ones if lane `lane` took
  // one more?
  bool LendingHolds(size_t lane) const REQUIRES(mu_);
  // Looked up by string_view, so a release finds its task without allocating.
  struct TaskHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
  };
  using TaskCounts = std::unordered_map<std::string, int, TaskHash, std::equal_to<>>;
  static int Held(const TaskCounts& counts, std::string_view task_id);
  static void Drop(TaskCounts& counts, std::string_view task_id);

  Admission& admission_;
  mutable Mutex mu_;

  int64_t aging_ns_ GUARDED_BY(mu_) = 0;
  int task_limit_ GUARDED_BY(mu_) = 0;
  // Written under the lock; read by releases without it (has_quotas()).
  std::atomic<bool> has_quotas_{false};
  bool quota_queues_ GUARDED_BY(mu_) = false;
  bool lending_ GUARDED_BY(mu_) = false;
  // Quotas or lending: every admission and release comes here, the gate set while they are on.
  bool always_gated_ GUARDED_BY(mu_) = false;
  std::vector<Lane> lanes_ GUARDED_BY(mu_);  // fixed size: one per lane
  size_t queued_ GUARDED_BY(mu_) = 0;
  uint64_t next_seq_ GUARDED_BY(mu_) = 0;
  bool gate_set_ GUARDED_BY(mu_) = false;
  std::set<Waiter*, ByDeadline> deadlines_ GUARDED_BY(mu_);
  // Slots held per task id, and per lane and task id, while quotas are on.
  TaskCounts task_held_ GUARDED_BY(mu_);
  std::vector<TaskCounts> lane_task_held_ GUARDED_BY(mu_);
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_CORE_WAITING_H_
