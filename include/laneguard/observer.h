// The core's only way of telling the outside world what happened. The telemetry layer (JSON logs,
// spans, Prometheus) implements Observer; the core knows nothing about exporters.
//
// Thread safety: OnEvent() is called from the thread that caused the event (the caller of
// TryAcquire/Release) or from the manager's background thread (timeouts, memory). Implementations
// must be thread-safe. On the timer thread the rules for timeout handlers apply (see manager.h): no
// Tick(), Shutdown() or destruction of the manager from an observer.
#ifndef LANEGUARD_OBSERVER_H_
#define LANEGUARD_OBSERVER_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "laneguard/memory.h"
#include "laneguard/metrics.h"

namespace laneguard {

// Free-form key/value metadata attached to a call (the spec's metadata object).
using Metadata = std::vector<std::pair<std::string, std::string>>;

enum class EventKind {
  kAcquired,           // a slot was granted
  kRejected,           // an acquisition was refused (reason, message)
  kReleased,           // a slot was released (record)
  kTimeoutWarning,     // the call passed its timeout: stop requested
  kTimeoutEscalation,  // the call passed timeout x escalation: its timeout handler hears next
  kHeapWarning,        // admitted while the heap is above heapWarningMb (memory)
};
std::string_view ToString(EventKind kind);  // "acquired", "rejected", ...

// One event. Pointers and views are valid only during OnEvent(); copy what you keep.
struct CallEvent {
  EventKind kind = EventKind::kAcquired;
  int64_t time_unix_nanos = 0;
  uint64_t call_id = 0;  // 0 for rejections
  std::string_view task_id;
  std::string_view lane;
  int global_active = 0;  // after the event
  int lane_active = 0;    // after the event
  int global_limit = 0;
  int lane_limit = 0;
  int64_t timeout_ms = 0;
  const Metadata* metadata = nullptr;              // kAcquired (may be empty)
  RejectReason reason = RejectReason::kLaneLimit;  // kRejected
  std::string_view message;                        // kRejected, timeouts: a readable sentence
  const WorkerCallMetrics* record = nullptr;       // kReleased
  const MemorySnapshot* memory = nullptr;          // kHeapWarning, kRejected for memory_limit
  int64_t wait_ns = 0;                             // kAcquired: time spent queued
  bool borrowed = false;                           // kAcquired: on a place borrowed (lending)
};

class Observer {
 public:
  virtual ~Observer() = default;
  // Should not throw; the manager catches and drops what escapes, so a broken observer cannot fail
  // or leak a call.
  virtual void OnEvent(const CallEvent& event) = 0;
};

}  // namespace laneguard

#endif  // LANEGUARD_OBSERVER_H_
