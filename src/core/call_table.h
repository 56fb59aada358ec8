// CallTable: the per-call half of the manager, one shard per CPU. A call is set up in the shard of
// the CPU its thread runs on, so on the hot path two threads share only the admission counts:
// call entries, timers, the metrics ring and the totals stay in one core's cache. A release on
// another CPU goes to the slot's shard, which is correct, just not as fast.
//
// A Slot names its call by an index packing the shard (high 8 bits) and the entry (low 24 bits),
// and the entry's generation.
//
// Thread safety: a Shard's parts are guarded by its lock (checked: GUARDED_BY). CallTable itself
// is fixed at construction; LockEntry is safe from any thread.
#ifndef LANEGUARD_SRC_CORE_CALL_TABLE_H_
#define LANEGUARD_SRC_CORE_CALL_TABLE_H_

#include <sched.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>

#include "base/spin_lock.h"
#include "core/call_slab.h"
#include "core/statistics.h"
#include "core/timer_service.h"
#include "laneguard/internal/thread_annotations.h"

namespace laneguard::internal {

struct alignas(64) Shard {
  SpinLock lock;
  CallSlab calls GUARDED_BY(lock);
  ShardTimers timers GUARDED_BY(lock);
  CallRecords records GUARDED_BY(lock);
};

class CallTable {
 public:
  // As many shards as ShardCount() says (see base/shard_count.h).
  explicit CallTable(size_t lane_count);
  CallTable(const CallTable&) = delete;
  CallTable& operator=(const CallTable&) = delete;

  size_t shard_count() const { return shard_count_; }
  Shard& shard(size_t index) const { return shards_[index]; }
  // The shard for the calling thread: the CPU it runs on (glibc reads it from rseq, about 3 ns),
  // so threads running at the same time use different shards whatever their number; a thread
  // number where the CPU is unknown.
  size_t LocalShard() const {
    const int cpu = sched_getcpu();
    if (cpu >= 0) return static_cast<size_t>(cpu) % shard_count_;
    return ThreadNumber() % shard_count_;
  }
  // Where call ids' blocks come from (CallSlab::NextCallId).
  std::atomic<uint64_t>& call_id_blocks() { return call_id_blocks_; }

  static uint32_t PackIndex(size_t shard, uint32_t entry) {
    return static_cast<uint32_t>(shard << kEntryBits) | entry;
  }
  static uint32_t EntryOf(uint32_t index) { return index & kEntryMask; }

  // Locks the shard of the call (`index`, `generation`) and returns its entry, or nullptr
  // (unlocked) if the call has ended. Waits for a timeout handler of the call running on another
  // thread. Inline: it is most of a release's way in, and a call cost a tenth of the release.
  // The analysis cannot follow a lock that is held on return only when the result is not null.
  [[gnu::always_inline]] CallEntry* LockEntry(uint32_t index, uint32_t generation,
                                              Shard** shard_out) NO_THREAD_SAFETY_ANALYSIS {
    const size_t shard_index = index >> kEntryBits;
    if (shard_index >= shard_count_) return nullptr;
    Shard& shard = shards_[shard_index];
    *shard_out = &shard;
    shard.lock.lock();
    for (;;) {
      CallEntry* c = shard.calls.Find(EntryOf(index), generation);
      if (c == nullptr) {
        shard.lock.unlock();
        return nullptr;
      }
      if (c->handlers_pending == 0 || c->handler_thread == std::this_thread::get_id()) return c;
      shard.lock.unlock();
      std::this_thread::yield();
      shard.lock.lock();
    }
  }

 private:
  static constexpr uint32_t kEntryBits = 24;
  static constexpr uint32_t kEntryMask = (1u << kEntryBits) - 1;

  static size_t ThreadNumber();

  const size_t shard_count_;
  const std::unique_ptr<Shard[]> shards_;
  std::atomic<uint64_t> call_id_blocks_{1};  // the start of the next free block of ids
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_CORE_CALL_TABLE_H_
