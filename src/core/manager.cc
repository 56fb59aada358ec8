// The facade: ResourceBudgetManager and Slot forward to internal::ManagerState
// (core/manager_state.h), which composes the parts. Also the enum names, Rejection::message() and
// the process-wide default manager.
#include "laneguard/manager.h"

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "core/manager_state.h"
#include "laneguard/internal/mutex.h"
#include "laneguard/internal/thread_annotations.h"

namespace laneguard {

std::string_view ToString(EventKind kind) {
  switch (kind) {
    case EventKind::kAcquired:
      return "acquired";
    case EventKind::kRejected:
      return "rejected";
    case EventKind::kReleased:
      return "released";
    case EventKind::kTimeoutWarning:
      return "timeout_warning";
    case EventKind::kTimeoutEscalation:
      return "timeout_escalation";
    case EventKind::kHeapWarning:
      return "heap_warning";
  }
  return "unknown";
}

std::string_view ToString(Priority priority) {
  switch (priority) {
    case Priority::kLow:
      return "low";
    case Priority::kNormal:
      return "normal";
    case Priority::kHigh:
      return "high";
  }
  return "unknown";
}

namespace {

const std::optional<int64_t> kDefaultTimeout;
const Metadata kNoMetadata;

}  // namespace

// ---- Slot -------------------------------------------------------------------------------------

void Slot::ReleaseAbandoned() { Release(false, "abandoned"); }

int64_t Slot::wait_nanos() const { return state_ == nullptr ? 0 : state_->QueuedOf(*this).wait_ns; }

bool Slot::borrowed() const { return state_ != nullptr && state_->QueuedOf(*this).borrowed; }

std::string Slot::call_id_string() const { return "call-" + std::to_string(call_id_); }

bool Slot::Release(bool success, std::string_view error_type) {
  return ReleaseWithOutcome(success, error_type).released;
}

ReleaseOutcome Slot::ReleaseWithOutcome(bool success, std::string_view error_type) {
  if (state_ == nullptr) return {};
  return state_->Release(*this, success, error_type);
}

ReleaseOutcome Slot::ReleaseUnlessLate(bool success, std::string_view error_type,
                                       std::string_view late_error_type) {
  if (state_ == nullptr) return {};
  return state_->Release(*this, success, error_type, /*fail_if_late=*/true, late_error_type);
}

std::stop_token Slot::stop_token() {
  return state_ == nullptr ? std::stop_token() : state_->StopToken(*this);
}

void Slot::SetTimeoutHandler(TimeoutHandler* handler) {
  if (state_ != nullptr) state_->SetTimeoutHandler(*this, handler);
}

// ---- ResourceBudgetManager --------------------------------------------------------------------

Result<std::unique_ptr<ResourceBudgetManager>> ResourceBudgetManager::Create(
    Config config, ManagerOptions options) {
  auto valid = ValidateConfig(std::move(config));
  if (!valid.ok()) return valid.error();
  if (options.max_global_limit < 0 || options.max_global_limit > kMaxConcurrencyLimit) {
    const std::string value = std::to_string(options.max_global_limit);
    return Error(ErrorCode::kInvalidArgument, "max_global_limit", value,
                 "ManagerOptions::max_global_limit = " + value + ": must be within [0, " +
                     std::to_string(kMaxConcurrencyLimit) + "]");
  }
  const bool start = options.start_background_thread;
  auto* state = new internal::ManagerState(std::move(valid).value(), std::move(options));
  if (start) state->StartBackground();
  return std::unique_ptr<ResourceBudgetManager>(new ResourceBudgetManager(state));
}

ResourceBudgetManager::~ResourceBudgetManager() {
  state_->Shutdown();
  if (state_->Orphan()) delete state_;
}

Result<Slot> ResourceBudgetManager::TryAcquire(std::string_view task_id, std::string_view lane) {
  return state_->TryAcquire(task_id, lane, kDefaultTimeout, kNoMetadata);
}
Result<Slot> ResourceBudgetManager::TryAcquire(std::string_view task_id, std::string_view lane,
                                               const std::optional<int64_t>& timeout_ms,
                                               const Metadata& metadata) {
  return state_->TryAcquire(task_id, lane, timeout_ms, metadata);
}
Result<Slot> ResourceBudgetManager::TryAcquire(std::string_view task_id, std::string_view lane,
                                               const std::optional<int64_t>& timeout_ms,
                                               Metadata&& metadata) {
  return state_->TryAcquire(task_id, lane, timeout_ms, std::move(metadata));
}

void ResourceBudgetManager::AcquireAsync(std::string_view task_id, std::string_view lane,
                                         AcquireOptions options, AcquireCallback done) {
  state_->AcquireAsync(task_id, lane, std::move(options), std::move(done));
}

Result<Slot> ResourceBudgetManager::Acquire(std::string_view task_id, std::string_view lane,
                                            AcquireOptions options) {
  // The waiting thread sleeps on its own condition variable; the manager keeps no thread for it.
  // The answer is shared with the callback and freed by whichever of the two is done last, so the
  // callback notifies after unlocking: notified under the lock, the woken waiter finds the mutex
  // still held and sleeps again on it: a second sleep and wake-up on every hand-off.
  struct Answer {
    internal::Mutex mu;
    internal::CondVar cv;
    std::optional<Result<Slot>> result GUARDED_BY(mu);
    std::atomic<int> refs{2};  // the waiter's and the callback's
    void Unref() {
      if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }
  };
  auto* answer = new Answer;
  try {
    state_->AcquireAsync(task_id, lane, std::move(options), [answer](Result<Slot> r) {
      {
        internal::MutexLock lock(answer->mu);
        answer->result.emplace(std::move(r));
      }
      answer->cv.NotifyOne();
      answer->Unref();
    });
  } catch (...) {  // std::bad_alloc, before the request was decided: the callback never runs
    delete answer;
    throw;
  }
  std::optional<Result<Slot>> out;
  {
    internal::MutexLock lock(answer->mu);
    answer->cv.Wait(lock, [answer]() REQUIRES(answer->mu) { return answer->result.has_value(); });
    out.emplace(std::move(*answer->result));
  }
  answer->Unref();
  return std::move(*out);
}

std::future<Result<Slot>> ResourceBudgetManager::AcquireFuture(std::string_view task_id,
                                                               std::string_view lane,
                                                               AcquireOptions options) {
  auto promise = std::make_shared<std::promise<Result<Slot>>>();
  std::future<Result<Slot>> future = promise->get_future();
  state_->AcquireAsync(task_id, lane, std::move(options),
                       [promise](Result<Slot> r) { promise->set_value(std::move(r)); });
  return future;
}

bool ResourceBudgetManager::Release(Slot& slot, bool success, std::string_view error_type) {
  if (slot.state_ != state_) return false;
  return slot.Release(success, error_type);
}

std::vector<WorkerCallMetrics> ResourceBudgetManager::GetMetrics() const {
  return state_->GetMetrics();
}
Statistics ResourceBudgetManager::GetStatistics() const { return state_->GetStatistics(); }
MemorySnapshot ResourceBudgetManager::GetMemorySnapshot() const { return state_->LatestSnapshot(); }
MemorySnapshot ResourceBudgetManager::SampleMemoryNow() { return state_->SampleMemoryNow(); }
ConcurrencyStatus ResourceBudgetManager::GetConcurrencyStatus() const {
  return state_->GetConcurrencyStatus();
}
const Config& ResourceBudgetManager::config() const { return state_->config(); }
Result<Config> ResourceBudgetManager::UpdateConfig(Config config) {
  return state_->UpdateConfig(std::move(config));
}
const Clock& ResourceBudgetManager::clock() const { return state_->clock(); }
void ResourceBudgetManager::AddObserver(std::shared_ptr<Observer> observer) {
  state_->AddObserver(std::move(observer));
}
void ResourceBudgetManager::Tick() { state_->Tick(); }
void ResourceBudgetManager::Shutdown() { state_->Shutdown(); }

// ---- the process-wide default -------------------------------------------------------------------

namespace {
internal::Mutex g_default_mu;
// Intentionally never destroyed: slots may outlive main.
ResourceBudgetManager* g_default GUARDED_BY(g_default_mu) = nullptr;
}  // namespace

Result<ResourceBudgetManager*> GetResourceBudgetManager(std::optional<Config> config) {
  internal::MutexLock lock(g_default_mu);
  if (g_default != nullptr) {
    if (config && !(*config == g_default->config()))
      return Error{ErrorCode::kFailedPrecondition, "", "",
                   "the default resource budget manager already exists with a different "
                   "config; create an explicit ResourceBudgetManager instead"};
    return g_default;
  }
  auto created = ResourceBudgetManager::Create(config.value_or(Config{}));
  if (!created.ok()) return created.error();
  g_default = std::move(created).value().release();
  return g_default;
}

Result<ResourceBudgetManager*> GetResourceBudgetManagerFromJson(std::string_view partial_json) {
  auto config = ParseConfigJson(partial_json);
  if (!config.ok()) return config.error();
  return GetResourceBudgetManager(std::move(config).value());
}

}  // namespace laneguard
