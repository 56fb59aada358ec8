// The part of a worker call that does not depend on fn's type, so it is compiled once: the slot,
// the span and the settling. worker.h's templates hold one through internal::GuardedCall; the
// batch wrapper and the process runner use it directly. Not public API.
#ifndef LANEGUARD_SRC_WORKER_CALL_GUARD_H_
#define LANEGUARD_SRC_WORKER_CALL_GUARD_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string_view>

#include "laneguard/internal/mutex.h"
#include "laneguard/manager.h"
#include "laneguard/trace/trace.h"
#include "laneguard/worker.h"

namespace laneguard::internal {

// Acquires (or adopts) a slot, starts the call's span, and releases the slot with the outcome.
//
// Timeouts: the guard is the slot's TimeoutHandler while its span records or the user set a
// hard-timeout hook (a GuardedCall with tracing enabled is, from the admission on, and passes each
// phase on to this guard once it is built). At each phase it adds the span's "timeout" event (phase
// warning or escalation), stamped with the deadline, and at the escalation it runs the user's hook.
// A caller with a handler of its own (the process runner) installs that one on the slot instead
// (SetTimeoutHandler) and passes each phase on to this guard's OnWarning/OnEscalation first. A
// phase the timer has not reported by the release (its tick came later, or no handler listened)
// gets its event then, from the release's record, stamped the same way.
//
// Thread safety: owned by the call's thread. OnWarning and OnEscalation run on the manager's timer
// thread; Release() waits for a running one, so the owner settles and ends the span only after
// it (or once it can no longer run). While the call runs, the timer thread's events and the
// owner's changes to the span are ordered by the span's own lock; the user's hook by hook_mu_.
class CallGuard final : public TimeoutHandler {
 public:
  // Acquires (or records the refusal) and starts the span. Throws ResourceLimitExceeded.
  // `task_id` and `options` must outlive the guard: it keeps views of the task id and the lane
  // (copying them cost a tenth of an unobserved call).
  CallGuard(WorkerCalls& calls, std::string_view task_id, const CallOptions& options)
      : CallGuard(calls, task_id, options, static_cast<TimeoutHandler*>(nullptr)) {}
  // Acquires with `listener` as the slot's TimeoutHandler from the admission on (GuardedCall's
  // way: it passes the phases on once this guard is built); a null one acts as the constructor
  // above.
  CallGuard(WorkerCalls& calls, std::string_view task_id, const CallOptions& options,
            TimeoutHandler* listener);
  // Adopts a slot the caller acquired (options.lane must be its lane); never throws for a refusal.
  CallGuard(WorkerCalls& calls, std::string_view task_id, const CallOptions& options, Slot slot);
  ~CallGuard();  // releases as abandoned if neither Succeeded, Failed nor Settle released it
  CallGuard(const CallGuard&) = delete;
  CallGuard& operator=(const CallGuard&) = delete;

  CallContext& context() { return context_; }
  Span& span() { return span_; }
  // fn returned. Releases; throws WorkerCallTimeout when past the hard deadline.
  void Succeeded();
  // fn threw the exception currently being handled. Releases as a failure.
  void Failed();
  // Releases with the given outcome, without the timeout check (batches settle this way).
  void Settle(bool success, std::string_view error_type);

  // Puts `handler` on the slot in this guard's place (see the class comment); null puts this
  // guard back. A no-op for an unguarded call.
  void SetTimeoutHandler(TimeoutHandler* handler);
  // The user's hard-timeout hook (CallContext::OnHardTimeout), run by OnEscalation.
  void SetHardTimeoutHook(std::function<void()> hook);

  // On the manager's timer thread: the span's timeout event; at the escalation, the user's hook.
  void OnWarning() override;
  void OnEscalation() override;

 private:
  friend class laneguard::CallContext;
  // TryAcquire, or Acquire when the options allow a wait.
  static Result<Slot> AcquireFor(WorkerCalls& calls, std::string_view task_id,
                                 const CallOptions& options, TimeoutHandler* listener);
  static void AddWaitEvents(SpanEditor& edit, int64_t at, int64_t waited,
                            const Result<Slot>& acquired, const CallOptions& options);
  CallGuard(WorkerCalls& calls, std::string_view task_id, const CallOptions& options,
            Result<Slot>&& acquired);
  // The call's span (tracing enabled) with its first attributes and events.
  // Named worker_call:<lane>, as the spec names it.
  Span StartSpan(const Result<Slot>& acquired, const CallOptions& options) const;
  // The span's timeout events are written as the phases happen, which takes a handler on the slot
  // (a store under the slot's shard lock); a span that does not record needs none.
  void ListenIfRecording() {
    if (span_.recording()) SetTimeoutHandler(this);
  }
  // Throws ResourceLimitExceeded, or lets the call run unguarded (counted and logged).
  void Refused(const Rejection& rejection, const CallOptions& options);
  // The recording span's closing events and status, after the slot is released: its record says
  // which deadlines passed (their events are added here if the timer did not add them). The
  // duration is the release's own figure when `release` says it released; otherwise the clock is
  // read. The status is the call's: an escalated call ends as a failure anyway (WorkerCallTimeout,
  // or what it threw). (By reference: an optional<double> by value was written in parts and read
  // back whole, a store-forwarding stall on every call.) A non-empty `exception_type` adds the
  // exception event, `message` its message.
  void EndSpan(bool success, std::string_view message, const ReleaseOutcome& release,
               std::string_view exception_type = {});
  // A reading of the manager's clock as a reading of the tracer's.
  int64_t SpanTime(int64_t manager_mono) const;
  double ElapsedMs() const;

  WorkerCalls& calls_;
  std::string_view task_id_;
  std::string_view lane_;
  int64_t start_mono_ = 0;  // before span_, which is made from it
  Span span_;
  CallContext context_{this};
  // Which timeout events the timer thread wrote. Written on the timer thread and read by the
  // owner after the release, which waited for the handler: relaxed is enough.
  std::atomic<bool> warning_written_{false};
  std::atomic<bool> escalation_written_{false};
  TimeoutHandler* handler_ = nullptr;  // what the slot tells of its phases; owner thread only
  Mutex hook_mu_;
  std::function<void()> user_hard_hook_ GUARDED_BY(hook_mu_);
  // Last, so it is destroyed (released) first: Release() waits for a running timeout handler, and
  // the handlers use the members above.
  Slot slot_;
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_WORKER_CALL_GUARD_H_
