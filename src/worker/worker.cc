#include "laneguard/worker.h"

#include <cxxabi.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <typeinfo>

#include "core/manager_state.h"
#include "trace/span_fast_path.h"
#include "worker/call_guard.h"

namespace laneguard {
namespace {

constexpr int64_t kNanosPerMs = 1'000'000;

// The dynamic type of the exception being handled, demangled ("std::runtime_error").
std::string CurrentExceptionType() {
  const std::type_info* type = abi::__cxa_current_exception_type();
  if (type == nullptr) return "unknown";
  int status = 0;
  char* name = abi::__cxa_demangle(type->name(), nullptr, nullptr, &status);
  std::string out = status == 0 && name != nullptr ? name : type->name();
  std::free(name);
  return out;
}

std::string CurrentExceptionMessage() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return {};
  }
}

}  // namespace

ResourceLimitExceeded::ResourceLimitExceeded(Rejection rejection)
    : std::runtime_error("Resource limit exceeded: " + rejection.message()),
      error_(std::in_place_type<Rejection>, std::move(rejection)) {}

WorkerCallTimeout::WorkerCallTimeout(std::string_view task_id, std::string_view lane,
                                     int64_t timeout_ms, double duration_ms)
    : std::runtime_error("Worker call timed out: task '" + std::string(task_id) + "' in lane '" +
                         std::string(lane) + "' ran " + std::to_string(duration_ms) +
                         " ms, past its hard deadline (timeout " + std::to_string(timeout_ms) +
                         " ms)"),
      timeout_ms_(timeout_ms),
      duration_ms_(duration_ms) {}

// ---- CallContext
// ---------------------------------------------------------------------------------

std::stop_token CallContext::stop_token() { return guard_->slot_.stop_token(); }
int64_t CallContext::deadline_mono_nanos() const {
  return guard_->slot_.valid() ? guard_->slot_.deadline_mono_nanos() : 0;
}
int64_t CallContext::hard_deadline_mono_nanos() const {
  return guard_->slot_.valid() ? guard_->slot_.hard_deadline_mono_nanos() : 0;
}
Span& CallContext::span() { return guard_->span_; }
bool CallContext::guarded() const { return guard_->slot_.valid(); }
std::string CallContext::call_id() const {
  return guard_->slot_.valid() ? guard_->slot_.call_id_string() : std::string();
}
void CallContext::OnHardTimeout(std::function<void()> hook) {
  guard_->SetHardTimeoutHook(std::move(hook));
}

// ---- CallGuard
// -------------------------------------------------------------------------------------

namespace internal {

static_assert(sizeof(CallGuard) <= GuardedCall::kStorageBytes);
static_assert(alignof(CallGuard) <= 16);

GuardedCall::GuardedCall(WorkerCalls& calls, std::string_view task_id, const CallOptions& options)
    : context_(new (storage_)
                   CallGuard(calls, task_id, options, calls.tracer().enabled() ? this : nullptr)) {
  built_.store(&guard(), std::memory_order_release);
}

GuardedCall::~GuardedCall() { guard().~CallGuard(); }

CallGuard& GuardedCall::guard() { return *std::launder(reinterpret_cast<CallGuard*>(storage_)); }

void GuardedCall::Succeeded() { guard().Succeeded(); }

void GuardedCall::Failed() { guard().Failed(); }

void GuardedCall::OnWarning() {
  if (CallGuard* built = built_.load(std::memory_order_acquire)) built->OnWarning();
}

void GuardedCall::OnEscalation() {
  if (CallGuard* built = built_.load(std::memory_order_acquire)) built->OnEscalation();
}

// Through the manager's state, which takes the listener in the same locking as the slot. A call
// that may wait goes through Acquire, whose options carry the listener the same way.
[[gnu::always_inline]] inline Result<Slot> CallGuard::AcquireFor(WorkerCalls& calls,
                                                                 std::string_view task_id,
                                                                 const CallOptions& options,
                                                                 TimeoutHandler* listener) {
  if (options.wait_ms == 0) [[likely]] {
    return calls.manager().state_->TryAcquire(task_id, options.lane, options.timeout_ms,
                                              options.metadata, listener);
  }
  return calls.manager().Acquire(task_id, options.lane,
                                 {.timeout_ms = options.timeout_ms,
                                  .wait_ms = options.wait_ms,
                                  .priority = options.priority,
                                  .metadata = options.metadata,
                                  .stop_token = options.wait_stop_token,
                                  .timeout_handler = listener});
}

CallGuard::CallGuard(WorkerCalls& calls, std::string_view task_id, const CallOptions& options,
                     TimeoutHandler* listener)
    : CallGuard(calls, task_id, options, AcquireFor(calls, task_id, options, listener)) {
  if (listener == nullptr) {
    ListenIfRecording();
  } else if (slot_.valid()) {
    handler_ = listener;
  }
}

CallGuard::CallGuard(WorkerCalls& calls, std::string_view task_id, const CallOptions& options,
                     Slot slot)
    : CallGuard(calls, task_id, options, Result<Slot>(std::move(slot))) {
  ListenIfRecording();
}

// The span is made in place, in the member: returned and moved into it, its ids were stored
// and at once read back wider than they were written, a store-forwarding stall on every call.
CallGuard::CallGuard(WorkerCalls& calls, std::string_view task_id, const CallOptions& options,
                     Result<Slot>&& acquired)
    : calls_(calls),
      task_id_(task_id),
      lane_(options.lane),
      // A granted slot carries the time it was granted at; only a refused call reads the clock.
      start_mono_(acquired.ok() ? acquired->start_mono_nanos()
                                : calls.manager().clock().MonotonicNanos()),
      span_(calls.tracer().enabled() ? StartSpan(acquired, options) : Span()),
      slot_(acquired.ok() ? std::move(acquired.value()) : Slot()) {
  if (!acquired.ok()) {
    Refused(*acquired.error().rejection(), options);
    return;
  }
}

Span CallGuard::StartSpan(const Result<Slot>& acquired, const CallOptions& options) const {
  constexpr std::string_view kPrefix = "worker_call:";
  Tracer& tracer = calls_.tracer();
  const SpanContext* parent =
      options.parent && options.parent->valid() ? &*options.parent : nullptr;
  // The name is built on the stack: a sampled-out span never needs it as a string.
  char buffer[96];
  std::string long_name;
  std::string_view name;
  const size_t length = kPrefix.size() + lane_.size();
  if (length <= sizeof buffer) {
    std::memcpy(buffer, kPrefix.data(), kPrefix.size());
    std::memcpy(buffer + kPrefix.size(), lane_.data(), lane_.size());
    name = std::string_view(buffer, length);
  } else {
    long_name = std::string(kPrefix) += lane_;
    name = long_name;
  }
  // On one clock, the span starts when the slot was granted (or refused): one read fewer. The
  // first events are stamped with the span's start: the moment the slot was handed over. A call
  // that waited in its lane's queue starts its span when it began to wait (on one clock), with a
  // "queued" event there.
  const int64_t start = calls_.shared_clock_ ? start_mono_ : tracer.clock().MonotonicNanos();
  // Only a call that may wait asks how long it did (the answer is under the call's shard lock).
  const int64_t waited = options.wait_ms != 0 && acquired.ok() ? acquired->wait_nanos() : 0;
  const int64_t span_start = calls_.shared_clock_ ? start - waited : start;
  return SpanFastPath::StartSpanAt(
      tracer, span_start, name, parent, SpanKind::kInternal, [&](SpanEditor& edit) {
        edit.SetAttributes({{"taskId", task_id_}, {"lane", lane_}});
        for (const auto& [key, value] : options.metadata) edit.SetAttributes({{key, value}});
        const bool refused_and_throws = !acquired.ok() && options.throw_on_resource_limit_exceeded;
        if (options.wait_ms != 0) [[unlikely]]
          AddWaitEvents(edit, span_start, waited, acquired, options);
        if (acquired.ok()) {
          edit.AddLiteralEventAt(
              start, "acquired_slot",
              {{"globalConcurrency", int64_t{acquired->global_active_at_start()}},
               {"laneConcurrency", int64_t{acquired->lane_active_at_start()}}});
        } else {
          const Rejection& rejection = *acquired.error().rejection();
          edit.SetAttributes({{"laneguard.rejection_reason", ToString(rejection.reason)}});
          if (refused_and_throws) {
            edit.SetStatus(StatusCode::kError, "Resource limit exceeded: " + rejection.message());
          } else {
            edit.SetAttributes({{"laneguard.unguarded", true}});
          }
        }
        if (!refused_and_throws)
          edit.AddLiteralEventAt(start, "execution_started", {{"taskId", task_id_}});
      });
}

// The wait of a call that may wait: its "queued" event and attributes.
void CallGuard::AddWaitEvents(SpanEditor& edit, int64_t at, int64_t waited,
                              const Result<Slot>& acquired, const CallOptions& options) {
  const double wait_ms = static_cast<double>(waited) / 1e6;
  edit.AddLiteralEventAt(at, "queued", {{"priority", ToString(options.priority)}});
  edit.SetAttributes({{"laneguard.wait_ms", wait_ms}});
  if (acquired.ok() && acquired->borrowed()) edit.SetAttributes({{"laneguard.borrowed", true}});
}

void CallGuard::Refused(const Rejection& rejection, const CallOptions& options) {
  if (options.throw_on_resource_limit_exceeded) throw ResourceLimitExceeded(rejection);
  // Graceful degradation, never silent: counted, marked on the span, logged.
  calls_.unguarded_calls_.fetch_add(1, std::memory_order_relaxed);
  if (JsonLogger* log = calls_.logger()) {
    const std::string message = rejection.message();
    log->LogWarning("Worker call running unguarded after a refusal",
                    {{"taskId", task_id_},
                     {"lane", lane_},
                     {"reason", ToString(rejection.reason)},
                     {"detail", message}});
  }
}

CallGuard::~CallGuard() {
  // Released before any member goes: the timeout handler, on the timer thread, uses them, and
  // Release() waits for it. A no-op once the call has settled.
  slot_.Release(false, "abandoned");
}

void CallGuard::SetTimeoutHandler(TimeoutHandler* handler) {
  if (!slot_.valid()) return;
  handler_ = handler != nullptr ? handler : this;
  slot_.SetTimeoutHandler(handler_);
}

void CallGuard::SetHardTimeoutHook(std::function<void()> hook) {
  {
    MutexLock lock(hook_mu_);
    user_hard_hook_ = std::move(hook);
  }
  // Another handler on the slot passes the escalation on to this guard.
  if (handler_ == nullptr) SetTimeoutHandler(this);
}

// The span's lock orders this event with what the owner records meanwhile; the owner ends the
// span only after the release, which waits for this handler.
void CallGuard::OnWarning() {
  if (!span_.recording()) return;
  SpanFastPath::AddLiteralEventAt(span_, SpanTime(slot_.deadline_mono_nanos()), "timeout",
                                  {{"phase", "warning"}});
  warning_written_.store(true, std::memory_order_relaxed);
}

void CallGuard::OnEscalation() {
  if (span_.recording()) {
    SpanFastPath::AddLiteralEventAt(span_, SpanTime(slot_.hard_deadline_mono_nanos()), "timeout",
                                    {{"phase", "escalation"}});
    escalation_written_.store(true, std::memory_order_relaxed);
  }
  std::function<void()> user;
  {
    MutexLock lock(hook_mu_);
    user = user_hard_hook_;
  }
  if (user) user();
}

int64_t CallGuard::SpanTime(int64_t manager_mono) const {
  if (calls_.shared_clock_) return manager_mono;
  // The same distance from the span's start as from the slot's, on the tracer's clock.
  return SpanFastPath::StartMonoNanos(span_) + (manager_mono - start_mono_);
}

double CallGuard::ElapsedMs() const {
  return static_cast<double>(calls_.manager().clock().MonotonicNanos() - start_mono_) / kNanosPerMs;
}

void CallGuard::Succeeded() {
  // The manager's one clock reading decides whether the call came back at or past its hard
  // deadline (as the timer fires: deadline <= now) and goes into the record, so the exception and
  // the record always agree.
  const ReleaseOutcome out = slot_.ReleaseUnlessLate(true, {}, "WorkerCallTimeout");
  if (out.past_hard_deadline) {
    const int64_t timeout_ms = (slot_.deadline_mono_nanos() - start_mono_) / kNanosPerMs;
    WorkerCallTimeout timeout(task_id_, lane_, timeout_ms, out.duration_ms);
    if (span_.recording()) EndSpan(false, timeout.what(), out);
    throw timeout;
  }
  if (span_.recording()) EndSpan(true, {}, out);
}

void CallGuard::Failed() {
  const std::string type = CurrentExceptionType();
  const std::string message = CurrentExceptionMessage();
  const ReleaseOutcome out = slot_.ReleaseWithOutcome(false, type);
  if (span_.recording()) EndSpan(false, message, out, /*exception_type=*/type);
}

void CallGuard::Settle(bool success, std::string_view error_type) {
  const ReleaseOutcome out = slot_.ReleaseWithOutcome(success, error_type);
  if (span_.recording()) EndSpan(success, error_type, out);
}

void CallGuard::EndSpan(bool success, std::string_view message, const ReleaseOutcome& release,
                        std::string_view exception_type) {
  const double duration_ms = release.released ? release.duration_ms : ElapsedMs();
  // One reading for the closing events and the end: they happen at one moment, the slot's
  // release (its start plus the duration recorded) when the manager and the tracer share a
  // clock. (Carried in ReleaseOutcome, it would make that 24 bytes, returned through memory.)
  const int64_t now =
      release.released && calls_.shared_clock_
          ? start_mono_ + std::llround(release.duration_ms * static_cast<double>(kNanosPerMs))
          : calls_.tracer().clock().MonotonicNanos();
  SpanEditor edit = SpanFastPath::Edit(span_);
  // A deadline the record says passed, but whose event the timer thread did not write (the call
  // was released before the tick that would have reported it): its event now, stamped the same.
  if (release.timeout_reached && !warning_written_.load(std::memory_order_relaxed)) {
    edit.AddLiteralEventAt(SpanTime(slot_.deadline_mono_nanos()), "timeout",
                           {{"phase", "warning"}});
  }
  if (release.escalated && !escalation_written_.load(std::memory_order_relaxed)) {
    edit.AddLiteralEventAt(SpanTime(slot_.hard_deadline_mono_nanos()), "timeout",
                           {{"phase", "escalation"}});
  }
  if (!exception_type.empty()) {
    edit.AddLiteralEventAt(now, "exception",
                           {{"exception.type", exception_type}, {"exception.message", message}});
  }
  if (success) edit.AddLiteralEventAt(now, "execution_succeeded");
  edit.AddLiteralEventAt(now, "call_completed",
                         {{"status", success ? "success" : "failure"}, {"duration", duration_ms}})
      .SetStatus(success ? StatusCode::kOk : StatusCode::kError, message)
      .EndAt(now);
}

}  // namespace internal

// ---- BatchCall
// -------------------------------------------------------------------------------------

BatchCall::BatchCall(WorkerCalls& calls, std::string_view task_id, std::string_view lane,
                     CallOptions options)
    : calls_(&calls), request_(new Request{std::string(task_id), std::move(options)}) {
  request_->options.lane = std::string(lane);
}

BatchCall::BatchCall(BatchCall&& other) noexcept
    : calls_(other.calls_),
      request_(std::move(other.request_)),
      guard_(std::move(other.guard_)),
      released_(other.released_),
      items_(other.items_),
      errors_(other.errors_) {
  other.released_ = true;
}

BatchCall::~BatchCall() {
  if (guard_ && !released_) Release(false, "abandoned");
}

void BatchCall::Init() {
  if (guard_ || released_) throw std::logic_error("BatchCall::Init called twice");
  guard_ = std::make_unique<internal::CallGuard>(*calls_, request_->task_id, request_->options);
  guard_->span().AddEvent("batch_started",
                          {{"taskId", request_->task_id}, {"lane", request_->options.lane}});
}

CallContext& BatchCall::context() {
  if (!guard_) throw std::logic_error("BatchCall used before Init()");
  return guard_->context();
}

void BatchCall::BeforeItem() {
  if (!guard_) throw std::logic_error("BatchCall::Execute called before Init()");
  if (released_) throw std::logic_error("BatchCall::Execute called after Release()");
}

void BatchCall::ItemDone(bool ok) {
  const int64_t index = items_++;
  if (ok) {
    guard_->span().AddEvent("batch_item_processed", {{"itemIndex", index}});
    return;
  }
  ++errors_;
  guard_->span().AddEvent("batch_item_failed",
                          {{"itemIndex", index}, {"errorType", CurrentExceptionType()}});
}

void BatchCall::Release(bool success, std::string_view error_type) {
  if (!guard_ || released_) return;
  released_ = true;
  guard_->span().AddEvent("batch_completed",
                          {{"items", int64_t{items_}}, {"errors", int64_t{errors_}}});
  guard_->Settle(success, error_type);
}

BatchCall WorkerCalls::Batch(std::string_view task_id, std::string_view lane, CallOptions options) {
  return BatchCall(*this, task_id, lane, std::move(options));
}

// ---- RequestScope
// ----------------------------------------------------------------------------------

RequestScope::RequestScope(WorkerCalls& calls, std::string_view task_id,
                           const ScopeOptions& options, const RequestScope* parent)
    : calls_(calls),
      task_id_(task_id),
      lane_(options.lane),
      throw_on_refusal_(options.throw_on_resource_limit_exceeded) {
  const int64_t timeout_ms =
      options.timeout_ms.value_or(calls.manager().config().default_timeout_ms);
  if (timeout_ms <= 0 || timeout_ms > kMaxTimeoutMs)
    throw std::invalid_argument(
        "ScopeOptions.timeout_ms must be > 0 and <= " + std::to_string(kMaxTimeoutMs) + ", got " +
        std::to_string(timeout_ms));
  timeout_ms_ = timeout_ms;
  deadline_ = calls.manager().clock().MonotonicNanos() + timeout_ms * kNanosPerMs;
  Tracer& tracer = calls.tracer();
  if (tracer.enabled()) {
    const SpanContext* parent_context = nullptr;
    if (parent != nullptr && parent->span_context().valid()) {
      parent_context = &parent->span_context();
    } else if (options.parent && options.parent->valid()) {
      parent_context = &*options.parent;
    }
    span_ = tracer.StartSpan("request_scope:" + lane_, parent_context);
    span_.SetAttribute("taskId", task_id_);
    span_.SetAttribute("lane", lane_);
    span_.SetAttribute("timeoutMs", timeout_ms);
  }
}

int64_t RequestScope::remaining_ms() const {
  const int64_t left = deadline_ - calls_.manager().clock().MonotonicNanos();
  return left > 0 ? left / kNanosPerMs : 0;
}

int64_t RequestScope::Budget(std::optional<int64_t> own, std::string_view lane) const {
  const int64_t left = remaining_ms();
  if (left <= 0) {
    const int64_t now = calls_.manager().clock().MonotonicNanos();
    const double elapsed_ms =
        static_cast<double>(now - (deadline_ - timeout_ms_ * kNanosPerMs)) / kNanosPerMs;
    throw WorkerCallTimeout(task_id_, lane, timeout_ms_, elapsed_ms);
  }
  return std::min(own.value_or(left), left);
}

CallOptions RequestScope::Prepare(CallOptions options) const {
  options.timeout_ms = Budget(options.timeout_ms, options.lane);
  if (span_.context().valid()) options.parent = span_.context();
  return options;
}

ScopeOptions RequestScope::PrepareNested(ScopeOptions options) const {
  options.timeout_ms = Budget(options.timeout_ms, options.lane);
  return options;
}

void RequestScope::Failed() {
  span_.SetStatus(StatusCode::kError, CurrentExceptionType() + ": " + CurrentExceptionMessage());
}

// ---- defaults
// --------------------------------------------------------------------------------------

namespace {
internal::Mutex g_default_mu;
// Never destroyed: calls may run during static destruction of other objects.
WorkerCalls* g_default_calls GUARDED_BY(g_default_mu) = nullptr;

WorkerCalls* MakeDefault(std::shared_ptr<SpanProcessor> processor, Resource resource,
                         std::shared_ptr<JsonLogger> logger) {
  ResourceBudgetManager* manager = GetResourceBudgetManager().value();
  TracerOptions options;
  options.enabled = manager->config().enable_span_emission;
  options.sample_rate = manager->config().span_sample_rate;
  options.resource = std::move(resource);
  options.processor = std::move(processor);
  auto* tracer = new Tracer(std::move(options));
  return new WorkerCalls(*manager, *tracer, std::move(logger));
}
}  // namespace

Result<bool> ConfigureDefaultWorkerCalls(std::shared_ptr<SpanProcessor> processor,
                                         Resource resource, std::shared_ptr<JsonLogger> logger) {
  internal::MutexLock lock(g_default_mu);
  if (g_default_calls != nullptr)
    return Error{ErrorCode::kFailedPrecondition, "", "",
                 "the default worker calls are already in use; configure them before the "
                 "first call"};
  g_default_calls = MakeDefault(std::move(processor), std::move(resource), std::move(logger));
  return true;
}

WorkerCalls& DefaultWorkerCalls() {
  internal::MutexLock lock(g_default_mu);
  if (g_default_calls == nullptr) g_default_calls = MakeDefault(nullptr, {}, nullptr);
  return *g_default_calls;
}

BatchCall CreateBatchWorkerCallWrapper(std::string_view task_id, std::string_view lane,
                                       CallOptions options) {
  return DefaultWorkerCalls().Batch(task_id, lane, std::move(options));
}

}  // namespace laneguard
