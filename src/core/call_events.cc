#include "core/call_events.h"

#include <utility>

namespace laneguard::internal {

void CallEvents::Notify(const CallEvent& e) const {
  const ObserverList* list = observers_.load(std::memory_order_acquire);
  if (list == nullptr) return;
  for (const auto& o : *list) {
    try {
      o->OnEvent(e);
    } catch (...) {
      // Telemetry must never fail or leak a worker call.
    }
  }
}

void CallEvents::Set(ObserverList list) {
  MutexLock lock(mu_);
  PublishLocked(std::move(list));
}

void CallEvents::Add(std::shared_ptr<Observer> observer) {
  MutexLock lock(mu_);  // copy and publish as one step
  ObserverList list;
  if (const ObserverList* current = observers_.load(std::memory_order_acquire)) list = *current;
  list.push_back(std::move(observer));
  PublishLocked(std::move(list));
}

void CallEvents::PublishLocked(ObserverList list) {
  retired_.push_back(std::make_unique<ObserverList>(std::move(list)));
  observers_.store(retired_.back().get(), std::memory_order_release);
}

CallEvent CallEvents::For(EventKind kind, int64_t mono_now, uint64_t call_id,
                          std::string_view task_id, size_t lane, int global_active,
                          int lane_active) const {
  const LaneState& l = admission_.lane(lane);
  CallEvent e;
  e.kind = kind;
  e.time_unix_nanos = mono_now + unix_offset_;
  e.call_id = call_id;
  e.task_id = task_id;
  e.lane = l.name;
  e.global_active = global_active;
  e.lane_active = lane_active;
  e.global_limit = admission_.global_limit();
  e.lane_limit = l.Limit();
  return e;
}

}  // namespace laneguard::internal
