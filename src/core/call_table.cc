#include "core/call_table.h"

#include <algorithm>

#include "base/shard_count.h"

namespace laneguard::internal {
namespace {

constexpr size_t kMaxShards = 1u << 8;  // what the 8 high bits of a slot's index can name

std::atomic<size_t> shard_count_for_testing{0};

size_t ShardCount() {
  const size_t forced = shard_count_for_testing.load(std::memory_order_relaxed);
  return std::clamp<size_t>(forced != 0 ? forced : std::thread::hardware_concurrency(), 1,
                            kMaxShards);
}

}  // namespace

size_t SetShardCountForTesting(size_t shards) {
  return shard_count_for_testing.exchange(shards, std::memory_order_relaxed);
}

CallTable::CallTable(size_t lane_count)
    : shard_count_(ShardCount()), shards_(new Shard[shard_count_]) {
  static_assert(kMaxShards == size_t{1} << (32 - kEntryBits));
  for (size_t s = 0; s < shard_count_; ++s) {
    SpinLockGuard guard(shards_[s].lock);
    shards_[s].records.SetLaneCount(lane_count);
  }
}

size_t CallTable::ThreadNumber() {
  static std::atomic<size_t> next{0};
  thread_local const size_t number = next.fetch_add(1, std::memory_order_relaxed);
  return number;
}

}  // namespace laneguard::internal
