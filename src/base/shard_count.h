// How many admission shards a manager makes: one per CPU (std::thread::hardware_concurrency), so
// that threads running at the same time use different shards. The figure is read once, when a
// manager is made; a test sets it to run the one-shard path (a 1-CPU VM) and the many-shard path
// (a big host) on whatever machine it is on.
//
// Thread safety: SetShardCountForTesting must not race with making a manager.
#ifndef LANEGUARD_SRC_BASE_SHARD_COUNT_H_
#define LANEGUARD_SRC_BASE_SHARD_COUNT_H_

#include <cstddef>

namespace laneguard::internal {

// 0 (the default) restores the machine's CPU count. Returns the previous setting.
size_t SetShardCountForTesting(size_t shards);

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_BASE_SHARD_COUNT_H_
