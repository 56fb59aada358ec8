// TimerQueue: the one timer structure behind every call's two-phase timeout.
//
// An indexed binary min-heap over a slab of timer nodes: Arm and Cancel are O(log n) and allocate
// nothing once the slab has grown to the peak number of armed timers; expired timers are popped in
// deadline order (ties in arming order). There is no thread here: the owner decides when to call
// PopExpired() (the manager's background thread does, every timerTickMs; tests call it with a fake
// clock), so the queue itself is deterministic.
//
// Thread safety: not thread-safe; the owner serializes access (the manager keeps one queue per
// shard, under the shard's lock).
#ifndef LANEGUARD_SRC_CORE_TIMER_QUEUE_H_
#define LANEGUARD_SRC_CORE_TIMER_QUEUE_H_

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace laneguard {

class TimerQueue {
 public:
  // Identifies an armed timer. Handles are generation-checked: cancelling a timer that already
  // fired or was cancelled is a harmless no-op, even if its node was reused.
  struct Handle {
    uint32_t node = kNone;
    uint32_t generation = 0;
    bool valid() const { return node != kNone; }
  };
  struct Expired {
    uint64_t tag;  // what the owner passed to Arm
    int64_t deadline;
  };
  static constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();

  Handle Arm(int64_t deadline, uint64_t tag);
  // Returns true if the timer was armed and is now cancelled.
  bool Cancel(Handle handle);
  // Removes every timer with deadline <= now and appends it to `out` in deadline order.
  void PopExpired(int64_t now, std::vector<Expired>* out);

  size_t size() const { return heap_.size(); }
  bool empty() const { return heap_.empty(); }
  // Earliest deadline, or INT64_MAX when empty.
  int64_t NextDeadline() const;

 private:
  struct Node {
    int64_t deadline;
    uint64_t seq;  // arming order, breaks deadline ties so firing order is deterministic
    uint64_t tag;
    uint32_t heap_index;
    uint32_t generation;
  };
  bool Less(uint32_t a, uint32_t b) const;
  void Place(uint32_t heap_pos, uint32_t node);
  void SiftUp(uint32_t pos);
  void SiftDown(uint32_t pos);
  void RemoveAt(uint32_t pos);

  std::vector<Node> nodes_;
  std::vector<uint32_t> free_;
  std::vector<uint32_t> heap_;  // node indices
  uint64_t next_seq_ = 0;
};

}  // namespace laneguard

#endif  // LANEGUARD_SRC_CORE_TIMER_QUEUE_H_
