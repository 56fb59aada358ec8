// CallEvents: the manager's observers, and the events it tells them.
//
// Observer lists are published by pointer and retired lists are kept until the manager dies, so
// a reader (every TryAcquire and Release asks HasObservers()) never takes a lock or a reference
// count. An observer that throws is ignored: telemetry must never fail or leak a worker call.
//
// Thread safety: every method is safe from any thread; Set and Add serialize on a mutex, the
// readers take none.
#ifndef LANEGUARD_SRC_CORE_CALL_EVENTS_H_
#define LANEGUARD_SRC_CORE_CALL_EVENTS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "core/admission.h"
#include "laneguard/internal/mutex.h"
#include "laneguard/internal/thread_annotations.h"
#include "laneguard/observer.h"

namespace laneguard::internal {

using ObserverList = std::vector<std::shared_ptr<Observer>>;

class CallEvents {
 public:
  // `admission` (for the lanes' names and limits) must outlive this. `unix_offset` turns the
  // manager's monotonic time into wall time: one clock read per event.
  CallEvents(const Admission& admission, int64_t unix_offset)
      : admission_(admission), unix_offset_(unix_offset) {}
  CallEvents(const CallEvents&) = delete;
  CallEvents& operator=(const CallEvents&) = delete;

  bool HasObservers() const { return observers_.load(std::memory_order_acquire) != nullptr; }
  // Tells every observer, one after another on the calling thread.
  void Notify(const CallEvent& e) const;

  // Replaces the list (at construction) or adds one observer; either way readers see the new
  // list from their next event on.
  void Set(ObserverList list) EXCLUDES(mu_);
  void Add(std::shared_ptr<Observer> observer) EXCLUDES(mu_);

  // The fields every event about one call carries. `mono_now` is on the manager's clock.
  CallEvent For(EventKind kind, int64_t mono_now, uint64_t call_id, std::string_view task_id,
                size_t lane, int global_active, int lane_active) const;

 private:
  void PublishLocked(ObserverList list) REQUIRES(mu_);

  const Admission& admission_;
  const int64_t unix_offset_;
  std::atomic<const ObserverList*> observers_{nullptr};
  Mutex mu_;
  std::vector<std::unique_ptr<ObserverList>> retired_ GUARDED_BY(mu_);  // the current one too
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_CORE_CALL_EVENTS_H_
