// Worker-call wrappers: the API most users touch (the spec's withWorkerCallObservability,
// createBatchWorkerCallWrapper and withRequestScope).
//
//   laneguard::WorkerCalls calls(*manager, tracer);
//   std::string out = calls.Call("task-123", [&](laneguard::CallContext& ctx) {
//     return RunTool(input, ctx.stop_token());            // stop requested at the timeout
//   }, {.lane = "critic", .timeout_ms = 600000, .metadata = {{"toolName", "forecast_stitch"}}});
//
// Each call takes a slot in its lane, gets a span "worker_call:<lane>" (attributes taskId, lane
// and the metadata; events acquired_slot, execution_started, execution_succeeded, call_completed,
// timeout), runs `fn` on the calling thread, and releases the slot with the outcome:
// - fn's exceptions propagate unchanged; the slot is released as a failure whose errorType is the
//   exception's (demangled) type, and the span gets an "exception" event and error status.
// - A refusal throws ResourceLimitExceeded ("Resource limit exceeded: <reason>: ...") when
//   throw_on_resource_limit_exceeded is true (the default). When false, fn runs unguarded and that
//   is visible: span attributes laneguard.unguarded=true and laneguard.rejection_reason, the
//   unguarded_calls() counter, and a warning log line when a logger is attached.
// - The slot is held until fn returns, however late. If fn returns after the hard deadline
//   (timeout x escalation factor), the call is released as a failure ("WorkerCallTimeout") and
//   WorkerCallTimeout is thrown instead of returning the result; the record says timeoutReached.
//
// `fn` takes either nothing or a CallContext&. CallAsync runs the same call on another thread: a
// new one per call, or a task of an Executor such as ThreadPool (executor.h).
//
// Thread safety: WorkerCalls is thread-safe; calls may run concurrently from any threads. The
// manager, tracer and logger given to it must outlive it. A BatchCall or RequestScope belongs to
// one thread at a time. CallContext is used by its call's thread (and the timer thread, inside).
#ifndef LANEGUARD_WORKER_H_
#define LANEGUARD_WORKER_H_

#include <atomic>
#include <cstddef>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "laneguard/error.h"
#include "laneguard/executor.h"
#include "laneguard/manager.h"
#include "laneguard/observe/json_logger.h"
#include "laneguard/trace/trace.h"

namespace laneguard {

// Thrown when a call is refused and throw_on_resource_limit_exceeded is true. It carries the
// refusal as the Error TryAcquire returned (code, field, value, message), so a caller that catches
// it handles it like any other Error; rejection() is that Error's payload. what() is
// "Resource limit exceeded: " and the rejection's message.
class ResourceLimitExceeded : public std::runtime_error {
 public:
  explicit ResourceLimitExceeded(Rejection rejection);
  const Error& error() const { return error_; }
  const Rejection& rejection() const { return *error_.rejection(); }
  RejectReason reason() const { return rejection().reason; }

 private:
  Error error_;  // always holds a Rejection
};

// Thrown when fn returned after its hard deadline (its result, if any, is discarded).
class WorkerCallTimeout : public std::runtime_error {
 public:
  WorkerCallTimeout(std::string_view task_id, std::string_view lane, int64_t timeout_ms,
                    double duration_ms);
  int64_t timeout_ms() const { return timeout_ms_; }
  double duration_ms() const { return duration_ms_; }

 private:
  int64_t timeout_ms_;
  double duration_ms_;
};

struct CallOptions {
  std::string lane = "tool_call";
  std::optional<int64_t> timeout_ms;  // defaultTimeoutMs when unset
  Metadata metadata;
  // Waiting admission (ResourceBudgetManager::Acquire): how long the call may wait for a place.
  // 0, the default, does not wait (the spec's behaviour: refused at once); empty waits until
  // granted or wait_stop_token is stopped. A call that waited has a "queued" event and the
  // laneguard.wait_ms attribute on its span.
  std::optional<int64_t> wait_ms = 0;
  Priority priority = Priority::kNormal;
  std::stop_token wait_stop_token;
  bool throw_on_resource_limit_exceeded = true;
  // The span's parent (for example from ParseTraceparent); a new trace when unset or invalid.
  std::optional<SpanContext> parent;
};

class WorkerCalls;
namespace internal {
class CallGuard;
class GuardedCall;
}  // namespace internal

// What a running call can see and do.
class CallContext {
 public:
  // Stop requested at the timeout (never, for an unguarded call).
  std::stop_token stop_token();
  // Monotonic deadlines (Clock::MonotonicNanos); 0 for an unguarded call.
  int64_t deadline_mono_nanos() const;
  int64_t hard_deadline_mono_nanos() const;
  // The call's span: add events and attributes. Non-recording when sampled out or disabled.
  Span& span();
  // False when the call runs unguarded after a refusal.
  bool guarded() const;
  // "call-<n>", or "" when unguarded.
  std::string call_id() const;
  // Runs on the timer thread at the hard deadline, just after the span's escalation event
  // (replaces an earlier hook). Release waits for it, so it may use what the call owns.
  void OnHardTimeout(std::function<void()> hook);

 private:
  friend class internal::CallGuard;
  friend class internal::GuardedCall;
  explicit CallContext(internal::CallGuard* guard) : guard_(guard) {}
  internal::CallGuard* guard_;
};

namespace internal {

// The part of a call that does not depend on fn's type (src/worker/call_guard.h), held in place
// on the caller's stack so that a call allocates nothing: the templates below see only this.
//
// With tracing enabled it is the slot's TimeoutHandler from the admission on (installing the
// CallGuard afterwards would lock the slot's shard once more per call), and passes each phase on
// to the CallGuard once that is built; a phase before then gets its event at the release.
//
// Thread safety: owned by the call's thread; OnWarning and OnEscalation run on the manager's timer
// thread, and the CallGuard is published to them by built_ (release/acquire).
class GuardedCall final : private TimeoutHandler {
 public:
  // Acquires (or records the refusal) and starts the span. Throws ResourceLimitExceeded.
  // `task_id` and `options` must outlive it.
  GuardedCall(WorkerCalls& calls, std::string_view task_id, const CallOptions& options);
  ~GuardedCall();  // releases as abandoned if neither Succeeded nor Failed released it
  GuardedCall(const GuardedCall&) = delete;
  GuardedCall& operator=(const GuardedCall&) = delete;

  CallContext& context() { return context_; }
  // fn returned. Releases; throws WorkerCallTimeout when past the hard deadline.
  void Succeeded();
  // fn threw the exception currently being handled. Releases as a failure.
  void Failed();

  // sizeof(CallGuard) at most (checked where it is defined).
  static constexpr size_t kStorageBytes = 256;

 private:
  CallGuard& guard();
  void OnWarning() override;
  void OnEscalation() override;
  alignas(16) unsigned char storage_[kStorageBytes];
  // Before context_, whose initializer acquires: the timer thread may read it from then on.
  std::atomic<CallGuard*> built_{nullptr};
  CallContext context_;
};

}  // namespace internal

class BatchCall;
class RequestScope;

struct ScopeOptions {
  std::string lane = "tool_call";  // default lane of the calls inside
  // The shared budget; defaultTimeoutMs when unset. Outside (0, kMaxTimeoutMs] the scope throws
  // std::invalid_argument naming the value.
  std::optional<int64_t> timeout_ms;
  bool throw_on_resource_limit_exceeded = true;
  std::optional<SpanContext> parent;
};

// The runtime the wrappers use: a manager, a tracer and optionally a logger.
class WorkerCalls {
 public:
  WorkerCalls(ResourceBudgetManager& manager, Tracer& tracer,
              std::shared_ptr<JsonLogger> logger = nullptr)
      : manager_(manager),
        tracer_(tracer),
        logger_(std::move(logger)),
        shared_clock_(&manager.clock() == &tracer.clock()) {}

  // The spec's withWorkerCallObservability.
  template <typename Fn>
  auto Call(std::string_view task_id, Fn&& fn, const CallOptions& options);
  // The same with default options (lane tool_call), without building them per call.
  template <typename Fn>
  auto Call(std::string_view task_id, Fn&& fn) {
    return Call(task_id, std::forward<Fn>(fn), default_options_);
  }

  // Runs Call on a new thread (std::async); the future carries the result or the exception.
  template <typename Fn>
  auto CallAsync(std::string task_id, Fn fn, CallOptions options = {});
  // Runs Call as a task of `executor` (which, like this object, must outlive the call): no thread
  // is started per call. The slot is asked for when the task runs, so time waiting in the
  // executor's queue is not charged to the call's budget; the future carries the result or the
  // exception (a refusal too: ResourceLimitExceeded). Throws what executor.Submit throws, and
  // then nothing runs.
  template <typename Fn>
  auto CallAsync(Executor& executor, std::string task_id, Fn fn, CallOptions options = {});

  // The spec's createBatchWorkerCallWrapper.
  BatchCall Batch(std::string_view task_id, std::string_view lane, CallOptions options = {});

  // The spec's withRequestScope: fn(RequestScope&) runs with one deadline shared by every call it
  // makes through the scope.
  template <typename Fn>
  auto WithRequestScope(std::string_view task_id, Fn&& fn, const ScopeOptions& options = {});

  ResourceBudgetManager& manager() { return manager_; }
  Tracer& tracer() { return tracer_; }
  JsonLogger* logger() { return logger_.get(); }
  // Calls that ran without a slot because they were refused and told not to throw.
  uint64_t unguarded_calls() const { return unguarded_calls_.load(std::memory_order_relaxed); }

 private:
  friend class internal::CallGuard;
  ResourceBudgetManager& manager_;
  Tracer& tracer_;
  std::shared_ptr<JsonLogger> logger_;
  // The manager's and the tracer's clock are one: a call's readings serve its span too.
  const bool shared_clock_;
  // Call(task, fn)'s options: a member, where a function-local static costs a guard check.
  const CallOptions default_options_{};
  std::atomic<uint64_t> unguarded_calls_{0};
};

// One slot for many items (the spec's batch wrapper). Init() takes the slot and starts the span;
// Execute(fn) runs one item; Release(success, error_type) settles. A batch that is initialized and
// never released is released as abandoned when destroyed.
class BatchCall {
 public:
  BatchCall(BatchCall&&) noexcept;
  BatchCall& operator=(BatchCall&&) = delete;
  ~BatchCall();

  // Throws ResourceLimitExceeded (per options) or runs unguarded. Calling it twice is an error
  // (std::logic_error).
  void Init();
  // Runs one item: span event batch_item_processed {itemIndex} or batch_item_failed {itemIndex,
  // errorType}, and rethrows. Throws std::logic_error before Init() or after Release().
  template <typename Fn>
  auto Execute(Fn&& fn);
  // Span event batch_completed {items, errors}; releases the slot. Idempotent.
  void Release(bool success, std::string_view error_type = {});

  int items() const { return items_; }
  int errors() const { return errors_; }
  CallContext& context();

 private:
  friend class WorkerCalls;
  BatchCall(WorkerCalls& calls, std::string_view task_id, std::string_view lane,
            CallOptions options);
  void BeforeItem();
  void ItemDone(bool ok);

  // On the heap, so that moving the BatchCall leaves them where the guard's views point.
  struct Request {
    std::string task_id;
    CallOptions options;
  };

  WorkerCalls* calls_;
  std::unique_ptr<Request> request_;
  std::unique_ptr<internal::CallGuard> guard_;
  bool released_ = false;
  int items_ = 0;
  int errors_ = 0;
};

// A deadline and a span shared by the calls made through it.
class RequestScope {
 public:
  // Monotonic deadline of the scope.
  int64_t deadline_mono_nanos() const { return deadline_; }
  // Milliseconds left (0 when past the deadline).
  int64_t remaining_ms() const;
  const SpanContext& span_context() const { return span_.context(); }
  Span& span() { return span_; }

  // A worker call inside the scope, in the scope's lane. Its timeout is the time left, its span a
  // child of the scope's. Past the deadline it throws WorkerCallTimeout without calling fn.
  template <typename Fn>
  auto Call(Fn&& fn);
  // The same with the call's own options: lane and metadata as given, the timeout the smaller of
  // options.timeout_ms and the time left.
  template <typename Fn>
  auto Call(Fn&& fn, CallOptions options);
  // A nested scope: its budget is min(this scope's remaining time, options.timeout_ms).
  template <typename Fn>
  auto Nested(Fn&& fn, ScopeOptions options = {});

 private:
  friend class WorkerCalls;
  RequestScope(WorkerCalls& calls, std::string_view task_id, const ScopeOptions& options,
               const RequestScope* parent);
  // min(own, time left); past the deadline, throws WorkerCallTimeout with the scope's figures.
  int64_t Budget(std::optional<int64_t> own, std::string_view lane) const;
  CallOptions Prepare(CallOptions options) const;
  ScopeOptions PrepareNested(ScopeOptions options) const;
  void Failed();  // the scope's fn threw: error status on the scope's span

  WorkerCalls& calls_;
  std::string task_id_;
  std::string lane_;
  bool throw_on_refusal_;
  int64_t timeout_ms_ = 0;
  int64_t deadline_ = 0;
  Span span_;
};

// ---- the process-wide defaults (the spec's free functions)
// ------------------------------------------

// The default manager (GetResourceBudgetManager()) with a tracer built from its config
// (enableSpanEmission, spanSampleRate) and `processor`, which may be null (spans go nowhere).
// Configure before the first default call; later calls return an error and change nothing.
Result<bool> ConfigureDefaultWorkerCalls(std::shared_ptr<SpanProcessor> processor,
                                         Resource resource = {},
                                         std::shared_ptr<JsonLogger> logger = nullptr);
WorkerCalls& DefaultWorkerCalls();

template <typename Fn>
auto WithWorkerCallObservability(std::string_view task_id, Fn&& fn,
                                 const CallOptions& options = {}) {
  return DefaultWorkerCalls().Call(task_id, std::forward<Fn>(fn), options);
}
BatchCall CreateBatchWorkerCallWrapper(std::string_view task_id, std::string_view lane,
                                       CallOptions options = {});
template <typename Fn>
auto WithRequestScope(std::string_view task_id, Fn&& fn, const ScopeOptions& options = {}) {
  return DefaultWorkerCalls().WithRequestScope(task_id, std::forward<Fn>(fn), options);
}

// ---- templates
// ------------------------------------------------------------------------------------

namespace internal {
template <typename Fn>
decltype(auto) InvokeWithContext(Fn& fn, CallContext& context) {
  if constexpr (std::is_invocable_v<Fn&, CallContext&>) {
    return fn(context);
  } else {
    return fn();
  }
}
template <typename Fn>
using CallResult = decltype(InvokeWithContext(std::declval<Fn&>(), std::declval<CallContext&>()));
}  // namespace internal

template <typename Fn>
auto WorkerCalls::Call(std::string_view task_id, Fn&& fn, const CallOptions& options) {
  using R = internal::CallResult<Fn>;
  internal::GuardedCall guard(*this, task_id, options);
  if constexpr (std::is_void_v<R>) {
    try {
      internal::InvokeWithContext(fn, guard.context());
    } catch (...) {
      guard.Failed();
      throw;
    }
    guard.Succeeded();
  } else {
    R result = [&]() -> R {
      try {
        return internal::InvokeWithContext(fn, guard.context());
      } catch (...) {
        guard.Failed();
        throw;
      }
    }();
    guard.Succeeded();
    return result;
  }
}

template <typename Fn>
auto WorkerCalls::CallAsync(std::string task_id, Fn fn, CallOptions options) {
  return std::async(std::launch::async, [this, task_id = std::move(task_id), fn = std::move(fn),
                                         options = std::move(options)]() mutable {
    return Call(task_id, fn, options);
  });
}

template <typename Fn>
auto WorkerCalls::CallAsync(Executor& executor, std::string task_id, Fn fn, CallOptions options) {
  using R = internal::CallResult<Fn>;
  // A packaged_task is move-only and std::function copies: the task lives on the heap and the
  // submitted function shares it.
  auto task = std::make_shared<std::packaged_task<R()>>(
      [this, task_id = std::move(task_id), fn = std::move(fn),
       options = std::move(options)]() mutable { return Call(task_id, fn, options); });
  std::future<R> result = task->get_future();
  executor.Submit([task] { (*task)(); });
  return result;
}

template <typename Fn>
auto BatchCall::Execute(Fn&& fn) {
  BeforeItem();
  using R = internal::CallResult<Fn>;
  if constexpr (std::is_void_v<R>) {
    try {
      internal::InvokeWithContext(fn, context());
    } catch (...) {
      ItemDone(false);
      throw;
    }
    ItemDone(true);
  } else {
    R result = [&]() -> R {
      try {
        return internal::InvokeWithContext(fn, context());
      } catch (...) {
        ItemDone(false);
        throw;
      }
    }();
    ItemDone(true);
    return result;
  }
}

namespace internal {
template <typename Fn>
decltype(auto) RunScope(Fn& fn, RequestScope& scope, void (*on_failure)(RequestScope&)) {
  try {
    return fn(scope);
  } catch (...) {
    on_failure(scope);
    throw;
  }
}
}  // namespace internal

template <typename Fn>
auto WorkerCalls::WithRequestScope(std::string_view task_id, Fn&& fn, const ScopeOptions& options) {
  RequestScope scope(*this, task_id, options, nullptr);
  return internal::RunScope(fn, scope, [](RequestScope& s) { s.Failed(); });
}

template <typename Fn>
auto RequestScope::Call(Fn&& fn) {
  CallOptions options;
  options.lane = lane_;
  options.throw_on_resource_limit_exceeded = throw_on_refusal_;
  return calls_.Call(task_id_, std::forward<Fn>(fn), Prepare(std::move(options)));
}

template <typename Fn>
auto RequestScope::Call(Fn&& fn, CallOptions options) {
  return calls_.Call(task_id_, std::forward<Fn>(fn), Prepare(std::move(options)));
}

template <typename Fn>
auto RequestScope::Nested(Fn&& fn, ScopeOptions options) {
  RequestScope nested(calls_, task_id_, PrepareNested(std::move(options)), this);
  return internal::RunScope(fn, nested, [](RequestScope& s) { s.Failed(); });
}

}  // namespace laneguard

#endif  // LANEGUARD_WORKER_H_
