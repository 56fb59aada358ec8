// CallSlab: one shard's call entries, reused through a free list so a warm manager allocates
// nothing per call, each with a generation that a Slot names to tell its own call from a later
// one in the same entry; and the shard's block of call ids.
//
// Thread safety: not thread-safe; a Shard (call_table.h) guards its slab with the shard's lock.
#ifndef LANEGUARD_SRC_CORE_CALL_SLAB_H_
#define LANEGUARD_SRC_CORE_CALL_SLAB_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "core/timer_queue.h"
#include "laneguard/manager.h"
#include "laneguard/observer.h"

namespace laneguard::internal {

inline constexpr int64_t kNanosPerMs = 1'000'000;

// Where a call is in its two-phase timeout. Ordered: a later phase compares greater.
enum class CallPhase : uint8_t { kRunning, kWarned, kEscalated };

// A call's task id: in place up to kInline bytes (a UUID is 36), on the heap past that. Admission
// copies one per call, and std::string::assign costs about 75 instructions where this is a
// length check and a memcpy; moving one into the metrics ring copies a fixed 39 bytes.
class TaskId {
 public:
  static constexpr size_t kInline = 39;

  void Assign(std::string_view id) {  // may throw only for a long id
    if (id.size() <= kInline) {
      std::memcpy(inline_, id.data(), id.size());
      size_ = static_cast<uint8_t>(id.size());
    } else {
      heap_.assign(id);
      size_ = kOnHeap;
    }
  }
  // Leaves this one empty; a long id's buffer is swapped, not copied.
  void MoveTo(TaskId& to) {
    std::memcpy(to.inline_, inline_, sizeof inline_);
    to.size_ = size_;
    if (size_ == kOnHeap) to.heap_.swap(heap_);
    size_ = 0;
  }
  std::string_view view() const {
    return size_ == kOnHeap ? std::string_view(heap_) : std::string_view(inline_, size_);
  }

 private:
  static constexpr uint8_t kOnHeap = 0xff;
  char inline_[kInline] = {};
  uint8_t size_ = 0;
  std::string heap_;
};

// How a call was admitted besides its counts: how long it waited in its lane's queue and whether
// its place is borrowed (lane lending). One word, because every call copies it into its entry and
// then its record, and one copy is half the instructions of two.
class QueueMark {
 public:
  QueueMark() = default;
  QueueMark(int64_t wait_ns, bool borrowed)
      : bits_(static_cast<uint64_t>(wait_ns > 0 ? wait_ns : 0) | (borrowed ? kBorrowed : 0)) {}
  int64_t wait_ns() const { return static_cast<int64_t>(bits_ & ~kBorrowed); }
  bool borrowed() const { return (bits_ & kBorrowed) != 0; }

 private:
  static constexpr uint64_t kBorrowed = uint64_t{1} << 63;
  uint64_t bits_ = 0;
};

// One active (or free) call: a plain record, guarded by its shard's lock.
struct CallEntry {
  uint32_t generation = 0;
  bool in_use = false;
  CallPhase phase = CallPhase::kRunning;
  // Handler runs collected by a tick and not yet finished. Release() waits for them to reach 0
  // (unless it runs on the timer thread itself), so a handler may use what the call owns.
  int handlers_pending = 0;
  uint32_t lane = 0;
  uint64_t call_id = 0;
  int64_t start_mono = 0;
  int64_t timeout_ms = 0;
  int64_t hard_deadline = 0;
  double rss_start = 0, heap_start = 0;
  int concurrent_at_start = 0;
  QueueMark queue;
  TimerQueue::Handle timer;
  TaskId task_id;
  Metadata metadata;
  std::stop_source stop{std::nostopstate};
  TimeoutHandler* handler = nullptr;
  std::thread::id handler_thread;

  int64_t deadline() const { return start_mono + timeout_ms * kNanosPerMs; }
};

class CallSlab {
 public:
  // How a timer names its call: the entry and the generation it was armed for.
  static uint64_t Tag(uint32_t entry, uint32_t generation) {
    return (static_cast<uint64_t>(entry) << 32) | generation;
  }
  static uint32_t TagEntry(uint64_t tag) { return static_cast<uint32_t>(tag >> 32); }
  static uint32_t TagGeneration(uint64_t tag) { return static_cast<uint32_t>(tag); }

  size_t size() const { return calls_.size(); }
  CallEntry& at(uint32_t entry) { return *calls_[entry]; }
  // The entry if it still holds the call of that generation, else nullptr.
  CallEntry* Find(uint32_t entry, uint32_t generation) {
    if (entry >= calls_.size()) return nullptr;
    CallEntry& c = *calls_[entry];
    return c.in_use && c.generation == generation ? &c : nullptr;
  }
  CallEntry* Find(uint64_t tag) { return Find(TagEntry(tag), TagGeneration(tag)); }

  // The entry the next Claim() takes, making one if none is free (may throw std::bad_alloc).
  uint32_t NextFree() {
    if (free_.empty()) [[unlikely]]
      Grow();
    return free_.back();
  }
  // Takes the entry NextFree() named; never throws.
  void Claim() { free_.pop_back(); }
  // Ends the entry's call: a later Slot naming the old generation finds nothing. Its leftovers
  // must have been taken out already.
  void Free(uint32_t entry) {
    CallEntry& c = *calls_[entry];
    c.in_use = false;
    c.handler = nullptr;
    c.handlers_pending = 0;  // a handler still queued in this tick sees the new generation: skips
    ++c.generation;
    free_.push_back(entry);
  }

  // Call ids come in blocks taken from `blocks` (shared by every shard): one atomic operation per
  // kCallIdBlock calls instead of per call (each costs a store-buffer drain on x86). Ids stay
  // unique within the manager; across shards they are not in admission order.
  uint64_t NextCallId(std::atomic<uint64_t>& blocks) {
    if (next_call_id_ == call_id_end_) {
      next_call_id_ = blocks.fetch_add(kCallIdBlock, std::memory_order_relaxed);
      call_id_end_ = next_call_id_ + kCallIdBlock;
    }
    return next_call_id_++;
  }

 private:
  // A new entry on the free list (out of line: NextFree stays small enough to inline).
  [[gnu::noinline]] void Grow() {
    calls_.push_back(std::make_unique<CallEntry>());
    free_.push_back(static_cast<uint32_t>(calls_.size() - 1));
  }
  static constexpr uint64_t kCallIdBlock = 64;

  std::vector<std::unique_ptr<CallEntry>> calls_;  // unique_ptr: entries stay put as it grows
  std::vector<uint32_t> free_;
  uint64_t next_call_id_ = 0, call_id_end_ = 0;
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_CORE_CALL_SLAB_H_
